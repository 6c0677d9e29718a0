"""`warta create-user`: console users are made on the command line, never by a web form."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer

from app.admin import users
from app.core.database import create_engine, create_sessionmaker, unit_of_work
from app.core.settings import get_settings
from app.models import AdminRole


def create_user(
    email: Annotated[str, typer.Argument(help="The address the user signs in with.")],
    role: Annotated[AdminRole, typer.Option(help="owner, admin, marketer or viewer.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Create a console user (prompts for the password unless --password-stdin)."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    settings = get_settings()

    async def run() -> int:
        engine = create_engine(settings)
        try:
            async with unit_of_work(create_sessionmaker(engine)) as session:
                user = await users.create_user(session, email, role, password)
                return user.id
        finally:
            await engine.dispose()

    user_id = asyncio.run(run())
    typer.echo(f"created {role.value} {email.strip().lower()} (user #{user_id})")
