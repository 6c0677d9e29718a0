"""What can go wrong with a backup, each with a one-line reason for the operator."""

from __future__ import annotations

from app.core.errors import DomainError


class BackupError(DomainError):
    """A backup could not be made, read, verified or restored; the message says why."""

    title = "Backup failed"


class WrongKey(BackupError):
    """The passphrase or key file given does not open this backup."""


class NotEmpty(BackupError):
    """The instance to restore into holds data already (override with --force)."""

    status = 409
