"""Typed errors: each carries a short line for the SSH user and detail for the operator."""

from __future__ import annotations

import os


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


def cannot_listen(key: str, address: str, error: OSError) -> ConfigError:
    """The error for a listener (config ``key``) that could not listen on ``address``."""
    # The system's short reason ("Address already in use"), not the event loop's wrapping sentence.
    reason = os.strerror(error.errno) if error.errno else str(error)
    return ConfigError(f"{key}: cannot listen on {address}: {reason}")


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


class EnvironmentStartFailed(BackendError):
    """The environment (container, pod) could not be started; the reason is in the message."""

    user_message = "environment failed to start"


class ImageUnavailable(EnvironmentStartFailed):
    """The image is not there and the pull policy forbids fetching it."""

    user_message = "environment image not available"


class ImagePullFailed(ImageUnavailable):
    """Fetching the image failed (registry unreachable, no such image, no access)."""

    user_message = "could not fetch the environment image"


class EnvironmentExited(EnvironmentStartFailed):
    """The environment stopped right after it started, or under a connection."""


class StartTimeout(BackendError):
    """Preparing the environment or a process took longer than the start timeout."""

    user_message = "environment did not start in time"


class EnvironmentGone(BackendError):
    """The connection's environment is no longer there to run processes in."""

    user_message = "environment is gone"
