"""Which asyncio event loop the gateway runs on: uvloop when installed, or asyncio's own.

uvloop (``pip install pairpod[fast]``) is a drop-in loop built on libuv. It is
the default when it can be imported (``event_loop: auto``); ``event_loop:
asyncio`` keeps the standard library's loop, ``event_loop: uvloop`` insists on
uvloop and refuses to start without it. The two loops' transports differ
(uvloop's do not derive from asyncio's transport classes), so pairpod only
uses what both offer: the public transport and protocol methods.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar, get_args

from pairpod.errors import ConfigError

LoopChoice = Literal["auto", "asyncio", "uvloop"]
LOOP_CHOICES: tuple[LoopChoice, ...] = get_args(LoopChoice)

T = TypeVar("T")


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_factory(choice: LoopChoice) -> Callable[[], asyncio.AbstractEventLoop]:
    """A function making a new event loop of the chosen kind (``auto``: uvloop if installed)."""
    if choice == "asyncio":
        return asyncio.new_event_loop
    factory = _uvloop_factory()
    if factory is not None:
        return factory
    if choice == "uvloop":
        raise ConfigError("event_loop: uvloop is not installed (pip install 'pairpod[fast]')")
    return asyncio.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: the kind of a running loop, for the log and metrics."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def new_event_loop(choice: LoopChoice) -> asyncio.AbstractEventLoop:
    """A new event loop of the chosen kind."""
    return loop_factory(choice)()


def run(main: Coroutine[Any, Any, T], choice: LoopChoice) -> T:
    """Run ``main`` to completion on a new loop of the chosen kind (like ``asyncio.run``)."""
    try:
        factory = loop_factory(choice)
    except ConfigError:
        main.close()  # never awaited: no "coroutine was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        loop = runner.get_loop()
        if loop_name(loop) == "asyncio":
            _watch_children_with_pidfds(loop)
        return runner.run(main)


def _watch_children_with_pidfds(loop: asyncio.AbstractEventLoop) -> None:
    """Before Python 3.12 asyncio waits for each child process in a thread of its
    own: a thousand idle shells were a thousand threads (their stacks, and a
    p99 login latency of seconds). A pidfd per child in the loop instead, as
    3.12 does by default; uvloop has libuv's own watcher."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # a kernel before 5.3
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(loop)
    asyncio.set_child_watcher(watcher)


def close_on_exec_above_stdio() -> int:
    """Mark every open descriptor above stderr close-on-exec; how many were not.

    asyncio closes all but a child's stdio at spawn (``close_fds``); uvloop does
    not, so a descriptor the gateway inherited from whatever started it (or
    one a library opened without ``O_CLOEXEC``) would reach every user's
    program. Marked close-on-exec, it reaches none, on either loop.
    """
    try:
        descriptors = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # not Linux: nothing to inspect cheaply
        return 0
    marked = 0
    for fd in descriptors:
        if fd <= 2:
            continue
        try:
            if os.get_inheritable(fd):
                os.set_inheritable(fd, False)
                marked += 1
        except OSError:  # the listing's own descriptor, closed by now
            continue
    return marked
