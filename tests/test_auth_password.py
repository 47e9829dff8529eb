"""Password hashes: argon2id made by pairpod, argon2 and bcrypt hashes verified."""

from __future__ import annotations

import argon2
import bcrypt
import pytest

from pairpod.auth.password import (
    dummy_verify,
    dummy_verify_async,
    hash_kind,
    hash_password,
    verify_password,
    verify_password_async,
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


async def test_async_wrappers() -> None:
    stored = hash_password("pw")
    assert await verify_password_async(stored, "pw")
    assert not await verify_password_async(stored, "nope")
    assert await dummy_verify_async("pw") is False
