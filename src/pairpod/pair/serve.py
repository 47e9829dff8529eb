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
from dataclasses import dataclass

from pairpod.config import Config
from pairpod.log import fields, get_logger
from pairpod.pair.control import CONTROL_ENV, PairControl
from pairpod.pair.links import Audience, command_line, share_standing
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
    lines = [f"pairpod: sharing with {people.describe()}", f"pairpod: {user.announcement()}"]
    for link in links:
        lines.append(f"pairpod: {command_line(link.access, join_command(link.username, host, port))}")
    lines.append(
        "pairpod: controls (in the shared shell, or with "
        f"{CONTROL_ENV} set): pairpod ctl list | mint ro|rw | revoke LINK | kick ID"
    )
    return "\n".join(lines) + "\n"


async def run_pair(config: Config, options: PairOptions) -> int:
    """Serve the standing session until its shell ends (or SIGTERM/SIGINT); the exit code."""
    loop = asyncio.get_running_loop()
    # From the first moment: as a container's PID 1, a signal with no handler is ignored.
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        return await _serve(config, options, stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def _serve(config: Config, options: PairOptions, stop: asyncio.Event) -> int:
    user = prepare_user()
    gateway = Gateway(config, purposes=choose_join_only)
    await gateway.start()
    control = PairControl(gateway.sharing, user.name, user)
    status = None
    try:
        await control.start()
        standing = await Standing.start(
            config, user, env={CONTROL_ENV: str(control.path)}, respawn=options.respawn
        )
        session, links = share_standing(gateway.sharing, standing.terminal, user.name, options.people)
        host, port = gateway.sharing.public_address(config)
        sys.stdout.write(announcement(options.people, user, links, host, port))
        sys.stdout.flush()
        stopper = asyncio.ensure_future(stop.wait())
        stopper.add_done_callback(lambda done: None if done.cancelled() else standing.stop())
        try:
            status = await standing.run()
        finally:
            stopper.cancel()
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
