"""Typed errors: each carries a short line for the SSH user and detail for the operator."""

from __future__ import annotations


class PairpodError(Exception):
    """Base of pairpod's errors.

    ``user_message`` is the one short line an SSH user may see; the exception's
    own text (``operator_message``) is the detail that goes to the log.
    """

    user_message = "internal error"

    def __init__(self, operator_message: str, *, user_message: str | None = None) -> None:
        super().__init__(operator_message)
        if user_message is not None:
            self.user_message = user_message

    @property
    def operator_message(self) -> str:
        """The detail for the log."""
        return str(self)


class ConfigError(PairpodError):
    """The configuration is invalid; the message names the key path and the problem."""

    user_message = "gateway configuration error"


class BackendError(PairpodError):
    """A backend could not provide an environment or run a process."""

    user_message = "backend error"


class BackendUnavailable(BackendError):
    """The backend's engine or API cannot be reached at the moment."""

    user_message = "backend unavailable, try again later"


class CommandNotFound(BackendError):
    """The program to run does not exist in the environment."""

    user_message = "command not found"


class SubsystemUnavailable(BackendError):
    """The environment has no program serving the requested subsystem."""

    user_message = "subsystem not available in this environment"
