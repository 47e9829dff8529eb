"""The OS user the standing shell runs as.

As root (a container or a pod), the shell runs as the user ``pair``: created
when missing (a home, the system's bash or else sh), given the password in
``USER_PASSWORD`` or a random one, and sudo rights to root where sudo is
installed. Run as anyone else, the shell is that user's own, with no
password to hand out.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pairpod.errors import ConfigError
from pairpod.log import fields, get_logger

log = get_logger("pair")

#: The shell user made when pairpod runs as root.
PAIR_USER = "pair"
#: Where the shell user's password comes from, when set (a Kubernetes Secret, ``docker run -e``).
PASSWORD_ENV = "USER_PASSWORD"  # noqa: S105 - a variable's name, not a password
# Bytes of randomness of a generated password: 43 characters of base64url.
_PASSWORD_BYTES = 32
_SUDOERS = Path("/etc/sudoers.d")
_SHELLS = ("/bin/bash", "/bin/sh")


@dataclass(frozen=True)
class ShellUser:
    """Who the standing shell runs as, and the password to print (none when not root)."""

    name: str
    shell: str
    password: str | None = field(default=None, repr=False)

    def announcement(self) -> str:
        """The printed lines (after ``pairpod: ``) that tell joiners whom the shell runs as."""
        lines = ["user to share session:", f"   username: '{self.name}'"]
        if self.password is not None:
            lines.append(f"   password: '{self.password}'")
        return "\n".join(lines)


def _login_shell() -> str:
    return next((shell for shell in _SHELLS if os.access(shell, os.X_OK)), "/bin/sh")


def new_password() -> str:
    """A random password of 43 characters (256 bits from :mod:`secrets`)."""
    return secrets.token_urlsafe(_PASSWORD_BYTES)


def _run(argv: list[str], stdin: str | None = None) -> None:
    try:
        subprocess.run(argv, input=stdin, text=True, check=True, capture_output=True)
    except FileNotFoundError:
        raise ConfigError(f"pair: cannot set up the shell user: {argv[0]} is not installed") from None
    except subprocess.CalledProcessError as error:
        detail = (error.stderr or "").strip().splitlines()
        raise ConfigError(
            f"pair: cannot set up the shell user: {argv[0]} failed: {detail[-1] if detail else error}"
        ) from None


def _create(name: str, shell: str) -> None:
    if shutil.which("useradd"):
        _run(["useradd", "--create-home", "--shell", shell, name])
    else:  # busybox and Alpine
        _run(["adduser", "-D", "-s", shell, name])
    log.info("pair.user_created", extra=fields(user=name, shell=shell))


def _grant_sudo(name: str) -> None:
    """Let ``name`` sudo to root with its password, where sudo is installed."""
    if shutil.which("sudo") is None or not _SUDOERS.is_dir():
        log.info("pair.no_sudo", extra=fields(user=name, reason=f"no sudo command or no {_SUDOERS}"))
        return
    rule = _SUDOERS / name
    rule.write_text(f"{name} ALL=(ALL:ALL) ALL\n")
    rule.chmod(0o440)


def prepare_user(env: Mapping[str, str] = os.environ) -> ShellUser:
    """The standing shell's user: ``pair`` (made ready) as root, else the current user."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.getuid())
        if env.get(PASSWORD_ENV):
            log.info("pair.password_ignored", extra=fields(reason="not root: the shell is your own"))
        # A service account's nologin or false is no shell to share: the system's instead.
        usable = entry.pw_shell and not entry.pw_shell.endswith(("nologin", "false"))
        return ShellUser(entry.pw_name, entry.pw_shell if usable else _login_shell())
    given = env.get(PASSWORD_ENV)
    if given and not given.isprintable():
        # chpasswd reads user:password lines: a newline in it would start another
        # user's line (root's), and a trailing one would make the printed password wrong.
        raise ConfigError(f"pair: {PASSWORD_ENV} must be one line of printable characters")
    try:
        entry = pwd.getpwnam(PAIR_USER)
    except KeyError:
        _create(PAIR_USER, _login_shell())
        entry = pwd.getpwnam(PAIR_USER)
    password = given or new_password()
    _run(["chpasswd"], stdin=f"{PAIR_USER}:{password}\n")
    _grant_sudo(PAIR_USER)
    shell = entry.pw_shell if entry.pw_shell and os.access(entry.pw_shell, os.X_OK) else _login_shell()
    return ShellUser(PAIR_USER, shell, password)
