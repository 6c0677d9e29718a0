"""Bounce classes from the enhanced status code and the reply text, by rules kept as data.

The rules live in `bounce_rules.toml` next to this module; an operator's file (setting
`WARTA_BOUNCE_RULES`) is read first, so its rules win and its `[classes]` may re-kind a class.
The first rule whose conditions all hold decides; nothing matching means transient (or
permanent, when the report says the failure is final).
"""

from __future__ import annotations

import enum
import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

DEFAULT_RULES = Path(__file__).with_name("bounce_rules.toml")
MAX_TEXT = 2000
"""Reply text beyond this is not looked at: rules are meant for the first lines."""

_REPLY = re.compile(r"^\s*([245]\d\d)(?:[ -]|$)\s*(?:([245]\.\d{1,3}\.\d{1,3})\b)?")
_STATUS = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")


class BounceClass(enum.StrEnum):
    """Why a message did not arrive."""

    invalid_recipient = "invalid_recipient"
    mailbox_full = "mailbox_full"
    message_too_large = "message_too_large"
    content_rejected = "content_rejected"
    reputation_block = "reputation_block"
    policy_auth = "policy_auth"
    rate_limited = "rate_limited"
    dns_failure = "dns_failure"
    transient_other = "transient_other"
    permanent_other = "permanent_other"


class Severity(enum.StrEnum):
    """What a class does to the address: suppress it, score it, or nothing."""

    hard = "hard"
    soft = "soft"
    informational = "informational"


class BounceRulesError(ValueError):
    """A rules file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class Rule:
    """Conditions over (enhanced status, reply code, text); all given ones must match."""

    bounce_class: BounceClass
    status: re.Pattern[str] | None = None
    code: re.Pattern[str] | None = None
    text: re.Pattern[str] | None = None

    def matches(self, status: str, code: str, text: str) -> bool:
        """Whether every condition of the rule holds."""
        return (
            (self.status is None or bool(self.status.search(status)))
            and (self.code is None or bool(self.code.search(code)))
            and (self.text is None or bool(self.text.search(text)))
        )


@dataclass(frozen=True)
class Classification:
    """A bounce's class and what it means for the address."""

    bounce_class: BounceClass
    severity: Severity
    status: str
    """The enhanced status code found (or given), "" if none."""


@dataclass(frozen=True)
class Reply:
    """An SMTP reply split into its code, enhanced status and text."""

    code: str
    status: str
    text: str


def split_reply(reply: str) -> Reply:
    """`550 5.1.1 no such user` → ("550", "5.1.1", whole text); missing parts are ""."""
    text = reply.strip()[:MAX_TEXT]
    match = _REPLY.match(text)
    if match:
        return Reply(match.group(1), match.group(2) or _first_status(text), text)
    return Reply("", _first_status(text), text)


def _first_status(text: str) -> str:
    match = _STATUS.search(text)
    return match.group(1) if match else ""


class Classifier:
    """Rules in order, plus the severity of each class."""

    def __init__(self, rules: list[Rule], severities: dict[BounceClass, Severity]) -> None:
        self.rules = rules
        self.severities = severities

    @classmethod
    def load(cls, extra: Path | None = None) -> Classifier:
        """The default rules, preceded by an operator's file if given."""
        rules: list[Rule] = []
        severities: dict[BounceClass, Severity] = {}
        for path in ([extra] if extra else []) + [DEFAULT_RULES]:
            file_rules, file_severities = _read(path)
            rules += file_rules
            for name, severity in file_severities.items():
                severities.setdefault(name, severity)
        missing = set(BounceClass) - set(severities)
        if missing:
            raise BounceRulesError(f"{DEFAULT_RULES}: no severity for {sorted(missing)}")
        return cls(rules, severities)

    def classify(
        self, reply: str, status: str = "", permanent: bool | None = None
    ) -> Classification:
        """Classify a reply (or a DSN's diagnostic); `status` overrides the one in the text."""
        parts = split_reply(reply)
        status = status.strip() or parts.status
        code = parts.code or (status[:1] + "00" if status else "")
        for rule in self.rules:
            if rule.matches(status, code, parts.text):
                return self._of(rule.bounce_class, status)
        if permanent is None:
            permanent = code.startswith("5")
        fallback = BounceClass.permanent_other if permanent else BounceClass.transient_other
        return self._of(fallback, status)

    def _of(self, bounce_class: BounceClass, status: str) -> Classification:
        return Classification(bounce_class, self.severities[bounce_class], status)


def _read(path: Path) -> tuple[list[Rule], dict[BounceClass, Severity]]:
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, UnicodeError, tomllib.TOMLDecodeError) as exc:
        raise BounceRulesError(f"{path}: {exc}") from None
    severities: dict[BounceClass, Severity] = {}
    for name, severity in dict(document.get("classes", {})).items():
        try:
            severities[BounceClass(name)] = Severity(severity)
        except ValueError:
            raise BounceRulesError(
                f"{path}: [classes] {name} = {severity!r}: class must be one of "
                f"{[c.value for c in BounceClass]}, severity hard, soft or informational"
            ) from None
    rules = [_rule(path, index, entry) for index, entry in enumerate(document.get("rules", []))]
    return rules, severities


def _rule(path: Path, index: int, entry: Any) -> Rule:
    where = f"{path}: rules[{index}]"
    if not isinstance(entry, dict):
        raise BounceRulesError(f"{where}: must be a table")
    unknown = set(entry) - {"class", "status", "code", "text"}
    if unknown:
        raise BounceRulesError(f"{where}: unknown keys {sorted(unknown)}")
    try:
        bounce_class = BounceClass(str(entry.get("class")))
    except ValueError:
        raise BounceRulesError(
            f"{where}: class {entry.get('class')!r} is not a known class"
        ) from None
    patterns: dict[str, re.Pattern[str]] = {}
    for key in ("status", "code", "text"):
        if key in entry:
            try:
                patterns[key] = re.compile(str(entry[key]), re.IGNORECASE)
            except re.error as exc:
                raise BounceRulesError(f"{where}: {key}: {exc}") from None
    if not patterns:
        raise BounceRulesError(f"{where}: needs at least one of status, code, text")
    return Rule(bounce_class, **patterns)


@lru_cache(maxsize=4)
def classifier(extra: Path | None = None) -> Classifier:
    """The classifier for a rules file, loaded once per process."""
    return Classifier.load(extra)
