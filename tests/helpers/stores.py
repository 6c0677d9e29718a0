"""A handler for Warta's own SMTP server protocol that keeps what it is sent."""

from __future__ import annotations

from dataclasses import dataclass, field

from workers.mta.smtp_server import Session, Transaction


@dataclass
class Store:
    """Keeps transactions, refuses some recipients, counts sessions and notes TLS."""

    transactions: list[Transaction] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    sessions: int = 0
    tls: list[bool] = field(default_factory=list)

    async def handle_CONNECT(self, session: Session) -> None:
        self.sessions += 1

    async def handle_RCPT(
        self, session: Session, transaction: Transaction, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 No such user"
        transaction.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, session: Session, transaction: Transaction) -> str:
        self.transactions.append(transaction)
        self.tls.append(session.tls)
        return f"250 2.0.0 OK: queued as q{len(self.transactions)}"
