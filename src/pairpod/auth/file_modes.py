"""Permission checks on secrets on disk, as OpenSSH's sshd does with StrictModes.

* A host key accessible by others is refused (by group too when it is the
  gateway user's own file): anyone on the machine who can read it can
  impersonate the gateway.
* An ``authorized_keys`` file, or the directory it is in, writable by group
  or others, or owned by someone other than root or the gateway's user, is
  refused: anyone who can write there can let themselves in.

``security.strict_modes: false`` turns both checks off (for file systems
that do not keep Unix modes). Each refusal is one line naming the file, its
mode and the fix.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_OPT_OUT = "or set security.strict_modes: false"


def host_key_problem(path: Path) -> str | None:
    """Why the host key at ``path`` must not be used (None: its modes are fine)."""
    info = os.stat(path)
    mode = stat.S_IMODE(info.st_mode)
    # As sshd: the owner's own key must be private to it. A key owned by root
    # and shared with the gateway's group (a Kubernetes Secret mounted 0440
    # with an fsGroup) may be group-readable, but never readable by others.
    if (info.st_uid == os.getuid() and mode & 0o077) or mode & 0o007:
        return (
            f"permissions {mode:04o} are too open: a host key must not be accessible "
            f"by others (chmod 600 {path}, {_OPT_OUT})"
        )
    return None


def authorized_keys_problem(path: Path) -> str | None:
    """Why the authorized_keys file at ``path`` must not be used (None: it may)."""
    for target, what in ((path, "file"), (path.parent, "directory")):
        info = os.stat(target)
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o022:
            return (
                f"{what} {target} is writable by group or others (mode {mode:04o}): "
                f"anyone could add a key (chmod go-w {target}, {_OPT_OUT})"
            )
        if info.st_uid not in (0, os.getuid()):
            return (
                f"{what} {target} is owned by uid {info.st_uid}, not by root or the "
                f"gateway's user ({_OPT_OUT})"
            )
    return None
