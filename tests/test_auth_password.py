"""Password hashes: argon2id made by pairpod, argon2 and bcrypt hashes verified."""

from __future__ import annotations

import asyncio

import argon2
import bcrypt
import pytest

from pairpod.auth.password import (
    ChecksBusy,
    PasswordChecks,
    dummy_verify,
    hash_kind,
    hash_password,
    verify_password,
)


def test_hash_is_argon2id_and_verifies() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("$argon2id$")
    assert hash_kind(stored) == "argon2"
    assert verify_password(stored, "correct horse")
    assert not verify_password(stored, "correct horse ")
    assert not verify_password(stored, "")
    assert hash_password("correct horse") != stored  # salted


def test_other_argon2_variants_verify() -> None:
    stored = argon2.PasswordHasher(type=argon2.Type.I).hash("pw")
    assert stored.startswith("$argon2i$")
    assert verify_password(stored, "pw") and not verify_password(stored, "px")


@pytest.mark.parametrize("prefix", [b"2a", b"2b"])
def test_bcrypt_hashes_verify(prefix: bytes) -> None:
    stored = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4, prefix=prefix)).decode()
    assert hash_kind(stored) == "bcrypt"
    assert verify_password(stored, "s3cret")
    assert not verify_password(stored, "s3cres")


def test_bcrypt_long_password_is_cut_at_72_bytes_like_the_tools_that_made_it() -> None:
    long = "x" * 100
    stored = bcrypt.hashpw(long.encode()[:72], bcrypt.gensalt(rounds=4)).decode()
    assert verify_password(stored, long)
    assert verify_password(stored, "x" * 72)
    assert not verify_password(stored, "x" * 71)


@pytest.mark.parametrize(
    "stored",
    ["", "plaintext", "$argon2id$v=19$garbage", "$2b$04$short", "$1$md5crypt$abc", "$6$salt$sha"],
)
def test_unreadable_hashes_never_verify(stored: str) -> None:
    assert not verify_password(stored, "plaintext")
    assert not verify_password(stored, "")


def test_hash_kind_rejects_unknown_schemes() -> None:
    assert hash_kind("$6$salt$hash") is None
    assert hash_kind("$2b$" + "x" * 10) is None


def test_dummy_verify_is_always_false() -> None:
    assert dummy_verify("anything") is False
    assert dummy_verify("") is False


async def test_checks_pool_verifies_in_threads() -> None:
    checks = PasswordChecks(workers=1, queue=0)
    stored = hash_password("pw")
    try:
        assert await checks.verify(stored, "pw")
        assert not await checks.verify(stored, "nope")
        assert await checks.dummy("pw") is False
    finally:
        checks.close()


async def test_checks_pool_refuses_past_its_places_at_once() -> None:
    checks = PasswordChecks(workers=1, queue=1)
    stored = hash_password("pw")
    try:
        running = [asyncio.ensure_future(checks.verify(stored, "nope")) for _ in range(2)]
        await asyncio.sleep(0)  # both have taken their place
        with pytest.raises(ChecksBusy):
            await checks.verify(stored, "nope")
        assert await asyncio.gather(*running) == [False, False]
    finally:
        checks.close()
