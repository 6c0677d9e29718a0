"""The visual segment builder: rows of (subject, operator, value) posted by a plain form,
turned into the JSON segment language the API takes (`app.audience.segments`), and back.

A row's subject is a subscriber field or an attribute (named in its own box). Values are
read as a person types them: `true`/`false` are booleans, numbers are numbers, a value in
double quotes is text as written, and `in` takes a comma-separated list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

FIELDS = ("email", "name", "status", "created_at", "updated_at", "id")
ATTRIBUTE = "attribute"
SUBJECTS = (ATTRIBUTE, *FIELDS)
OPS = ("eq", "ne", "contains", "in", "gt", "gte", "lt", "lte", "exists")
OP_LABELS = {
    "eq": "is",
    "ne": "is not",
    "contains": "contains",
    "in": "is one of",
    "gt": "is more than",
    "gte": "is at least",
    "lt": "is less than",
    "lte": "is at most",
    "exists": "exists (true/false)",
}
MATCHES = ("all", "any")
ROWS_SHOWN = 3
"""Empty rows the form offers without JavaScript (marketer.js adds more on request)."""


@dataclass(frozen=True)
class Row:
    """One condition as the form shows it."""

    subject: str = ATTRIBUTE
    attribute: str = ""
    op: str = "eq"
    value: str = ""


def _typed(text: str, subject: str) -> Any:
    """A typed value: booleans, numbers, "quoted text", else the text itself."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    if subject in ("email", "name", "status", "created_at", "updated_at"):
        return text
    if text in ("true", "false"):
        return text == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def to_segment(match: str, rows: list[Row]) -> dict[str, Any] | None:
    """The JSON segment for the filled rows (None when no row is filled)."""
    conditions = []
    for row in rows:
        if row.subject not in SUBJECTS or row.op not in OPS:
            continue
        if row.subject == ATTRIBUTE and not row.attribute.strip():
            continue
        if not row.value.strip():
            continue
        if row.op == "in":
            value: Any = [_typed(part, row.subject) for part in row.value.split(",")]
        else:
            value = _typed(row.value, row.subject)
        key = {ATTRIBUTE: row.attribute.strip()} if row.subject == ATTRIBUTE else {}
        subject = key or {"field": row.subject}
        conditions.append({**subject, "op": row.op, "value": value})
    if not conditions:
        return None
    return {match if match in MATCHES else "all": conditions}


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and (value in ("true", "false") or _is_number(value)):
        return json.dumps(value)  # quoted, so it reads back as text
    return str(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def to_rows(segment: dict[str, Any] | None) -> tuple[str, list[Row]] | None:
    """The builder's match and rows for a segment it can show, else None (JSON only)."""
    if not segment:
        return "all", []
    if len(segment) != 1 or next(iter(segment)) not in MATCHES:
        return None
    match, conditions = next(iter(segment.items()))
    rows = []
    for condition in conditions:
        if not isinstance(condition, dict) or set(condition) - {ATTRIBUTE, "field", "op", "value"}:
            return None
        value = condition.get("value")
        if isinstance(value, list):
            text = ", ".join(_shown(item) for item in value)
        elif isinstance(value, dict):
            return None
        else:
            text = _shown(value)
        if ATTRIBUTE in condition:
            if not isinstance(condition[ATTRIBUTE], str):
                return None
            rows.append(Row(ATTRIBUTE, condition[ATTRIBUTE], str(condition.get("op")), text))
        else:
            rows.append(Row(str(condition.get("field")), "", str(condition.get("op")), text))
    return match, rows


def rows_from_form(
    subjects: list[str], attributes: list[str], ops: list[str], values: list[str]
) -> list[Row]:
    """The posted rows (the four lists are read in step)."""
    return [
        Row(subject, attribute, op, value)
        for subject, attribute, op, value in zip(subjects, attributes, ops, values, strict=False)
    ]
