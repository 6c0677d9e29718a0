"""Two independent DKIM verifiers, Mail::DKIM (Perl) and dkimpy, with DNS answered from
the TXT records `generate_key` printed."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest

from app.core.settings import Settings

VERIFY_PL = Path(__file__).parent / "verify_dkim.pl"


@dataclass(frozen=True)
class Verdict:
    domain: str
    selector: str
    algorithm: str
    result: str
    detail: str


def mail_dkim(message: bytes, records: tuple[str, ...]) -> list[Verdict]:
    """Every signature's verdict from Mail::DKIM, DNS answered from `records`."""
    if subprocess.run(["perl", "-MMail::DKIM::Verifier", "-e", "1"], check=False).returncode:
        pytest.fail("Mail::DKIM is missing: run scripts/ensure-system-deps.sh")
    done = subprocess.run(
        ["perl", str(VERIFY_PL)],
        input=message,
        capture_output=True,
        env={**os.environ, "DKIM_TXT_RECORDS": "\n".join(records)},
        timeout=60,
        check=True,
    )
    lines = done.stdout.decode().splitlines()
    return [Verdict(*[*line.split("\t"), ""][:5]) for line in lines]


def dkimpy(message: bytes, records: tuple[str, ...]) -> list[bool]:
    """Every signature's verdict from dkimpy, DNS answered from `records`."""
    txt = {
        rec.split()[0].lower(): "".join(re.findall(r'"([^"]*)"', rec)).encode() for rec in records
    }

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        key = (name.decode() if isinstance(name, bytes) else name).rstrip(".").lower()
        return txt.get(key)

    count = len(re.findall(rb"(?im)^dkim-signature:", message.split(b"\r\n\r\n")[0]))
    verdicts = []
    for idx in range(count):
        try:
            verdicts.append(bool(dkim.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc)))
        except dkim.DKIMException:
            verdicts.append(False)
    return verdicts


def both_pass(message: bytes, records: tuple[str, ...], signatures: int = 1) -> None:
    verdicts = mail_dkim(message, records)
    assert [v.result for v in verdicts] == ["pass"] * signatures, verdicts
    assert dkimpy(message, records) == [True] * signatures


def both_fail(message: bytes, records: tuple[str, ...]) -> None:
    verdicts = mail_dkim(message, records)
    assert verdicts, "Mail::DKIM found no signature"
    assert all(v.result == "fail" for v in verdicts), verdicts
    assert not any(dkimpy(message, records))


def straight_to_sink(settings: Settings, sink: str) -> Settings:
    """Workers that sign with keys under var/dkim and submit straight to `sink` (no MTA):
    what arrives is what the worker submitted."""
    return settings.model_copy(
        update={
            "mta_submission": sink,
            "sender_connections": 4,
            "dkim_dir": settings.var_dir / "dkim",
        }
    )
