"""The hashed form of an erased address: all that remains of it, so it is never mailed again.

A subscriber who asks to be deleted leaves one suppression whose address is
`sha256:<hex of the normalised address>`. Checks hash the candidate address the same way,
in Python (`hashed_address`) or in SQL (`address_hash`, compiled for SQLite and PostgreSQL).
"""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

HASH_PREFIX = "sha256:"
ERASURE_SOURCE = "erasure"
"""The `source` of the suppression an erasure leaves."""
SQLITE_FUNCTION = "warta_sha256"


def hashed_address(address: str) -> str:
    """`sha256:<hex>` of a normalised address."""
    return HASH_PREFIX + hashlib.sha256(address.encode()).hexdigest()


def sqlite_sha256(value: str | None) -> str | None:
    """The SQLite function behind `address_hash` (registered on every connection)."""
    return None if value is None else hashlib.sha256(value.encode()).hexdigest()


class address_hash(FunctionElement[str]):
    """SQL: the hex SHA-256 of a text expression."""

    type = sa.String()
    inherit_cache = True
    name = "address_hash"


@compiles(address_hash, "postgresql")
def _postgresql(element: address_hash, compiler: SQLCompiler, **kw: Any) -> str:
    (argument,) = element.clauses
    return f"encode(sha256(convert_to({compiler.process(argument, **kw)}, 'UTF8')), 'hex')"


@compiles(address_hash)
def _default(element: address_hash, compiler: SQLCompiler, **kw: Any) -> str:
    (argument,) = element.clauses
    return f"{SQLITE_FUNCTION}({compiler.process(argument, **kw)})"


def hashed_address_sql(address: sa.ColumnElement[str] | Any) -> sa.ColumnElement[str]:
    """SQL for `hashed_address(address)`."""
    return sa.literal(HASH_PREFIX) + address_hash(address)
