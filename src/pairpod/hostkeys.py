"""Host keys: load them, or generate an ed25519 key (mode 0600) where one is missing."""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh

from pairpod.auth.file_modes import host_key_problem
from pairpod.errors import ConfigError
from pairpod.log import fields, get_logger

log = get_logger("hostkeys")


def _generate(path: Path) -> asyncssh.SSHKey:
    key = asyncssh.generate_private_key("ssh-ed25519")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Create with 0600 from the start: the key is never readable by others.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.export_private_key())
    path.with_name(path.name + ".pub").write_bytes(key.export_public_key())
    log.info("hostkey.generated", extra=fields(path=str(path), fingerprint=key.get_fingerprint()))
    return key


def load_host_keys(paths: list[Path], *, strict_modes: bool = True) -> list[asyncssh.SSHKey]:
    """Load every configured host key, generating the missing ones.

    With ``strict_modes`` a key readable by group or others is refused.
    """
    keys = []
    for index, path in enumerate(paths):
        where = f"host_keys[{index}]: {path}"
        try:
            if not path.exists():
                keys.append(_generate(path))
                continue
            problem = host_key_problem(path) if strict_modes else None
            if problem is not None:
                raise ConfigError(f"{where}: {problem}")
            keys.append(asyncssh.read_private_key(path))
        except PermissionError as error:
            raise ConfigError(f"{where}: cannot read: {error.strerror}") from None
        except OSError as error:
            raise ConfigError(f"{where}: {error.strerror or error}") from None
        except (ValueError, asyncssh.KeyImportError) as error:
            raise ConfigError(f"{where}: not a valid private key ({error})") from None
    return keys


def restrict_algorithms(keys: list[asyncssh.SSHKey], algorithms: list[str]) -> list[asyncssh.SSHKeyPair]:
    """The host keys as key pairs offering only the signature ``algorithms`` allowed.

    An RSA key can sign with SHA-1 (``ssh-rsa``) or SHA-2; the server offers
    each of a key's algorithms that ``ssh.host_key_algorithms`` names. A key
    left with none cannot be used: that is a configuration error.
    """
    allowed = [name.encode() for name in algorithms]
    pairs = list(asyncssh.load_keypairs(keys))
    for index, pair in enumerate(pairs):
        offered = [alg for alg in pair.host_key_algorithms if alg in allowed]
        if not offered:
            raise ConfigError(
                f"host_keys[{index}]: a {pair.algorithm.decode()} key can sign only with "
                f"{b', '.join(pair.host_key_algorithms).decode()}, none of them in "
                "ssh.host_key_algorithms"
            )
        pair.host_key_algorithms = offered
    return pairs
