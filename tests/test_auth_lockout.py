"""Lockout policy, driven by a fake clock (the module is sans-I/O)."""

from __future__ import annotations

from pairpod.auth.lockout import Lockout
from pairpod.config import LockoutSettings


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(failures: int = 3, window: float = 60, duration: float = 300) -> tuple[Lockout, Clock]:
    clock = Clock()
    settings = LockoutSettings(failures=failures, window=window, duration=duration)
    return Lockout(settings, clock), clock


def test_locks_address_and_username_after_n_failures_then_expires() -> None:
    lockout, clock = make()
    for _ in range(2):
        assert lockout.record_failure("10.0.0.1", "alice", guessable=True) == []
        assert lockout.check("10.0.0.1", "alice", guessable=True) is None
    started = lockout.record_failure("10.0.0.1", "alice", guessable=True)
    assert {(lock.kind, lock.subject) for lock in started} == {
        ("address", "10.0.0.1"),
        ("username", "alice"),
    }
    lock = lockout.check("10.0.0.1", "alice", guessable=True)
    assert lock is not None and lock.remaining == 300
    clock.now += 299
    assert lockout.check("10.0.0.1", "bob", guessable=False) is not None
    clock.now += 1
    assert lockout.check("10.0.0.1", "alice", guessable=True) is None


def test_failures_outside_the_window_do_not_count() -> None:
    lockout, clock = make(window=60)
    for _ in range(10):
        assert lockout.record_failure("10.0.0.1", "alice", guessable=True) == []
        clock.now += 31  # at most two failures inside any 60 s window
    assert lockout.check("10.0.0.1", "alice", guessable=True) is None


def test_username_lock_does_not_block_keys_but_address_lock_does() -> None:
    lockout, _ = make()
    # Three guesses at alice's password from three addresses.
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        lockout.record_failure(address, "alice", guessable=True)
    assert lockout.check("10.9.9.9", "alice", guessable=True) is not None  # password: locked
    assert lockout.check("10.9.9.9", "alice", guessable=False) is None  # her key still works
    # Key failures from one address lock that address for every method.
    for _ in range(3):
        lockout.record_failure("10.0.0.7", "bob", guessable=False)
    assert lockout.check("10.0.0.7", "carol", guessable=False) is not None
    assert lockout.check("10.0.0.8", "bob", guessable=True) is None  # bob's name is not locked


def test_failures_while_locked_do_not_extend_the_lock() -> None:
    lockout, clock = make()
    for _ in range(3):
        lockout.record_failure("10.0.0.1", "alice", guessable=True)
    clock.now += 200
    assert lockout.record_failure("10.0.0.1", "alice", guessable=True) == []
    clock.now += 100
    assert lockout.check("10.0.0.1", "alice", guessable=True) is None


def test_ipv6_clients_are_locked_by_64() -> None:
    lockout, _ = make()
    for suffix in ("1", "2", "3"):
        lockout.record_failure(f"2001:db8:0:1::{suffix}", "u", guessable=False)
    assert lockout.check("2001:db8:0:1::ffff", "v", guessable=False) is not None
    assert lockout.check("2001:db8:0:2::1", "v", guessable=False) is None


def test_memory_stays_bounded() -> None:
    clock = Clock()
    lockout = Lockout(LockoutSettings(failures=3, window=60, duration=300), clock, max_entries=50)
    for i in range(500):
        lockout.record_failure(f"10.0.{i // 256}.{i % 256}", f"user{i}", guessable=True)
    assert len(lockout) <= 50


class SharedState:
    """What the other replicas know, in memory: a ``SharedLocks``."""

    def __init__(self) -> None:
        self.locks: dict[tuple[str, str], float] = {}
        self.failures: list[tuple[str, str]] = []

    def locked_for(self, kind: str, subject: str) -> float:
        return self.locks.get((kind, subject), 0.0)

    def failed(self, kind: str, subject: str) -> None:
        self.failures.append((kind, subject))


def test_a_lock_from_another_replica_refuses_and_failures_are_told_to_the_others() -> None:
    shared = SharedState()
    lockout = Lockout(LockoutSettings(failures=3, window=60, duration=300), Clock(), shared=shared)
    # Failures here are counted here and told to the cluster (an IPv6 client as its /64)...
    lockout.record_failure("2001:db8::1", "alice", guessable=True)
    assert shared.failures == [("address", "2001:db8::/64"), ("username", "alice")]
    assert lockout.check("2001:db8::1", "alice", guessable=True) is None
    # ...and a lock tripped elsewhere refuses here, for what it covers only.
    shared.locks[("username", "alice")] = 120.0
    lock = lockout.check("10.0.0.9", "alice", guessable=True)
    assert lock is not None and (lock.kind, lock.subject, lock.remaining) == ("username", "alice", 120.0)
    assert lockout.check("10.0.0.9", "alice", guessable=False) is None  # keys are not guessable
    assert lockout.reserve("10.0.0.9", "alice", guessable=True) is not None
    # Once locked here, further failures are not told again (they would not extend the lock).
    for _ in range(3):
        lockout.record_failure("10.0.0.2", "bob", guessable=False)
    told = len(shared.failures)
    lockout.record_failure("10.0.0.2", "bob", guessable=False)
    assert len(shared.failures) == told
