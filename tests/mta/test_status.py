"""How often an MTA instance publishes its status snapshot."""

from __future__ import annotations

from workers.mta.status import PUBLISH_EVERY, SNAPSHOT_TTL, publish_interval


def test_a_cheap_snapshot_is_published_every_second() -> None:
    assert publish_interval(0.0) == PUBLISH_EVERY
    assert publish_interval(0.002) == PUBLISH_EVERY


def test_a_costly_walk_of_a_large_queue_is_published_less_often() -> None:
    # 30 ms a walk (tens of thousands of deferred envelopes) once a second is 3 % of the
    # event loop; every 3 s it is 1 %.
    assert publish_interval(0.03) == 3.0
    assert publish_interval(0.04) > publish_interval(0.03)


def test_an_instance_is_published_before_its_snapshot_expires_whatever_the_cost() -> None:
    assert publish_interval(10.0) < SNAPSHOT_TTL
    assert publish_interval(10.0) == publish_interval(60.0)
