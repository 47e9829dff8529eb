"""A standing session: a shell on this machine, shared, owned by no SSH login.

:class:`Standing` starts the shell (:class:`~pairpod.pair.shell.StandingShell`)
and wraps it in an ownerless :class:`~pairpod.sharing.terminal.Terminal`:
joiners attach to :attr:`Standing.terminal` as to any shared session (late
joiners get the screen, read-only input is dropped, the smallest read-write
joiner sizes the PTY, joiners are told of each other). It knows nothing of
how joiners arrive: ``pairpod pair`` serves them itself, host mode through a
gateway.
"""

from __future__ import annotations

from collections.abc import Mapping

from pairpod.backends.base import ExitStatus
from pairpod.config import Config
from pairpod.log import fields, get_logger
from pairpod.pair.shell import StandingShell, describe_status
from pairpod.pair.user import ShellUser
from pairpod.sharing.terminal import Terminal

log = get_logger("pair")

#: What joiners are told when pairpod itself is stopped.
STOPPED = "pairpod was stopped; the shared session has ended"


class Standing:
    """A shell on a PTY of this machine in an ownerless shared Terminal."""

    def __init__(self, shell: StandingShell, terminal: Terminal) -> None:
        self.shell = shell
        self.terminal = terminal
        self._stopped = False

    @classmethod
    async def start(
        cls,
        config: Config,
        user: ShellUser,
        *,
        cols: int = 80,
        rows: int = 24,
        env: Mapping[str, str] | None = None,
        respawn: bool = False,
    ) -> Standing:
        """Start the shell as ``user``; ``env`` is added to its environment."""
        shell = await StandingShell.start(config, user, cols=cols, rows=rows, env=env, respawn=respawn)
        terminal = Terminal(
            shell,
            None,
            owner_name=f"user:{user.name}",
            cols=cols,
            rows=rows,
            viewer_backlog=config.sharing.viewer_backlog,
        )
        log.info("pair.shell_started", extra=fields(user=user.name, shell=user.shell, respawn=respawn))
        return cls(shell, terminal)

    def _farewell(self) -> str:
        status = self.shell.status
        if status is None or self._stopped:
            return STOPPED
        return f"the shell exited ({describe_status(status)}); the shared session has ended"

    async def run(self) -> ExitStatus | None:
        """Share the shell until it ends (every joiner is then told and let go).

        Returns the last shell's exit status, or None when the session was
        ended first (:meth:`stop`).
        """
        try:
            await self.terminal.run(self._farewell)
        finally:
            if self._stopped or self.shell.status is None:
                await self.shell.kill()
        return None if self._stopped else self.shell.status

    def stop(self, reason: str = STOPPED) -> None:
        """End the session now: joiners are told ``reason``; :meth:`run` returns."""
        self._stopped = True
        self.terminal.end(reason)
