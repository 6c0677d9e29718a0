"""The campaign state machine: which transitions exist and why others do not."""

from __future__ import annotations

from app.models import CampaignStatus as S

ACTIONS: dict[str, tuple[frozenset[S], S]] = {
    "schedule": (frozenset({S.draft}), S.scheduled),
    "unschedule": (frozenset({S.scheduled}), S.draft),
    "pause": (frozenset({S.running}), S.paused),
    "resume": (frozenset({S.paused}), S.running),
    "cancel": (frozenset({S.draft, S.scheduled, S.running, S.paused}), S.cancelled),
    "start": (frozenset({S.scheduled}), S.running),
    "finish": (frozenset({S.running}), S.finished),
}


class TransitionError(ValueError):
    """The campaign's state does not allow the action; the message says why."""


def target(action: str, current: S) -> S:
    """The state `action` leads to from `current`, or TransitionError explaining the refusal."""
    allowed, to = ACTIONS[action]
    if current in allowed:
        return to
    names = ", ".join(sorted(state.value for state in allowed))
    raise TransitionError(
        f"cannot {action} a campaign that is {current.value} (only from: {names})"
    )
