"""EnvironmentLimits: caps held per user and in total, and the per-user sliding minute."""

from __future__ import annotations

import pytest

from pairpod.config import LimitsSettings
from pairpod.env_limits import RATE_WINDOW, EnvironmentLimitReached, EnvironmentLimits


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limits(clock: Clock, **settings: int) -> EnvironmentLimits:
    return EnvironmentLimits(LimitsSettings(**settings), clock)


def test_per_user_cap_counts_held_environments_and_frees_on_release() -> None:
    env = limits(Clock(), environments_per_user=2)
    env.admit("alice", "c1")
    env.admit("alice", "c2")
    env.admit("bob", "c3")  # another user's cap is their own
    with pytest.raises(EnvironmentLimitReached, match="environments_per_user"):
        env.admit("alice", "c4")
    env.release("c1")
    env.release("c1")  # idempotent
    env.admit("alice", "c4")
    assert env.held == 3


def test_total_cap() -> None:
    env = limits(Clock(), environments_total=2)
    env.admit("a", "c1")
    env.admit("b", "c2")
    with pytest.raises(EnvironmentLimitReached) as refused:
        env.admit("c", "c3")
    assert refused.value.user_message == "the gateway is at its limit of environments, try again later"


def test_rate_is_a_sliding_minute_and_refusals_do_not_count() -> None:
    clock = Clock()
    env = limits(clock, environment_rate=2)
    env.admit("alice", "c1")
    env.release("c1")
    clock.now += 30
    env.admit("alice", "c2")
    env.release("c2")
    for _ in range(5):
        with pytest.raises(EnvironmentLimitReached, match="environment_rate") as refused:
            env.admit("alice", "c3")
    assert "try again in 30s" in refused.value.user_message
    clock.now += 30  # the first opening leaves the window
    env.admit("alice", "c3")
    with pytest.raises(EnvironmentLimitReached):
        env.admit("alice", "c4")
    clock.now += RATE_WINDOW
    env.release("c3")
    env.admit("alice", "c5")
