"""Segments: which subscribers each segment selects, on a real database, and every error."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.audience.segments import (
    AttributeCondition,
    Op,
    SegmentError,
    compile_segment,
    parse_segment,
    segment_filter,
    validate_segment,
)
from app.models import Subscriber, SubscriberStatus

HUGE = 10**400  # beyond any float: PostgreSQL must not cast it to one

SUBSCRIBERS: list[dict[str, Any]] = [
    {
        "id": 1,
        "email": "ann@example.com",
        "name": "Ann Berg",
        "created_at": datetime(2024, 1, 10, tzinfo=UTC),
        "attributes": {
            "city": "Oslo",
            "age": 30,
            "vip": True,
            "score": 4.5,
            "signup": "2024-03-05",
            "plan": {"tier": "gold"},
        },
    },
    {
        "id": 2,
        "email": "bob@example.com",
        "name": "Bob",
        "status": SubscriberStatus.blocklisted,
        "created_at": datetime(2024, 2, 10, tzinfo=UTC),
        "attributes": {
            "city": "Bergen",
            "age": "thirty",
            "vip": False,
            "score": 10,
            "signup": "2023-12-31",
        },
    },
    {
        "id": 3,
        "email": "cy@example.org",
        "name": "Cy 100%_off",
        "created_at": datetime(2024, 3, 10, tzinfo=UTC),
        "attributes": {
            "city": "oslo",
            "age": 45.0,
            "vip": "yes",
            "score": None,
            "plan": {"tier": "silver"},
        },
    },
    {
        "id": 4,
        "email": "dee@example.org",
        "name": "Dée",
        "created_at": datetime(2024, 4, 10, tzinfo=UTC),
        "attributes": {},
    },
    {
        "id": 5,
        "email": "eve@sub.example.com",
        "name": "Eve",
        "created_at": datetime(2024, 5, 10, tzinfo=UTC),
        "attributes": {"city": None, "age": 30.5, "vip": 1, "tags": ["a"], "plan": "gold"},
    },
    {
        "id": 6,
        "email": "fay@example.com",
        "name": "Fay",
        "created_at": datetime(2024, 6, 10, tzinfo=UTC),
        "attributes": {"city": "Tromsø", "age": -2, "score": 0.1, "huge": HUGE, "null": "x"},
    },
]
EVERYONE = [1, 2, 3, 4, 5, 6]


@pytest.fixture
async def seeded(session: AsyncSession) -> AsyncSession:
    for row in SUBSCRIBERS:
        session.add(Subscriber(updated_at=row["created_at"], **row))
    await session.commit()
    return session


async def select_ids(session: AsyncSession, segment: object) -> list[int]:
    query = sa.select(Subscriber.id).where(segment_filter(segment)).order_by(Subscriber.id)
    return list((await session.scalars(query)).all())


def attr(name: str, op: str, value: object) -> dict[str, object]:
    return {"attribute": name, "op": op, "value": value}


def field(name: object, op: str, value: object) -> dict[str, object]:
    return {"field": name, "op": op, "value": value}


SELECTIONS: list[tuple[str, object, list[int]]] = [
    # Attributes: equality is typed and strings are case-sensitive.
    ("string eq", attr("city", "eq", "Oslo"), [1]),
    ("int eq", attr("age", "eq", 30), [1]),
    ("int eq as float", attr("age", "eq", 30.0), [1]),
    ("float stored as float", attr("age", "eq", 45), [3]),
    ("decimal fraction exact", attr("score", "eq", 0.1), [6]),
    ("number is not its text", attr("age", "eq", "30"), []),
    ("bool true", attr("vip", "eq", True), [1]),
    ("bool false", attr("vip", "eq", False), [2]),
    ("bool is not a number", attr("vip", "eq", 1), [5]),
    ("nested key", attr("plan.tier", "eq", "gold"), [1]),
    ("nested key under a string", attr("plan.tier", "eq", "silver"), [3]),
    ("ne includes missing and null", attr("city", "ne", "Oslo"), [2, 3, 4, 5, 6]),
    ("ne bool", attr("vip", "ne", True), [2, 3, 4, 5, 6]),
    ("in strings", attr("city", "in", ["Oslo", "Bergen"]), [1, 2]),
    ("in mixed kinds", attr("age", "in", [30, "thirty", 45]), [1, 2, 3]),
    ("in both booleans", attr("vip", "in", [True, False]), [1, 2]),
    ("in empty", attr("city", "in", []), []),
    ("ne of in-list via not", {"not": attr("city", "in", ["Oslo", "Bergen"])}, [3, 4, 5, 6]),
    # contains: substring, ASCII case folding, LIKE wildcards escaped.
    ("contains folds case", attr("city", "contains", "OSL"), [1, 3]),
    ("contains on non-strings", attr("age", "contains", "3"), []),
    ("contains non-ascii exact case", attr("city", "contains", "sø"), [6]),
    ("contains non-ascii other case", attr("city", "contains", "SØ"), []),
    # Ordering: numbers numerically, other kinds never match and never fail.
    ("gt number", attr("age", "gt", 29), [1, 3, 5]),
    ("gte number", attr("age", "gte", 30), [1, 3, 5]),
    ("lt number", attr("age", "lt", 30.5), [1, 6]),
    ("lte number", attr("age", "lte", 30.5), [1, 5, 6]),
    ("gt on strings and bools", attr("city", "gt", 0), []),
    ("gt on bools is not numeric", attr("vip", "gt", 0), [5]),
    ("not gt is the complement", {"not": attr("age", "gt", 29)}, [2, 4, 6]),
    ("huge numbers compare", attr("huge", "gt", 1e300), [6]),
    ("date attribute gte", attr("signup", "gte", "2024-01-01"), [1]),
    ("date attribute lt", attr("signup", "lt", "2024-01-01"), [2]),
    ("date attribute lte datetime", attr("signup", "lte", "2024-03-05T00:00:00Z"), [1, 2]),
    # exists: present and not null.
    ("exists", attr("city", "exists", True), [1, 2, 3, 6]),
    ("not exists", attr("city", "exists", False), [4, 5]),
    ("exists null value", attr("score", "exists", True), [1, 2, 6]),
    ("exists nested", attr("plan.tier", "exists", True), [1, 3]),
    ("exists object", attr("plan", "exists", True), [1, 3, 5]),
    ("exists array", attr("tags", "exists", True), [5]),
    ("array is not a string", attr("tags", "eq", "a"), []),
    ("key named null", attr("null", "eq", "x"), [6]),
    # Fields.
    ("email eq lower-cases", field("email", "eq", "ANN@Example.COM"), [1]),
    ("email in", field("email", "in", ["Bob@example.com", "nobody@example.com"]), [2]),
    ("email contains", field("email", "contains", "EXAMPLE.ORG"), [3, 4]),
    ("email ne", field("email", "ne", "ann@example.com"), [2, 3, 4, 5, 6]),
    ("name eq is case-sensitive", field("name", "eq", "bob"), []),
    ("name eq", field("name", "eq", "Bob"), [2]),
    ("name contains escapes %", field("name", "contains", "100%"), [3]),
    ("name contains escapes _", field("name", "contains", "_"), [3]),
    ("name contains folds ascii", field("name", "contains", "BERG"), [1]),
    ("name contains non-ascii", field("name", "contains", "ée"), [4]),
    ("status eq", field("status", "eq", "blocklisted"), [2]),
    ("status ne", field("status", "ne", "blocklisted"), [1, 3, 4, 5, 6]),
    ("status in", field("status", "in", ["enabled", "blocklisted"]), EVERYONE),
    ("created_at gt date", field("created_at", "gt", "2024-03-10"), [4, 5, 6]),
    ("created_at gte date", field("created_at", "gte", "2024-03-10"), [3, 4, 5, 6]),
    ("created_at lt offset", field("created_at", "lt", "2024-02-10T01:00:00+01:00"), [1]),
    ("created_at lte offset", field("created_at", "lte", "2024-02-10T01:00:00+01:00"), [1, 2]),
    ("updated_at lt naive", field("updated_at", "lt", "2024-02-10T00:00:01"), [1, 2]),
    ("id eq", field("id", "eq", 3), [3]),
    ("id ne", field("id", "ne", 3), [1, 2, 4, 5, 6]),
    ("id in", field("id", "in", [1, 2, 99]), [1, 2]),
    ("id gt", field("id", "gt", 4), [5, 6]),
    ("id lte", field("id", "lte", 2), [1, 2]),
    # Groups.
    ("empty all is everyone", {"all": []}, EVERYONE),
    ("empty any is no one", {"any": []}, []),
    ("not of empty any", {"not": {"any": []}}, EVERYONE),
    ("all", {"all": [attr("city", "exists", True), attr("age", "gt", 29)]}, [1, 3]),
    ("any", {"any": [attr("vip", "eq", True), field("id", "eq", 6)]}, [1, 6]),
    ("not", {"not": attr("vip", "eq", True)}, [2, 3, 4, 5, 6]),
    ("double not", {"not": {"not": attr("vip", "eq", True)}}, [1]),
    (
        "nested",
        {
            "any": [
                {"all": [field("status", "eq", "enabled"), attr("city", "contains", "oslo")]},
                {"not": {"any": [attr("age", "exists", True), field("id", "lt", 4)]}},
            ]
        },
        [1, 3, 4],
    ),
]


@pytest.mark.parametrize(
    ("segment", "expected"),
    [pytest.param(segment, expected, id=name) for name, segment, expected in SELECTIONS],
)
async def test_segment_selects(seeded: AsyncSession, segment: object, expected: list[int]) -> None:
    assert await select_ids(seeded, segment) == expected


async def test_complements_partition_everyone(seeded: AsyncSession) -> None:
    # Every condition is two-valued, so a segment and its negation split the subscribers.
    for _name, segment, _expected in SELECTIONS:
        selected = await select_ids(seeded, segment)
        rest = await select_ids(seeded, {"not": segment})
        assert sorted(selected + rest) == EVERYONE, segment


async def test_segments_differing_only_in_path_or_kind_compile_apart(
    seeded: AsyncSession,
) -> None:
    # The compiled-SQL cache must key on the attribute path and kind.
    assert await select_ids(seeded, attr("tags", "exists", True)) == [5]
    assert await select_ids(seeded, attr("plan", "exists", True)) == [1, 3, 5]
    assert await select_ids(seeded, attr("vip", "eq", True)) == [1]
    assert await select_ids(seeded, attr("vip", "eq", 1)) == [5]


async def test_compiles_into_counts_and_joins(seeded: AsyncSession) -> None:
    where = compile_segment(parse_segment(attr("age", "gt", 29)))
    count = await seeded.scalar(sa.select(sa.func.count()).select_from(Subscriber).where(where))
    assert count == 3


def test_validate_returns_canonical_json() -> None:
    data = {
        "all": [
            field("email", "in", ["Ann@Example.com"]),
            field("created_at", "gte", "2024-01-01"),
            field("updated_at", "lt", "2024-01-01T02:00:00+02:00"),
            {"not": attr("plan.tier", "exists", True)},
            attr("age", "gt", 30),
        ]
    }
    assert validate_segment(data) == {
        "all": [
            field("email", "in", ["ann@example.com"]),
            field("created_at", "gte", "2024-01-01T00:00:00+00:00"),
            field("updated_at", "lt", "2024-01-01T00:00:00+00:00"),
            {"not": attr("plan.tier", "exists", True)},
            attr("age", "gt", 30),
        ]
    }
    assert validate_segment(validate_segment(data)) == validate_segment(data)


def test_parsed_segment_is_immutable() -> None:
    segment = parse_segment(attr("plan.tier", "eq", "gold"))
    assert segment.root == AttributeCondition(("plan", "tier"), Op.eq, "gold")
    with pytest.raises(dataclasses.FrozenInstanceError):
        segment.root.op = Op.ne  # type: ignore[misc]


def nest(depth: int) -> object:
    node: object = attr("a", "exists", True)
    for _ in range(depth - 1):
        node = {"not": node}
    return node


ERRORS: list[tuple[str, object, str]] = [
    ("not an object", [], "segment: expected an object, got list"),
    ("null", None, "segment: expected an object, got null"),
    (
        "no kind",
        {},
        "segment: expected exactly one of 'all', 'any', 'not', 'field', 'attribute'",
    ),
    (
        "two kinds",
        {"all": [], "field": "id"},
        "segment: expected exactly one of 'all', 'any', 'not', 'field', 'attribute',"
        " got all, field",
    ),
    ("unknown key on group", {"all": [], "op": "eq"}, "segment: unknown key 'op' (expected: all)"),
    (
        "unknown key on leaf",
        {**attr("a", "eq", 1), "negate": True},
        "segment: unknown key 'negate' (expected: attribute, op, value)",
    ),
    (
        "non-string key",
        {"attribute": "a", "op": "eq", "value": 1, 1: 2},
        "segment: unknown key 1 (expected: attribute, op, value)",
    ),
    ("group not a list", {"any": {}}, "segment.any: expected a list, got object"),
    (
        "bad child",
        {"all": [attr("a", "eq", 1), attr("b", "eq", 1), {"attribute": "c", "op": "like"}]},
        "segment.all[2].op: unknown operator 'like' (expected one of:"
        " eq, ne, in, contains, gt, gte, lt, lte, exists)",
    ),
    ("missing op", {"not": {"attribute": "a", "value": 1}}, "segment.not.op: missing"),
    ("missing value", {"attribute": "a", "op": "eq"}, "segment.value: missing"),
    (
        "long operator shortened",
        {"attribute": "a", "op": "x" * 100, "value": 1},
        f"segment.op: unknown operator '{'x' * 36}... (expected one of:"
        " eq, ne, in, contains, gt, gte, lt, lte, exists)",
    ),
    (
        "operator not a string",
        {"attribute": "a", "op": ["eq"], "value": 1},
        "segment.op: unknown operator ['eq'] (expected one of:"
        " eq, ne, in, contains, gt, gte, lt, lte, exists)",
    ),
    (
        "unknown field",
        field("password", "eq", "x"),
        "segment.field: unknown field 'password' (expected one of:"
        " email, name, status, created_at, updated_at, id)",
    ),
    (
        "field not a string",
        field(["id"], "eq", 1),
        "segment.field: unknown field ['id'] (expected one of:"
        " email, name, status, created_at, updated_at, id)",
    ),
    (
        "operator not for field",
        field("email", "gt", "a"),
        "segment.op: operator 'gt' does not apply to field 'email'"
        " (expected one of: eq, ne, in, contains)",
    ),
    (
        "exists on a field",
        field("name", "exists", True),
        "segment.op: operator 'exists' does not apply to field 'name'"
        " (expected one of: eq, ne, in, contains)",
    ),
    (
        "eq on a timestamp",
        field("created_at", "eq", "2024-01-01"),
        "segment.op: operator 'eq' does not apply to field 'created_at'"
        " (expected one of: gt, gte, lt, lte)",
    ),
    (
        "bad status",
        field("status", "in", ["enabled", "deleted"]),
        "segment.value[1]: unknown status 'deleted' (expected one of: enabled, blocklisted)",
    ),
    (
        "id not an integer",
        field("id", "eq", "1"),
        "segment.value: expected an integer from 0 to 2147483647",
    ),
    (
        "id a boolean",
        field("id", "eq", True),
        "segment.value: expected an integer from 0 to 2147483647",
    ),
    (
        "id too big",
        field("id", "gt", 2**31),
        "segment.value: expected an integer from 0 to 2147483647",
    ),
    ("email not a string", field("email", "eq", 1), "segment.value: expected a string, got number"),
    (
        "bad timestamp",
        field("created_at", "gt", "yesterday"),
        "segment.value: expected an ISO-8601 date or datetime, got 'yesterday'",
    ),
    (
        "impossible date",
        field("created_at", "gt", "2024-02-30"),
        "segment.value: expected an ISO-8601 date or datetime, got '2024-02-30'",
    ),
    (
        "compact ISO form",
        field("created_at", "gt", "20240101"),
        "segment.value: expected an ISO-8601 date or datetime, got '20240101'",
    ),
    ("in not a list", field("id", "in", 1), "segment.value: expected a list, got number"),
    (
        "in too long",
        attr("a", "in", list(range(1001))),
        "segment.value: more than 1000 items",
    ),
    (
        "bad attribute name",
        attr("first-name", "eq", "x"),
        "segment.attribute: invalid attribute name 'first-name' (expected up to 4"
        " dot-separated keys of letters, digits and '_', each 1-64 long, not starting"
        " with a digit)",
    ),
    (
        "attribute name too long",
        attr("a" * 65, "eq", "x"),
        f"segment.attribute: invalid attribute name '{'a' * 36}... (expected up to 4"
        " dot-separated keys of letters, digits and '_', each 1-64 long, not starting"
        " with a digit)",
    ),
    (
        "attribute path too deep",
        attr("a.b.c.d.e", "eq", "x"),
        "segment.attribute: invalid attribute name 'a.b.c.d.e' (expected up to 4"
        " dot-separated keys of letters, digits and '_', each 1-64 long, not starting"
        " with a digit)",
    ),
    (
        "empty path part",
        attr("a..b", "eq", "x"),
        "segment.attribute: invalid attribute name 'a..b' (expected up to 4"
        " dot-separated keys of letters, digits and '_', each 1-64 long, not starting"
        " with a digit)",
    ),
    (
        "null value",
        attr("a", "eq", None),
        "segment.value: expected a string, number or boolean, got null",
    ),
    (
        "object value",
        attr("a", "in", ["x", {}]),
        "segment.value[1]: expected a string, number or boolean, got object",
    ),
    ("nan", attr("a", "eq", float("nan")), "segment.value: expected a finite number"),
    ("infinity", attr("a", "lt", float("inf")), "segment.value: expected a finite number"),
    ("huge number", attr("a", "eq", HUGE), "segment.value: number out of range"),
    (
        "exists needs a boolean",
        attr("a", "exists", "yes"),
        "segment.value: expected true or false, got string",
    ),
    (
        "contains needs a string",
        attr("a", "contains", 1),
        "segment.value: expected a string, got number",
    ),
    (
        "ordering on arbitrary text",
        attr("a", "gt", "M"),
        "segment.value: expected a number or an ISO-8601 date, got 'M'",
    ),
    (
        "ordering on a boolean",
        attr("a", "lt", True),
        "segment.value: expected a number or an ISO-8601 date, got True",
    ),
    ("long string", attr("a", "eq", "x" * 1001), "segment.value: longer than 1000 characters"),
    ("NUL", attr("a", "contains", "a\x00b"), "segment.value: contains a NUL character"),
    (
        "NUL in list",
        field("email", "in", ["a", "\x00"]),
        "segment.value[1]: contains a NUL character",
    ),
    (
        "too deep",
        nest(11),
        "segment.not.not.not.not.not.not.not.not.not.not: nested deeper than 10 levels",
    ),
    (
        "too many nodes",
        {"any": [attr("a", "exists", True)] * 200},
        "segment.any[199]: more than 200 nodes in the segment",
    ),
    (
        "huge group refused before parsing",
        {"any": [attr("a", "exists", True)] * 100_000},
        "segment.any: more than 200 items",
    ),
]


@pytest.mark.parametrize(
    ("data", "message"), [pytest.param(data, message, id=name) for name, data, message in ERRORS]
)
def test_invalid_segment(data: object, message: str) -> None:
    with pytest.raises(SegmentError) as raised:
        parse_segment(data)
    assert str(raised.value) == message


def test_limits_are_inclusive() -> None:
    parse_segment(nest(10))
    parse_segment({"any": [attr("a", "exists", True)] * 199})
    parse_segment(attr("a", "in", ["x" * 1000] * 1000))
    parse_segment(attr("a.b.c.d", "exists", True))
    parse_segment(attr("_" + "a" * 63, "exists", True))


def test_segment_error_is_a_value_error() -> None:
    assert issubclass(SegmentError, ValueError)
