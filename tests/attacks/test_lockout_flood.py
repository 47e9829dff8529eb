"""Parallel wrong passwords: the lockout holds and the flood costs the attacker, not everyone."""

from __future__ import annotations

import asyncio

import asyncssh

from pairpod.auth import hash_password
from tests.attacks.conftest import ServeGateway, assert_probe_login_prompt

# This is about the lockout and the password checks: no pre-auth limit in the way.
from tests.support.gateway import NO_ADMISSION_LIMITS, GatewayProcess


async def wrong_password(gateway: GatewayProcess, user: str, source: str) -> BaseException | None:
    """One password login from ``source`` that must be refused; the error it ended with."""
    try:
        conn = await asyncssh.connect(
            "127.0.0.1",
            gateway.port,
            username=user,
            password="wrong",
            local_addr=(source, 0),
            client_keys=None,
            preferred_auth="password",
            known_hosts=None,
            agent_path=None,
            config=None,
        )
    except (asyncssh.PermissionDenied, asyncssh.DisconnectError, OSError) as error:
        return error
    conn.close()
    raise AssertionError(f"{user} logged in with a wrong password")


async def test_two_hundred_parallel_wrong_passwords_verify_at_most_the_limit(serve: ServeGateway) -> None:
    gateway = serve(
        {"ssh": NO_ADMISSION_LIMITS, "auth": {"users": {"carol": {"password_hash": hash_password("right")}}}}
    )
    flood = asyncio.gather(*(wrong_password(gateway, "carol", "127.0.0.2") for _ in range(200)))
    # A key login from another address meanwhile.
    await asyncio.to_thread(assert_probe_login_prompt, gateway)
    errors = await flood
    assert all(isinstance(e, asyncssh.PermissionDenied) for e in errors), set(map(type, errors))
    log = gateway.log()
    verified = log.count('reason="wrong password"')
    print(f"hashes verified: {verified} of 200 attempts")
    assert 1 <= verified <= 10  # auth.lockout.failures
    assert "auth.lockout" in log


async def test_a_password_flood_from_many_addresses_waits_in_a_bounded_queue(serve: ServeGateway) -> None:
    gateway = serve(
        {
            "ssh": NO_ADMISSION_LIMITS,
            "auth": {
                "password_checks": {"workers": 1, "queue": 2},
                "users": {"carol": {"password_hash": hash_password("right")}},
            },
        }
    )
    # 100 addresses, one unknown user each: no lockout applies, every attempt wants a hash.
    flood = asyncio.gather(*(wrong_password(gateway, f"user{n}", f"127.0.2.{n}") for n in range(1, 101)))
    await asyncio.to_thread(assert_probe_login_prompt, gateway)
    errors = await flood
    assert all(isinstance(e, asyncssh.PermissionDenied) for e in errors), set(map(type, errors))
    log = gateway.log()
    busy = log.count("too many password checks at once")
    hashed = log.count('reason="unknown user or no password set"')
    print(f"hashed {hashed}, refused at once {busy}")
    assert busy + hashed == 100
