"""Live terminal sharing: share tokens, the screen model, and the shared Terminal.

* :mod:`pairpod.sharing.tokens`: join links (``ro-<token>`` / ``rw-<token>``),
  who may join, and the registry of shared sessions.
* :mod:`pairpod.sharing.screen`: the screen model that gives late joiners the
  current screen, kept off the owner's hot path.
* :mod:`pairpod.sharing.terminal`: the Terminal between a PTY program and its
  owner and viewers (fan-out, flow control, size policy, notices, kick, end).
* :mod:`pairpod.sharing.owner`: the owner's channel behind the SSH layer's relay seam.
* :mod:`pairpod.sharing.service`: who shares, the registry, the owner's controls.

Nothing here speaks SSH: the SSH layer (:mod:`pairpod.ssh`) attaches channels.
"""

from __future__ import annotations

from pairpod.sharing.screen import ScreenModel
from pairpod.sharing.terminal import (
    KICKED,
    OWNER_LEFT,
    SESSION_ENDED,
    Participant,
    ParticipantInfo,
    Sink,
    Terminal,
    TerminalEnded,
)
from pairpod.sharing.tokens import (
    INVALID_SESSION_MESSAGE,
    Access,
    SharedSession,
    ShareLink,
    ShareRegistry,
    looks_like_join_username,
    normalize_identity,
    parse_share_with,
    rejection_delay,
    share_banner,
)

__all__ = [
    "INVALID_SESSION_MESSAGE",
    "KICKED",
    "OWNER_LEFT",
    "SESSION_ENDED",
    "Access",
    "Participant",
    "ParticipantInfo",
    "ScreenModel",
    "ShareLink",
    "ShareRegistry",
    "SharedSession",
    "Sink",
    "Terminal",
    "TerminalEnded",
    "looks_like_join_username",
    "normalize_identity",
    "parse_share_with",
    "rejection_delay",
    "share_banner",
]
