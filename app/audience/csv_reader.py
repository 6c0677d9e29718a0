"""Reading an import CSV: the header, then validated rows in chunks, never the whole file.

The format: UTF-8 (a byte-order mark is skipped), comma-separated (a header with no comma
but a semicolon or tab switches to that delimiter, as European spreadsheets write), and a
header row first. Header names are matched case-insensitively: `email` is required, `name`
is optional, every other column becomes an attribute under the name as written.

Attribute values are stored as strings, exactly as in the file (minus surrounding
whitespace): CSV has no types, and guessing would turn the ZIP code 01234 into 1234 and
long phone numbers into floats. A column that should hold numbers or booleans says so in
its header, `age:number` or `vip:boolean`; segments compare numbers only with numbers.
An empty cell sets nothing, so re-importing a partial file never erases what is stored.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self, cast

from app.core.addresses import InvalidAddress, normalize_address
from app.core.errors import Invalid
from app.core.text import ATTRIBUTE_KEY, MAX_ATTRIBUTES_BYTES

MAX_NAME_LENGTH = 200
MAX_COLUMNS = 100
MAX_ERROR_EMAIL = 320
Kind = Literal["string", "number", "boolean"]
KINDS: tuple[Kind, ...] = ("string", "number", "boolean")
Row = tuple[str, dict[str, Any]]
"""A valid row: (name, attributes), keyed by the normalised address in a chunk."""

# NUL cannot be stored by PostgreSQL; lone surrogates are bytes that were not UTF-8.
_NUL_OR_NOT_UTF8 = re.compile("[\x00\udc80-\udcff]")
_LINE_BREAK = re.compile(r"[\r\n]")
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?P<real>\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_MAX_INT = 2**63
# Below this many characters a row's attributes cannot pass MAX_ATTRIBUTES_BYTES (JSON
# escaping at most sextuples a character's size), so the exact check is skipped.
_SIZE_CHECK_FROM = MAX_ATTRIBUTES_BYTES // 6


@dataclass(frozen=True, slots=True)
class Header:
    """Where each field is: column indexes of email and name, attribute columns in order."""

    width: int
    email: int
    name: int | None
    attributes: tuple[tuple[str, int, Kind], ...]
    delimiter: str = ","


@dataclass(slots=True)
class Chunk:
    """Up to `size` rows of the file: the valid ones by address, the rejected ones."""

    rows: dict[str, Row]
    errors: list[dict[str, Any]]
    processed: int
    bytes_read: int

    @property
    def valid(self) -> int:
        """Rows that passed validation (an address repeated in the chunk counts each time)."""
        return self.processed - len(self.errors)


def parse_header(fields: list[str], delimiter: str = ",") -> Header:
    """The header's layout, or Invalid naming what is wrong with it."""
    if not fields or fields == [""]:
        raise Invalid("the first line must be a header naming the columns, e.g. email,name")
    if any("\x00" in field for field in fields):
        raise Invalid("the file looks like UTF-16 or binary: save it as CSV UTF-8")
    if len(fields) > MAX_COLUMNS:
        raise Invalid(f"the header has {len(fields)} columns; at most {MAX_COLUMNS} are allowed")
    email: int | None = None
    name: int | None = None
    attributes: list[tuple[str, int, Kind]] = []
    seen: set[str] = set()
    for index, raw in enumerate(fields):
        label = raw.strip()
        key, _, kind = label.partition(":")
        folded = key.lower()
        if not ATTRIBUTE_KEY.match(key):
            raise Invalid(
                f"column {index + 1} has the header {label[:70]!r}: a column name must be "
                "letters, digits and _ (starting with a letter or _), at most 64 characters"
            )
        if folded in seen:
            raise Invalid(f"the column {key!r} appears twice in the header")
        seen.add(folded)
        if folded in ("email", "name") and kind:
            raise Invalid(f"the column {key!r} cannot have a type")
        if folded == "email":
            email = index
        elif folded == "name":
            name = index
        elif kind and kind.lower() not in KINDS:
            raise Invalid(f"column {key!r}: unknown type {kind[:20]!r}; use one of {KINDS}")
        else:
            attributes.append((key, index, cast(Kind, kind.lower() or "string")))
    if email is None:
        raise Invalid("the header has no email column (header names: email, name, attributes…)")
    return Header(len(fields), email, name, tuple(attributes), delimiter)


def read_header(path: Path) -> Header:
    """Check the file's header without reading further; Invalid if it cannot be imported."""
    with CsvReader(path, overwrite=True) as reader:
        return reader.header


class CsvReader:
    """An open import file: `header` once opened, then `chunks()` until the end."""

    def __init__(self, path: Path, *, overwrite: bool) -> None:
        self.path = path
        self.overwrite = overwrite
        self._file: IO[str] | None = None
        self._header: Header | None = None

    @property
    def header(self) -> Header:
        """The parsed header (the reader must be open)."""
        assert self._header is not None, "the reader is not open"
        return self._header

    def __enter__(self) -> Self:
        try:
            # surrogateescape: a row that is not UTF-8 is rejected alone, not the whole file.
            self._file = self.path.open(encoding="utf-8-sig", errors="surrogateescape", newline="")
            first = self._file.readline()
        except OSError as exc:
            raise Invalid(f"cannot read {self.path.name}: {exc.strerror or exc}") from None
        if not first.strip():
            self.close()
            raise Invalid(
                "the file is empty or its first line is blank: a header must name the columns"
            )
        delimiter = _delimiter(first)
        try:
            self._header = parse_header(next(csv.reader([first], delimiter=delimiter)), delimiter)
        except csv.Error as exc:
            self.close()
            raise Invalid(f"the header cannot be read: {exc}") from None
        except Invalid:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def chunks(self, size: int) -> Iterator[Chunk]:
        """Chunks of `size` data rows (blank lines do not count), validated, until the end."""
        assert self._file is not None, "the reader is not open"
        file, header, overwrite = self._file, self.header, self.overwrite
        reader = csv.reader(file, delimiter=header.delimiter)
        width, email_at, name_at = header.width, header.email, header.name
        plain = all(kind == "string" for _, _, kind in header.attributes)
        columns = [(key, index) for key, index, _ in header.attributes]
        last_line = 1  # the header
        done = False
        while not done:
            rows: dict[str, Row] = {}
            errors: list[dict[str, Any]] = []
            processed = 0
            while processed < size:
                try:
                    record = next(reader)
                except StopIteration:
                    done = True
                    break
                except csv.Error as exc:
                    processed += 1
                    errors.append(_error(last_line + 1, "", f"malformed CSV: {exc}"))
                    last_line = reader.line_num + 1
                    continue
                line = last_line + 1  # where the record starts; it may span lines
                last_line = reader.line_num + 1
                if not record:
                    continue
                processed += 1
                if len(record) != width:
                    found = record[email_at] if len(record) > email_at else ""
                    errors.append(
                        _error(line, found, f"expected {width} columns, found {len(record)}")
                    )
                    continue
                joined = "\x1f".join(record)
                if _NUL_OR_NOT_UTF8.search(joined):
                    errors.append(_error(line, record[email_at], _bad_text(joined)))
                    continue
                try:
                    email = normalize_address(record[email_at])
                except InvalidAddress as exc:
                    errors.append(_error(line, record[email_at], f"invalid address: {exc}"))
                    continue
                name = record[name_at].strip() if name_at is not None else ""
                if name and (len(name) > MAX_NAME_LENGTH or _LINE_BREAK.search(name)):
                    reason = (
                        f"name is longer than {MAX_NAME_LENGTH} characters"
                        if len(name) > MAX_NAME_LENGTH
                        else "name must be a single line (no CR or LF)"
                    )
                    errors.append(_error(line, email, reason))
                    continue
                try:
                    attributes = (
                        {key: value for key, index in columns if (value := record[index].strip())}
                        if plain
                        else _typed(record, header)
                    )
                    if len(joined) > _SIZE_CHECK_FROM:
                        _check_size(attributes)
                except ValueError as exc:
                    errors.append(_error(line, email, str(exc)))
                    continue
                before = rows.get(email)
                if before is None:
                    rows[email] = (name, attributes)
                elif overwrite:
                    # The same as importing the later row afterwards: it updates the first.
                    rows[email] = (name or before[0], before[1] | attributes)
            yield Chunk(rows, errors, processed, file.buffer.tell())  # type: ignore[attr-defined]


def _delimiter(first_line: str) -> str:
    if "," in first_line:
        return ","
    for candidate in (";", "\t"):
        if candidate in first_line:
            return candidate
    return ","


def _typed(record: list[str], header: Header) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for key, index, kind in header.attributes:
        value = record[index].strip()
        if not value:
            continue
        if kind == "string":
            attributes[key] = value
        elif kind == "number":
            attributes[key] = _number(key, value)
        else:
            flag = _BOOLEANS.get(value.lower())
            if flag is None:
                raise ValueError(f"{key}: expected true/false, yes/no or 1/0, got {value[:40]!r}")
            attributes[key] = flag
    return attributes


def _number(key: str, value: str) -> int | float:
    match = _JSON_NUMBER.fullmatch(value)
    if match is None:
        raise ValueError(f"{key}: expected a number such as 42 or -1.5, got {value[:40]!r}")
    if match["real"] is None and "e" not in value.lower():
        number = int(value)
        if abs(number) >= _MAX_INT:
            raise ValueError(f"{key}: the number is out of range")
        return number
    real = float(value)
    if real in (float("inf"), float("-inf")):
        raise ValueError(f"{key}: the number is out of range")
    return real


def _check_size(attributes: dict[str, Any]) -> None:
    if len(json.dumps(attributes, ensure_ascii=False).encode()) > MAX_ATTRIBUTES_BYTES:
        raise ValueError(f"attributes are larger than {MAX_ATTRIBUTES_BYTES} bytes")


def _bad_text(joined: str) -> str:
    if "\x00" in joined:
        return "the row contains a NUL character"
    return "the row is not valid UTF-8 text (save the file as CSV UTF-8)"


def _error(line: int, email: str, reason: str) -> dict[str, Any]:
    """A row error as stored in the job; the echoed address is made safe to store as JSON."""
    shown = _NUL_OR_NOT_UTF8.sub("\ufffd", email.strip()[:MAX_ERROR_EMAIL])
    return {"line": line, "email": shown, "reason": reason}
