"""Email address checks and normalisation, shared by the API, imports and suppressions."""

from __future__ import annotations

import re

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email

MAX_ADDRESS_LENGTH = 320

# The common shape (dot-atom local part, LDH labels, alphabetic TLD) is accepted without the
# full validator, which costs ~45 µs an address and would dominate a bulk import. Everything
# this pattern accepts, email-validator accepts too (tests compare the two).
_COMMON_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
_CONTROL = re.compile(r"[\r\n\x00]")
_SPECIAL_SUFFIXES = tuple("." + name for name in SPECIAL_USE_DOMAIN_NAMES)


class InvalidAddress(ValueError):
    """The address is not a deliverable-looking mailbox; the message says why."""


def normalize_address(raw: str) -> str:
    """Validate syntax (no DNS) and return the address in the form Warta stores: lower case.

    Lower-casing the local part too is what every large mailbox provider does in practice,
    and it is what makes `Alice@x` and `alice@x` one subscriber.
    """
    candidate = raw.strip()
    if not candidate:
        raise InvalidAddress("the address is empty")
    if len(candidate) > MAX_ADDRESS_LENGTH:
        raise InvalidAddress(f"the address is longer than {MAX_ADDRESS_LENGTH} characters")
    if _CONTROL.search(candidate):
        raise InvalidAddress("the address contains a line break or NUL")
    if (
        _COMMON_ADDRESS.fullmatch(candidate)
        and len(candidate) <= 254
        and candidate.index("@") <= 64
        and not candidate.lower().endswith(_SPECIAL_SUFFIXES)
    ):
        return candidate.lower()
    try:
        checked = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidAddress(str(exc)) from None
    return checked.normalized.lower()
