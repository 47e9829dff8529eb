"""Session recordings (asciicast v2) and audit lines of non-PTY channels."""

from pairpod.recording.recorder import Recorder
from pairpod.recording.session import SessionInfo

__all__ = ["Recorder", "SessionInfo"]
