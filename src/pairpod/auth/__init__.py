"""Authentication: who may log in, as whom, and with which environment.

The server uses :class:`Authenticator` (one per gateway) and the
:class:`ConnectionAuth` it makes for each connection, whose methods mirror
AsyncSSH's ``SSHServer`` auth callbacks. The rest are the small
authenticators behind it.
"""

from pairpod.auth.chain import PASSWORD_CHALLENGE, Authenticator, ConnectionAuth
from pairpod.auth.password import hash_password, verify_password
from pairpod.auth.result import AuthResult, LoginPermissions, MetadataValue, Outcome, Verdict

__all__ = [
    "PASSWORD_CHALLENGE",
    "AuthResult",
    "Authenticator",
    "ConnectionAuth",
    "LoginPermissions",
    "MetadataValue",
    "Outcome",
    "Verdict",
    "hash_password",
    "verify_password",
]
