"""`warta demo` tells the truth: every message delivered into the capture Maildir, or why not."""

from __future__ import annotations

import subprocess
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from app.core.redis import socket_path_for
from tests.helpers.consoles import WARTA, processes_mentioning
from tests.helpers.recorders import StartServer

ARQ_JOB_LINE = ("arq", "cron:", "→", "←")


def _demo(env: dict[str, str], cwd: Path, recipients: int) -> tuple[int, str]:
    run = subprocess.run(
        [WARTA, "demo", "--recipients", str(recipients)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return run.returncode, run.stdout + run.stderr


def test_the_demo_delivers_every_message_and_says_where(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    code, output = _demo(cli_env, tmp_path, 50)

    assert code == 0, output
    maildir = (tmp_path / "var" / "maildir").resolve()
    assert f"done: 50 of 50 messages delivered into the capture Maildir {maildir}" in output
    assert "error" not in output.lower(), output
    assert not [line for line in output.splitlines() if any(s in line for s in ARQ_JOB_LINE)]
    assert len(list((maildir / "new").iterdir())) == 50
    assert not processes_mentioning(str(socket_path_for(tmp_path / "var"))), "Redis stopped"


class RejectEveryone:
    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        return "550 5.1.1 no such user here"


def test_the_demo_fails_when_the_mta_accepts_nothing(
    cli_env: dict[str, str], tmp_path: Path, smtp_server: StartServer
) -> None:
    # Something else listens on the submission port: the demo uses it instead of its own MTA.
    env = {**cli_env, "WARTA_MTA_SUBMISSION": smtp_server(RejectEveryone())}
    code, output = _demo(env, tmp_path, 5)

    assert code == 1, output
    assert "0 of 5 messages delivered into the capture Maildir" in output
    error = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(error) == 1, output
    assert error[0].startswith("error: 0 of 5 messages accepted ("), output
    assert "done" not in output


def test_the_demo_refuses_to_mail_example_com_for_real(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    code, output = _demo({**cli_env, "WARTA_MTA_DELIVERY": "mx"}, tmp_path, 5)

    assert code == 1
    assert output.strip().splitlines() == [
        "error: warta demo mails generated @example.com addresses into the capture Maildir; "
        "set WARTA_MTA_DELIVERY=capture (it is mx)"
    ]
