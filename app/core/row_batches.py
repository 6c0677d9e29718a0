"""Writing a batch of rows as one statement over arrays (PostgreSQL's `UPDATE … FROM unnest`).

An executemany runs its statement once per row; one statement over arrays, one per column,
runs once for the batch and is the same statement whatever its size. Two such statements
writing overlapping rows (the worker's record of its attempts, the MTA's word on the same
messages) must take their row locks in one order, or they can deadlock: `lock_in_id_order`
takes them by id first. And an `UPDATE … FROM` that meets one row twice writes it once, so
the words on one row are merged first (`one_per_row`) as an executemany would have applied
them one after another.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession


async def lock_in_id_order(session: AsyncSession, table: sa.Table, ids: list[int]) -> None:
    """Lock `table`'s rows of `ids` in id order (PostgreSQL), before one statement writes them."""
    ids_param = sa.bindparam("ids", ids, type_=postgresql.ARRAY(sa.BigInteger()))
    await session.execute(
        sa.select(table.c.id)
        .where(table.c.id == sa.any_(ids_param))
        .order_by(table.c.id)
        .with_for_update()
    )


def one_per_row(
    params: list[dict[str, Any]], *, summed: tuple[str, ...] = (), kept: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """Merge the words on one row (`b_id`, in order) into one, as an executemany would have
    applied them one after another.

    The later word wins, but a `summed` value adds up and a `kept` one (None: "leave it")
    keeps the last that was not None.
    """
    merged: dict[int, dict[str, Any]] = {}
    for word in params:
        earlier = merged.get(word["b_id"])
        if earlier is not None:
            word = {**word}
            for key in summed:
                word[key] += earlier[key]
            for key in kept:
                if word[key] is None:
                    word[key] = earlier[key]
        merged[word["b_id"]] = word
    return list(merged.values())


ATTEMPT_ARRAYS = {
    "b_id": "id",
    "b_status": "status",
    "b_reply": "reply",
    "b_next": "next_attempt_at",
    "b_sent": "sent_at",
    "b_inc": "inc",
}
"""The words of a batch of attempts (as both ledgers write them) and their statements'
array parameters."""
DELIVERY_ARRAYS = {"b_id": "id", "b_status": "status", "b_reply": "reply"}
"""The same for the MTA's words on rows."""


def arrays(params: list[dict[str, Any]], names: dict[str, str]) -> dict[str, list[Any]]:
    """The words as one array per column: `names` maps each word key to its parameter."""
    return {name: [word[key] for word in params] for key, name in names.items()}
