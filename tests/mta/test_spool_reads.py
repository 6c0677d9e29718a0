"""Reading envelopes back in bulk, as the delivery agent's sweep does after a spill."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.spooled import envelope, message
from workers.mta import spool_format
from workers.mta.spool import Spool


async def test_read_envelopes_reads_each_current_one_and_none_for_gone_or_unreadable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Spool(tmp_path) as spool:
        spool.recover()
        ids = [await spool.accept(envelope(n), message(n)) for n in range(4)]
        [current] = await spool.read_envelopes([ids[0]])
        assert current is not None
        current.next_attempt_at += 60
        await spool.update(current)
        await spool.remove(ids[1])
        spool.message_path(ids[2]).write_bytes(spool_format.MARKER + b'{"mail_from": \n')

        found = await spool.read_envelopes(ids)

        assert [e.queue_id if e else None for e in found] == [ids[0], None, None, ids[3]]
        assert found[0] == current  # as changed, not as accepted
        assert found[3] == await spool.read_envelope(ids[3])
        assert f"envelope {ids[2]} is unreadable" in caplog.text
