"""``pairpod pair``: the standing session served by this process's own gateway.

The gateway is the one ``pairpod serve`` runs (:class:`~pairpod.ssh.Gateway`),
narrowed to joiners: join links are its only usernames, the standing
session its only shared session. What it prints on stdout (the people, the
shell user and password, the two commands) is for ``docker logs`` and
``kubectl logs``; the log goes to stderr.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from pairpod.config import Config
from pairpod.log import fields, get_logger
from pairpod.pair.control import CONTROL_ENV, PairControl
from pairpod.pair.links import Audience, share_standing
from pairpod.pair.standing import Standing
from pairpod.pair.user import ShellUser, prepare_user
from pairpod.sharing.tokens import ShareLink, join_command
from pairpod.ssh import Gateway
from pairpod.ssh.kinds import choose_join_only

log = get_logger("pair")


@dataclass(frozen=True)
class PairOptions:
    """What ``pairpod pair`` was asked for, beyond the config."""

    people: Audience
    respawn: bool = False


def announcement(people: Audience, user: ShellUser, links: list[ShareLink], host: str, port: int) -> str:
    """The lines printed on stdout once the session is ready."""
    lines = [f"pairpod: sharing with {people.describe()}", "pairpod: user to share session:"]
    lines.append(f"   username: '{user.name}'")
    if user.password is not None:
        lines.append(f"   password: '{user.password}'")
    for link in links:
        label = f"{link.access.label}:"
        lines.append(f"pairpod: {label:<12}{join_command(link.username, host, port)}")
    lines.append(
        "pairpod: controls (in the shared shell, or with "
        f"{CONTROL_ENV} set): pairpod ctl list | mint ro|rw | revoke LINK | kick ID"
    )
    return "\n".join(lines) + "\n"


async def run_pair(
    config: Config,
    options: PairOptions,
    *,
    out: TextIO = sys.stdout,
    user_factory: Callable[[], ShellUser] = prepare_user,
) -> int:
    """Serve the standing session until its shell ends (or SIGTERM/SIGINT); the exit code."""
    user = user_factory()
    gateway = Gateway(config, purposes=choose_join_only)
    await gateway.start()
    control = PairControl(gateway.sharing, user.name, user)
    try:
        await control.start()
        standing = await Standing.start(
            config, user, env={CONTROL_ENV: str(control.path)}, respawn=options.respawn
        )
        session, links = share_standing(gateway.sharing, standing.terminal, user.name, options.people)
        host, port = gateway.sharing.public_address(config)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, standing.stop)
        out.write(announcement(options.people, user, links, host, port))
        out.flush()
        try:
            status = await standing.run()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            gateway.sharing.close_session(session)
    finally:
        await control.stop()
        # Joiners were let go with the session; end any connection still around now.
        hurry = asyncio.Event()
        hurry.set()
        await gateway.stop(hurry=hurry)
    code = status.as_exit_code if status is not None else 0
    log.info("pair.exit", extra=fields(code=code))
    return code
