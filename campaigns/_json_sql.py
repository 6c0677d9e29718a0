"""Typed looks into `subscribers.attributes` that behave alike on SQLite and PostgreSQL.

SQLAlchemy's JSON accessors cast blindly: on PostgreSQL `CAST(attributes ->> 'age' AS
FLOAT)` fails the whole query when one subscriber's age is "unknown". These constructs
name a JSON kind instead, so callers can test the kind first (under CASE) and only then
read the value. The key path is validated by the caller and rendered as a SQL literal.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.visitors import InternalTraversal

from app.models import Subscriber

# What json_type() (SQLite) and jsonb_typeof() (PostgreSQL) call each kind.
_TYPE_NAMES = {
    "sqlite": {
        "string": ("text",),
        "number": ("integer", "real"),
        "boolean": ("true", "false"),
        "present": ("text", "integer", "real", "true", "false", "object", "array"),
    },
    "postgresql": {
        "string": ("string",),
        "number": ("number",),
        "boolean": ("boolean",),
        "present": ("string", "number", "boolean", "object", "array"),
    },
}
_VALUE_TYPES: dict[str, sa.types.TypeEngine[Any]] = {
    "string": sa.String(),
    "number": sa.Numeric(asdecimal=False),
    "boolean": sa.Boolean(),
}
_PG_CASTS = {"string": "", "number": "NUMERIC", "boolean": "BOOLEAN"}


class _AttributePath(FunctionElement[Any]):
    """A kind-specific look at the attribute at `path`."""

    inherit_cache = True
    _traverse_internals = [
        *FunctionElement._traverse_internals,
        ("path", InternalTraversal.dp_string_list),
        ("kind", InternalTraversal.dp_string),
    ]

    def __init__(self, path: tuple[str, ...], kind: str) -> None:
        super().__init__(Subscriber.attributes)
        self.path = list(path)
        self.kind = kind


class json_is(_AttributePath):
    """True when the attribute holds a JSON string/number/boolean, or anything non-null
    ("present"); never NULL, so NOT of it is the exact complement."""

    type = sa.Boolean()
    inherit_cache = True


class json_value(_AttributePath):
    """The attribute as SQL text/number/boolean; test its kind with json_is first."""

    inherit_cache = True

    def __init__(self, path: tuple[str, ...], kind: str) -> None:
        super().__init__(path, kind)
        self.type = _VALUE_TYPES[kind]


class bytewise(FunctionElement[str]):
    """Text that compares byte by byte, as SQLite's default collation does."""

    type = sa.String()
    inherit_cache = True


def _literal(compiler: SQLCompiler, value: str) -> str:
    return compiler.render_literal_value(value, sa.String())


@compiles(json_is, "sqlite")
def _json_is_sqlite(element: json_is, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    path = _literal(compiler, "$" + "".join(f'."{key}"' for key in element.path))
    names = ", ".join(_literal(compiler, name) for name in _TYPE_NAMES["sqlite"][element.kind])
    return f"coalesce(json_type({column}, {path}) IN ({names}), 0)"


@compiles(json_is, "postgresql")
def _json_is_postgresql(element: json_is, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    path = _literal(compiler, "{" + ",".join(element.path) + "}")
    names = ", ".join(_literal(compiler, n) for n in _TYPE_NAMES["postgresql"][element.kind])
    return f"coalesce(jsonb_typeof({column} #> {path}) IN ({names}), false)"


@compiles(json_value, "sqlite")
def _json_value_sqlite(element: json_value, compiler: SQLCompiler, **kw: Any) -> str:
    # json_extract already returns TEXT, INTEGER/REAL, or 1/0 for JSON true/false.
    column = compiler.process(element.clauses, **kw)
    path = _literal(compiler, "$" + "".join(f'."{key}"' for key in element.path))
    return f"json_extract({column}, {path})"


@compiles(json_value, "postgresql")
def _json_value_postgresql(element: json_value, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    text = f"({column} #>> {_literal(compiler, '{' + ','.join(element.path) + '}')})"
    # NUMERIC, not FLOAT: a huge JSON number must compare, not overflow.
    cast = _PG_CASTS[element.kind]
    return f"CAST({text} AS {cast})" if cast else text


@compiles(bytewise, "sqlite")
def _bytewise_sqlite(element: bytewise, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.clauses, **kw)


@compiles(bytewise, "postgresql")
def _bytewise_postgresql(element: bytewise, compiler: SQLCompiler, **kw: Any) -> str:
    return f'({compiler.process(element.clauses, **kw)} COLLATE "C")'


@compiles(json_is)
@compiles(json_value)
@compiles(bytewise)
def _unsupported(element: FunctionElement[Any], compiler: SQLCompiler, **kw: Any) -> str:
    raise CompileError(f"segments compile for SQLite and PostgreSQL, not {compiler.dialect.name}")
