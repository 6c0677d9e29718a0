"""The MTA's reply listener on the domain side: the reply processor with its own engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from app.core.database import create_engine, create_sessionmaker
from app.core.resolver import make_resolver
from app.core.settings import Settings
from app.inbound.authentication import Authenticator
from app.inbound.processor import Forwarding, ReplyProcessor
from app.inbound.scanning import DaemonScanner
from app.inbound.service import Policy


class ReplyReporter:
    """Stores replies the MTA wrote to `directory`; hands automatic mail to `reports`."""

    def __init__(
        self,
        settings: Settings,
        directory: Path,
        reports: Path,
        on_handover: Callable[[], None] | None = None,
    ) -> None:
        self._engine = create_engine(settings)
        resolver = make_resolver(settings.inbound_resolvers(), settings.inbound_dns_timeout)
        self.processor = ReplyProcessor(
            directory,
            create_sessionmaker(self._engine),
            Policy.from_settings(settings),
            Authenticator(resolver),
            DaemonScanner.from_settings(settings),
            reports=reports,
            on_handover=on_handover,
            forwarding=Forwarding(
                settings.mta_submission,
                settings.reply_domain(),
                attempts=settings.inbound_forward_attempts,
                retry=settings.inbound_forward_retry,
            ),
            poll_interval=settings.inbound_poll_interval,
            max_bytes=settings.mta_max_message_size + 4096,
        )
        self.processor.start()

    def reply_stored(self) -> None:
        """Look at the replies Maildir now rather than at the next poll."""
        self.processor.wake()

    async def stop(self) -> None:
        """Stop processing, end the scanner's sessions and close the database."""
        await self.processor.stop()
        await self.processor.scanner.aclose()
        await self._engine.dispose()
