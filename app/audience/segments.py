"""Segments: a small JSON filter language over subscribers, compiled to SQL.

Marketers describe an audience as a tree of conditions instead of typing SQL. The tree is
parsed into frozen dataclasses (every error names the path of the bad node) and compiled
to one boolean SQLAlchemy expression that behaves the same on SQLite and PostgreSQL.
Every condition compiles to a two-valued expression (never NULL), so `not` is an exact
complement: `ne` and `not` also select subscribers that lack the attribute.
"""

from __future__ import annotations

import enum
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeAlias

import sqlalchemy as sa

from app.audience.segment_sql import attribute_clause, field_clause
from app.models import SubscriberStatus

MAX_DEPTH = 10
MAX_NODES = 200
MAX_LIST_ITEMS = 1000
MAX_STRING = 1000
MAX_PATH_PARTS = 4

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# Only the unambiguous ISO-8601 shapes, so attribute dates stored that way sort as text.
_ISO = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:\d{2})?)?"
)


class SegmentError(ValueError):
    """A segment that cannot be parsed; the message starts with the path of the bad node."""


class Op(enum.StrEnum):
    """A condition's operator."""

    eq = "eq"
    ne = "ne"
    in_ = "in"
    contains = "contains"
    gt = "gt"
    gte = "gte"
    lt = "lt"
    lte = "lte"
    exists = "exists"


_EQUALITY = (Op.eq, Op.ne, Op.in_)
_ORDER = (Op.gt, Op.gte, Op.lt, Op.lte)
FIELD_OPS: dict[str, tuple[Op, ...]] = {
    "email": (*_EQUALITY, Op.contains),
    "name": (*_EQUALITY, Op.contains),
    "status": _EQUALITY,
    "created_at": _ORDER,
    "updated_at": _ORDER,
    "id": (*_EQUALITY, *_ORDER),
}

Scalar: TypeAlias = str | int | float | bool
Value: TypeAlias = Scalar | datetime | tuple[Scalar | datetime, ...]


@dataclass(frozen=True, slots=True)
class AllOf:
    """True when every child is; true when empty."""

    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    """True when some child is; false when empty."""

    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """The complement of its child."""

    child: Node


@dataclass(frozen=True, slots=True)
class FieldCondition:
    """Compares a subscriber column with a value."""

    field: str
    op: Op
    value: Value


@dataclass(frozen=True, slots=True)
class AttributeCondition:
    """Compares a key (path) of the subscriber's JSON attributes with a value."""

    path: tuple[str, ...]
    op: Op
    value: Value


Node: TypeAlias = AllOf | AnyOf | Not | FieldCondition | AttributeCondition


@dataclass(frozen=True, slots=True)
class Segment:
    """A validated segment."""

    root: Node

    def to_json(self) -> dict[str, Any]:
        """The canonical JSON form, as stored."""
        return _to_json(self.root)


def parse_segment(data: object) -> Segment:
    """Validate decoded JSON and return the segment it describes."""
    return Segment(_Parser().node(data, "segment", 1))


def validate_segment(data: object) -> dict[str, Any]:
    """Validate decoded JSON and return its canonical form, to store."""
    return parse_segment(data).to_json()


def compile_segment(segment: Segment) -> sa.ColumnElement[bool]:
    """The segment as a WHERE clause over `Subscriber`."""
    return _compile(segment.root)


def segment_filter(data: object) -> sa.ColumnElement[bool]:
    """Validate decoded JSON and return it as a WHERE clause over `Subscriber`."""
    return compile_segment(parse_segment(data))


class _Parser:
    def __init__(self) -> None:
        self.nodes = 0

    def node(self, data: object, path: str, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise SegmentError(f"{path}: nested deeper than {MAX_DEPTH} levels")
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise SegmentError(f"{path}: more than {MAX_NODES} nodes in the segment")
        if not isinstance(data, dict):
            raise SegmentError(f"{path}: expected an object, got {_kind(data)}")
        kinds = [key for key in ("all", "any", "not", "field", "attribute") if key in data]
        if len(kinds) != 1:
            got = f", got {', '.join(kinds)}" if kinds else ""
            raise SegmentError(
                f"{path}: expected exactly one of 'all', 'any', 'not', 'field', 'attribute'{got}"
            )
        kind = kinds[0]
        allowed = [kind] if kind in ("all", "any", "not") else [kind, "op", "value"]
        for key in data:
            if key not in allowed:
                raise SegmentError(
                    f"{path}: unknown key {_show(key)} (expected: {', '.join(allowed)})"
                )
        if kind == "not":
            return Not(self.node(data["not"], f"{path}.not", depth + 1))
        if kind in ("all", "any"):
            items = _sequence(data[kind], f"{path}.{kind}", MAX_NODES)
            children = tuple(
                self.node(item, f"{path}.{kind}[{i}]", depth + 1) for i, item in enumerate(items)
            )
            return AllOf(children) if kind == "all" else AnyOf(children)
        return self.condition(data, kind, path)

    def condition(self, data: dict[Any, Any], kind: str, path: str) -> Node:
        if "op" not in data:
            raise SegmentError(f"{path}.op: missing")
        if data["op"] not in Op.__members__.values():
            raise SegmentError(
                f"{path}.op: unknown operator {_show(data['op'])}"
                f" (expected one of: {', '.join(Op)})"
            )
        op = Op(data["op"])
        if "value" not in data:
            raise SegmentError(f"{path}.value: missing")
        if kind == "attribute":
            attribute = _attribute_path(data["attribute"], f"{path}.attribute")
            value = _each(op, data["value"], f"{path}.value", partial(_attribute_value, op))
            return AttributeCondition(attribute, op, value)
        field = data["field"]
        if not isinstance(field, str) or field not in FIELD_OPS:
            raise SegmentError(
                f"{path}.field: unknown field {_show(field)}"
                f" (expected one of: {', '.join(FIELD_OPS)})"
            )
        if op not in FIELD_OPS[field]:
            raise SegmentError(
                f"{path}.op: operator '{op}' does not apply to field '{field}'"
                f" (expected one of: {', '.join(FIELD_OPS[field])})"
            )
        return FieldCondition(
            field, op, _each(op, data["value"], f"{path}.value", partial(_field_value, field))
        )


def _each(op: Op, value: object, path: str, check: Callable[[object, str], Any]) -> Value:
    """The checked value, or with `in` the tuple of checked items."""
    if op is not Op.in_:
        result: Value = check(value, path)
        return result
    items = _sequence(value, path, MAX_LIST_ITEMS)
    return tuple(check(item, f"{path}[{i}]") for i, item in enumerate(items))


def _field_value(field: str, value: object, path: str) -> Scalar | datetime:
    if field == "id":
        if type(value) is not int or not 0 <= value < 2**31:
            raise SegmentError(f"{path}: expected an integer from 0 to {2**31 - 1}")
        return value
    if field in ("created_at", "updated_at"):
        return _datetime(value, path)
    text = _string(value, path)
    if field == "status" and text not in SubscriberStatus.__members__.values():
        expected = ", ".join(SubscriberStatus)
        raise SegmentError(f"{path}: unknown status {_show(text)} (expected one of: {expected})")
    # Addresses are stored lower-cased.
    return text.lower() if field == "email" else text


def _attribute_value(op: Op, value: object, path: str) -> Scalar:
    if op is Op.exists:
        if not isinstance(value, bool):
            raise SegmentError(f"{path}: expected true or false, got {_kind(value)}")
        return value
    if op is Op.contains:
        return _string(value, path)
    scalar = _scalar(value, path)
    if op in _ORDER and (
        isinstance(scalar, bool) or (isinstance(scalar, str) and not _iso(scalar))
    ):
        raise SegmentError(f"{path}: expected a number or an ISO-8601 date, got {_show(scalar)}")
    return scalar


def _attribute_path(value: object, path: str) -> tuple[str, ...]:
    parts = tuple(value.split(".")) if isinstance(value, str) else ()
    if not parts or len(parts) > MAX_PATH_PARTS or not all(map(_KEY.fullmatch, parts)):
        raise SegmentError(
            f"{path}: invalid attribute name {_show(value)} (expected up to {MAX_PATH_PARTS}"
            " dot-separated keys of letters, digits and '_', each 1-64 long, not starting"
            " with a digit)"
        )
    return parts


def _scalar(value: object, path: str) -> Scalar:
    if isinstance(value, str):
        return _string(value, path)
    if isinstance(value, float) and not math.isfinite(value):
        raise SegmentError(f"{path}: expected a finite number")
    if isinstance(value, int | float):
        # SQLite binds numbers as floats.
        if abs(value) > sys.float_info.max:
            raise SegmentError(f"{path}: number out of range")
        return value
    raise SegmentError(f"{path}: expected a string, number or boolean, got {_kind(value)}")


def _string(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise SegmentError(f"{path}: expected a string, got {_kind(value)}")
    if len(value) > MAX_STRING:
        raise SegmentError(f"{path}: longer than {MAX_STRING} characters")
    if "\x00" in value:
        raise SegmentError(f"{path}: contains a NUL character")
    return value


def _datetime(value: object, path: str) -> datetime:
    parsed = _iso(_string(value, path))
    if parsed is None:
        raise SegmentError(f"{path}: expected an ISO-8601 date or datetime, got {_show(value)}")
    # A date is midnight UTC, and so is a datetime without an offset.
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def _iso(text: str) -> datetime | None:
    if not _ISO.fullmatch(text):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _sequence(value: object, path: str, limit: int) -> list[Any] | tuple[Any, ...]:
    if not isinstance(value, list | tuple):
        raise SegmentError(f"{path}: expected a list, got {_kind(value)}")
    if len(value) > limit:
        raise SegmentError(f"{path}: more than {limit} items")
    return value


def _kind(value: object) -> str:
    names = {type(None): "null", bool: "boolean", int: "number", float: "number"}
    names |= {str: "string", list: "list", tuple: "list", dict: "object"}
    return names.get(type(value), type(value).__name__)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _to_json(node: Node) -> dict[str, Any]:
    def plain(value: Value) -> Any:
        if isinstance(value, tuple):
            return [plain(item) for item in value]
        return value.isoformat() if isinstance(value, datetime) else value

    match node:
        case AllOf(children):
            return {"all": [_to_json(child) for child in children]}
        case AnyOf(children):
            return {"any": [_to_json(child) for child in children]}
        case Not(child):
            return {"not": _to_json(child)}
        case FieldCondition(field, op, value):
            return {"field": field, "op": op.value, "value": plain(value)}
        case AttributeCondition(path, op, value):
            return {"attribute": ".".join(path), "op": op.value, "value": plain(value)}


def _compile(node: Node) -> sa.ColumnElement[bool]:
    match node:
        case AllOf(children):
            return sa.and_(sa.true(), *map(_compile, children))
        case AnyOf(children):
            return sa.or_(sa.false(), *map(_compile, children))
        case Not(child):
            return sa.not_(_compile(child))
        case FieldCondition(field, op, value):
            return field_clause(field, op, value)
        case AttributeCondition(path, op, value):
            return attribute_clause(path, op, value)
