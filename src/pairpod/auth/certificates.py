"""OpenSSH user certificates signed by a CA listed in ``auth.trusted_user_ca_keys``.

Who checks what:

- AsyncSSH checks the certificate's signature, type, validity window,
  ``source-address``, and enforces ``force-command`` and the ``permit-*``
  extensions on the channels it opens.
- pairpod checks that the signing CA is trusted, and that the certificate
  names the login as one of its principals. That second check cannot be left
  to AsyncSSH: it accepts a certificate with *no* principals for any
  username, where OpenSSH's sshd refuses one ("Certificate lacks principal
  list"). AsyncSSH hands the principals only to an authorized-keys object, so
  :class:`PrincipalRecorder` (set with ``conn.set_authorized_keys``) notes
  them just before AsyncSSH asks ``validate_ca_key``, in the same
  synchronous step, and :meth:`TrustedCAs.check` reads them back.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh.public_key import decode_ssh_certificate

from pairpod.auth.keys import AuthorizedKey, KeyFile, KeyParseError, parse_key_line
from pairpod.log import fields, get_logger

log = get_logger("auth.certificates")


def parse_ca_keys(text: str, origin: str) -> list[AuthorizedKey]:
    """Parse a CA keys file (sshd's TrustedUserCAKeys format): one key per line.

    A leading ``cert-authority`` marker is accepted (as copied from an
    authorized_keys line); any other option makes the line unusable, since a
    restriction such as ``from=`` would otherwise be silently dropped.
    """
    entries: list[AuthorizedKey] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.lower().startswith("cert-authority "):
            stripped = stripped[len("cert-authority ") :].lstrip()
        try:
            entries.append(parse_key_line(stripped, f"{origin}:{number}", allow_options=False))
        except KeyParseError as error:
            log.warning("keys.line_skipped", extra=fields(origin=origin, line=number, reason=str(error)))
    return entries


def check_principals(principals: Sequence[str] | None, username: str) -> str | None:
    """Why a certificate with ``principals`` may not log in as ``username``, or None."""
    if principals is None:
        return "certificate principals unknown"
    if not principals:
        return "certificate lacks a principal list"
    if username not in principals:
        return f"certificate principals {list(principals)[:8]} do not include {username!r}"
    return None


class TrustedCAs:
    """The CA keys file, read again when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = KeyFile(path, parse_ca_keys)

    def find(self, key: asyncssh.SSHKey) -> AuthorizedKey | None:
        """The entry of ``key`` if it is a trusted CA."""
        blob = key.public_data
        for entry in self._file.entries():
            if entry.blob == blob:
                return entry
        return None


class PrincipalRecorder(asyncssh.SSHAuthorizedKeys):
    """An authorized-keys object that matches nothing and reports certificate principals.

    AsyncSSH consults ``validate`` first for every key and certificate; for a
    certificate it passes the principals. Answering None sends AsyncSSH on
    to the server's ``validate_public_key`` / ``validate_ca_key`` callbacks,
    where pairpod decides.
    """

    def __init__(self, report: Callable[[bytes, tuple[str, ...]], None]) -> None:
        super().__init__()
        self._report = report

    def validate(
        self,
        key: asyncssh.SSHKey,
        client_host: str,
        client_addr: str,
        cert_principals: Sequence[str] | None = None,
        ca: bool = False,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        """Note a certificate's principals; never match."""
        if ca:
            self._report(key.public_data, tuple(cert_principals or ()))
        return None


def record_offered_keys(conn: Any, report: Callable[[bytes], None]) -> None:
    """Have ``report`` called with the blob of every key or certificate the client offers.

    AsyncSSH gives the server's ``validate_ca_key`` only a certificate's
    signing key, but a ContainerSSH-style webhook wants the certificate itself
    (ContainerSSH sends its authorized_keys line). The connection's
    ``validate_public_key`` sees the blob first, so it is wrapped, on this
    one connection object, to note the blob and go on unchanged.
    """
    original = getattr(conn, "validate_public_key", None)
    if original is None:
        return

    async def validate_public_key(username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
        report(key_data)
        return bool(await original(username, key_data, msg, signature))

    conn.validate_public_key = validate_public_key


def certificate_line(blob: bytes | None, ca_key: asyncssh.SSHKey) -> str | None:
    """The authorized_keys line of the certificate ``blob`` if ``ca_key`` signed it, else None."""
    if blob is None:
        return None
    try:
        cert = decode_ssh_certificate(blob)
    except (asyncssh.KeyImportError, ValueError):
        return None
    signer = getattr(cert, "signing_key", None)
    if signer is None or signer.public_data != ca_key.public_data:
        return None
    return f"{cert.algorithm.decode()} {base64.b64encode(blob).decode('ascii')}"
