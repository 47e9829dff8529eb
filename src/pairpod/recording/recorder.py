"""The gateway's recorder: decides what a channel's recording is and where it goes."""

from __future__ import annotations

import itertools
import time

from pairpod.backends.base import ProcessSpec
from pairpod.backends.observed import ProcessObserver
from pairpod.config import Config
from pairpod.recording import asciicast
from pairpod.recording.files import cast_name, day_folder
from pairpod.recording.session import AuditRecord, CastRecording, SessionInfo
from pairpod.recording.writer import RecordingWriter


class Recorder:
    """Makes the observer that records one channel (or none when recording is off)."""

    def __init__(self, config: Config) -> None:
        self._settings = config.recording
        self._shell = _shell_of(config)
        self._writer = RecordingWriter()
        self._seq = itertools.count(1)

    @property
    def enabled(self) -> bool:
        """Whether ``recording.dir`` is set."""
        return self._settings.dir is not None

    def observer(self, spec: ProcessSpec, info: SessionInfo) -> ProcessObserver | None:
        """An asciicast recording for a PTY session, an audit record otherwise."""
        root = self._settings.dir
        if root is None:
            return None
        now = time.time()
        if spec.pty is None or spec.subsystem is not None:
            kind = "subsystem" if spec.subsystem else "exec" if spec.command else "shell"
            return AuditRecord(
                self._writer, root, info=info, kind=kind, command=spec.subsystem or spec.command
            )
        number = next(self._seq)  # in the file name, and how the worker process knows it
        path = day_folder(root, now) / cast_name(now, info.user, info.conn_id, number)
        env = {"TERM": spec.env.get("TERM", spec.pty.term), "SHELL": self._shell}
        title = f"{info.user} ({info.conn_id})"
        metadata = {
            "user": info.user,
            "connection": info.conn_id,
            "remote": info.remote_addr,
            "environment": info.environment,
            "command": spec.command,
        }
        header = asciicast.header(
            spec.pty.cols, spec.pty.rows, int(now), env=env, title=title, metadata=metadata
        )
        return CastRecording(
            self._writer,
            number,
            path,
            header,
            info=info,
            max_bytes=self._settings.max_bytes,
            record_input=self._settings.input,
            buffer=self._settings.buffer,
        )

    def close(self, timeout: float) -> bool:
        """Write what is queued (up to ``timeout`` seconds); ``True`` when all was written."""
        return self._writer.close(timeout)


def _shell_of(config: Config) -> str:
    if config.backend == "docker":
        return config.docker.shell[0]
    if config.backend == "kubernetes":
        return config.kubernetes.shell[0]
    return config.local.shell[0]
