"""SQL for segment conditions, with the same results on SQLite and PostgreSQL.

SQLAlchemy's JSON accessors cast blindly: on PostgreSQL `CAST(attributes ->> 'age' AS
FLOAT)` fails the whole query when one subscriber's age is "unknown". The constructs here
test an attribute's JSON kind first (under CASE) and only then read it as that kind.
Conditions arrive validated by `app.audience.segments`; key paths are rendered as literals.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from decimal import Decimal
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
    """Whether the attribute holds a `kind` value ("present": anything but null); never NULL."""

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


def _pg_path(element: _AttributePath) -> str:
    # Quoted, or a key named "null" would be a NULL array element.
    return "{" + ",".join(f'"{key}"' for key in element.path) + "}"


@compiles(json_is, "sqlite")
def _json_is_sqlite(element: json_is, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    path = _literal(compiler, "$" + "".join(f'."{key}"' for key in element.path))
    names = ", ".join(_literal(compiler, name) for name in _TYPE_NAMES["sqlite"][element.kind])
    return f"coalesce(json_type({column}, {path}) IN ({names}), 0)"


@compiles(json_is, "postgresql")
def _json_is_postgresql(element: json_is, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    path = _literal(compiler, _pg_path(element))
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
    text = f"({column} #>> {_literal(compiler, _pg_path(element))})"
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


_OPERATORS: dict[str, Callable[[Any, Any], sa.ColumnElement[bool]]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
    "in": lambda left, values: left.in_(values),
}


def field_clause(field: str, op: str, value: Any) -> sa.ColumnElement[bool]:
    """`Subscriber.<field> <op> value`, for a validated condition."""
    column: sa.ColumnElement[Any] = getattr(Subscriber, field)
    if op == "contains":
        if field == "email":
            return column.contains(value, autoescape=True)
        # Byte-wise, so PostgreSQL folds case like SQLite does: ASCII letters only.
        return bytewise(column).icontains(value, autoescape=True)
    return _OPERATORS[op](column, value)


def attribute_clause(path: tuple[str, ...], op: str, value: Any) -> sa.ColumnElement[bool]:
    """The attribute at `path` <op> value, for a validated condition; never NULL."""
    if op == "exists":
        present = json_is(path, "present")
        return present if value else sa.not_(present)
    if op == "contains":
        text = bytewise(json_value(path, "string"))
        return _when(path, "string", text.icontains(value, autoescape=True))
    if op in ("gt", "gte", "lt", "lte"):
        if isinstance(value, str):
            text = bytewise(json_value(path, "string"))
            return _when(path, "string", _OPERATORS[op](text, value))
        return _when(path, "number", _OPERATORS[op](json_value(path, "number"), _number(value)))
    # One test per JSON kind among the values: 30 never equals "30" nor true equals 1.
    by_kind: dict[str, list[Any]] = {}
    for item in value if isinstance(value, tuple) else (value,):
        if isinstance(item, bool):
            by_kind.setdefault("boolean", []).append(item)
        elif isinstance(item, str):
            by_kind.setdefault("string", []).append(item)
        else:
            by_kind.setdefault("number", []).append(_number(item))
    matches = [
        _when(path, kind, json_value(path, kind).in_(items)) for kind, items in by_kind.items()
    ]
    matched = sa.or_(sa.false(), *matches)
    return sa.not_(matched) if op == "ne" else matched


def _when(path: tuple[str, ...], kind: str, test: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    # CASE fixes the order of evaluation: PostgreSQL would otherwise be free to cast a
    # string to a number before looking at its type, and fail the whole query.
    return sa.case((json_is(path, kind), test), else_=sa.false())


def _number(value: Any) -> Decimal:
    # Exact decimal: 0.1 stored as JSON must equal 0.1 given here, and binding a float
    # sends its full binary expansion to PostgreSQL.
    return Decimal(repr(value))
