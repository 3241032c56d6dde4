"""Drift episodes: consecutive alarming windows are one episode, and one episode asks for one retrain.

An episode opens at the first window that alarms and closes after ``end_after`` healthy windows in a
row. Its id is derived from the window that opened it, so a window reprocessed after a crash
(at-least-once) lands in the same episode and asks with the same request id.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class EpisodeState:
    episode_id: str | None = None  # None: no episode open
    healthy_streak: int = 0
    requested: bool = False  # this episode's retrain request was published
    labels_since_request: int = 0
    backlog_round: int = 0  # label-backlog requests raised so far

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> EpisodeState:
        return cls(**(d or {}))


@dataclass(frozen=True)
class Step:
    state: EpisodeState
    episode_id: str | None  # the episode this window belongs to
    opened: bool  # this window opened it
    wants_request: bool  # an episode that has not raised its request yet


def advance(state: EpisodeState, window_id: str, alarmed: bool, end_after: int) -> Step:
    """The episode state after a window (``alarmed``: any trigger but the label backlog fired)."""
    if alarmed:
        opened = state.episode_id is None
        episode = window_id if opened else state.episode_id
        new = EpisodeState(
            episode, 0, False if opened else state.requested, state.labels_since_request, state.backlog_round
        )
        return Step(new, episode, opened, not new.requested)
    if state.episode_id is None:
        return Step(state, None, False, False)
    streak = state.healthy_streak + 1
    if streak >= end_after:  # the episode is over: the next alarm is a new one
        return Step(EpisodeState(None, 0, False, state.labels_since_request, state.backlog_round), None, False, False)
    return Step(
        EpisodeState(state.episode_id, streak, state.requested, state.labels_since_request, state.backlog_round),
        state.episode_id,
        False,
        False,
    )
