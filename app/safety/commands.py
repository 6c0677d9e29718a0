"""CLI output of the content-safety package (called from app/cli.py)."""

from __future__ import annotations

import typer

from app.core.settings import Settings
from app.safety.domains import recommended_records


def print_sender_records(settings: Settings, domain: str) -> None:
    """The return-path SPF and MX and the DMARC record a new sending domain needs too."""
    typer.echo(
        f"; and for mail from {domain} to pass SPF, DMARC and reach Warta's bounce handling "
        "(check with GET /api/v1/domains/{domain}/check):".replace("{domain}", domain)
    )
    for record in recommended_records(settings, domain):
        typer.echo(record)
