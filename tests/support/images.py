"""Test images, built locally and never pulled.

Two images, each tagged by a hash of its recipe so that a changed recipe gives
a new tag and an unchanged one costs nothing on the next run:

- ``busybox_image()``: a rootfs holding only Debian's static ``/bin/busybox``
  with a symlink per applet (sh, cat, sleep, kill, env, stty, ...). Small, has
  ``/bin/sh`` but no bash and no sftp-server: the "minimal image" case.
- ``debian_image()``: a Debian bookworm minbase rootfs made by debootstrap with
  bash, openssh-sftp-server and procps, and what the pair image needs
  (python3, sudo, tmux, git, an editor, ...). debootstrap is slow, so its tarball is
  cached under ``/var/cache/pairpod-test/`` keyed by the recipe, and a missing
  image (e.g. after the engine's storage was wiped) is re-imported from it.

Both functions return the image tag and build the image when it is missing.
They are safe to call from several pytest processes at once: a build holds an
exclusive file lock and the existence check is repeated under it.

The Docker CLI is used here on purpose: tests may observe and prepare through
it, the gateway itself never does.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

CACHE_DIR = Path(os.environ.get("PAIRPOD_TEST_CACHE", "/var/cache/pairpod-test"))
BUSYBOX_PATH = Path("/bin/busybox")

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_INCLUDE = (
    "bash",
    "openssh-sftp-server",
    "procps",
    # What the pair image (deploy/pair/Dockerfile) needs, so that building it
    # on this base installs no package: pairpod's Python, and a pairing session's tools.
    "python3",
    "python3-venv",
    "sudo",
    "tmux",
    "git",
    "vim-tiny",
    "openssh-client",
    "less",
    "curl",
)

# Bump when the way an image is assembled changes in a way its inputs don't show.
_RECIPE_VERSION = "1"

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Applets that would make the image look like something it is not, or that a
# test relies on being absent.
_SKIPPED_APPLETS = frozenset({"busybox", "bash", "linuxrc", "init"})

_ACCOUNTS = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    "tester:x:1000:1000:tester:/home/tester:/bin/sh\n"
)
_GROUP = "root:x:0:\nnogroup:x:65534:\ntester:x:1000:\n"


class ImageBuildError(RuntimeError):
    """A test image could not be built; the message says which step failed."""


def busybox_image() -> str:
    """The tag of the busybox-static test image, building it when missing."""
    busybox = BUSYBOX_PATH.read_bytes()
    applets = _busybox_applets()
    recipe = {
        "kind": "busybox",
        "version": _RECIPE_VERSION,
        "busybox_sha256": hashlib.sha256(busybox).hexdigest(),
        "applets": applets,
        "accounts": _ACCOUNTS,
        "group": _GROUP,
    }
    tag = f"pairpod-test/busybox:{_recipe_hash(recipe)}"
    with _locked("busybox"):
        if not _image_exists(tag):
            _docker_import(_busybox_rootfs(busybox, applets), tag, cmd=["/bin/sh"])
    return tag


def debian_image() -> str:
    """The tag of the Debian minbase test image (bash, sftp-server, procps)."""
    recipe = {
        "kind": "debian",
        "version": _RECIPE_VERSION,
        "suite": DEBIAN_SUITE,
        "variant": "minbase",
        "include": sorted(DEBIAN_INCLUDE),
        "mirror": DEBIAN_MIRROR,
        "passwd_extra": "tester",
    }
    digest = _recipe_hash(recipe)
    tag = f"pairpod-test/debian:{digest}"
    with _locked("debian"):
        if not _image_exists(tag):
            tarball = CACHE_DIR / f"debian-{digest}.tar"
            if not tarball.exists():
                _debootstrap_tarball(tarball)
            _docker_import(tarball, tag, cmd=["/bin/bash"])
    return tag


REPO = Path(__file__).resolve().parents[2]
PAIR_DOCKERFILE = REPO / "deploy" / "pair" / "Dockerfile"
# How many dependencies the image's Python may need beyond this machine's.
_MISSING_WHEELS = 5


def pair_image() -> str:
    """The pair image (deploy/pair/Dockerfile) built on the Debian test image, offline.

    pairpod and its dependencies go in as wheels built from this checkout
    with this machine's pip (its package registries and cache); the base
    already has every package the Dockerfile wants, so the build runs
    without a network. Tagged by the base, the Dockerfile and the sources.
    """
    base = debian_image()
    sources = sorted(
        path for path in [REPO / "pyproject.toml", REPO / "README.md", *(REPO / "src").rglob("*.py")]
    )
    recipe = {
        "kind": "pair",
        "version": _RECIPE_VERSION,
        "base": base,
        "dockerfile": PAIR_DOCKERFILE.read_text(),
        "sources": {
            str(path.relative_to(REPO)): hashlib.sha256(path.read_bytes()).hexdigest() for path in sources
        },
    }
    tag = f"pairpod-test/pair:{_recipe_hash(recipe)}"
    with _locked("pair"):
        if not _image_exists(tag):
            _build_pair_image(base, tag)
    return tag


def _build_pair_image(base: str, tag: str) -> None:
    with tempfile.TemporaryDirectory(prefix="pair-image-") as scratch:
        context = Path(scratch)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, context / name)
        shutil.copytree(
            REPO / "src", context / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
        )
        (context / "deploy" / "pair").mkdir(parents=True)
        shutil.copy2(PAIR_DOCKERFILE, context / "deploy" / "pair" / "Dockerfile")
        wheels = context / "deploy" / "pair" / "wheels"
        pip = [sys.executable, "-m", "pip"]
        _run([*pip, "wheel", "--quiet", "--wheel-dir", str(wheels), str(context)], what="pip wheel")
        build = ["docker", "build", "--network", "none", "--build-arg", f"BASE={base}"]
        build += ["-f", str(context / "deploy" / "pair" / "Dockerfile"), "-t", tag, str(context)]
        # The wheels are resolved for this machine's Python; the image's may need a
        # dependency more (redis wants async-timeout below 3.11.3, Debian 12 has
        # 3.11.2): fetch what its pip names as missing, and build again.
        for _ in range(_MISSING_WHEELS):
            result = subprocess.run(build, capture_output=True, text=True, check=False)
            if result.returncode == 0:
                return
            output = result.stdout + result.stderr
            missing = re.search(r"No matching distribution found for ([^;\s]+)", output)
            if missing is None:
                raise ImageBuildError(f"docker build {tag} failed: {output[-2000:]}")
            download = [*pip, "download", "--quiet", "--no-deps", "--only-binary=:all:"]
            _run(
                [*download, "--dest", str(wheels), missing.group(1)], what=f"pip download {missing.group(1)}"
            )
        raise ImageBuildError(f"docker build {tag}: still missing wheels after {_MISSING_WHEELS} rounds")


# --- helpers ---------------------------------------------------------------


def _recipe_hash(recipe: dict[str, object]) -> str:
    text = json.dumps(recipe, sort_keys=True).encode()
    return hashlib.sha256(text).hexdigest()[:16]


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f"{name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _run(argv: list[str], *, stdin: bytes | Path | None = None, what: str) -> bytes:
    try:
        if isinstance(stdin, Path):
            with stdin.open("rb") as stdin_file:
                result = subprocess.run(argv, stdin=stdin_file, capture_output=True, check=False)
        else:
            result = subprocess.run(argv, input=stdin, capture_output=True, check=False)
    except FileNotFoundError as error:
        raise ImageBuildError(f"{what}: {argv[0]} is not installed ({error})") from None
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip()[-2000:]
        raise ImageBuildError(f"{what} failed (exit {result.returncode}): {detail}")
    return result.stdout


def _image_exists(tag: str) -> bool:
    result = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", tag],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def _docker_import(tar_bytes: bytes | Path, tag: str, *, cmd: list[str]) -> None:
    changes = [f"ENV PATH={_PATH}", f"CMD {json.dumps(cmd)}"]
    argv = ["docker", "import"]
    for change in changes:
        argv += ["--change", change]
    argv += ["-", tag]
    _run(argv, stdin=tar_bytes, what=f"docker import {tag}")


def _busybox_applets() -> list[str]:
    out = _run([str(BUSYBOX_PATH), "--list"], what="busybox --list")
    return sorted(
        name for name in out.decode().split() if name and "/" not in name and name not in _SKIPPED_APPLETS
    )


def _busybox_rootfs(busybox: bytes, applets: list[str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:

        def add_dir(path: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(path)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            tar.addfile(info)

        def add_file(path: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))

        for directory in (
            "bin",
            "etc",
            "root",
            "home",
            "usr",
            "usr/bin",
            "var",
            "dev",
            "proc",
            "sys",
        ):
            add_dir(directory, 0o700 if directory == "root" else 0o755)
        add_dir("tmp", 0o1777)
        add_dir("home/tester")
        add_file("bin/busybox", busybox, 0o755)
        for applet in applets:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
        add_file("etc/passwd", _ACCOUNTS.encode())
        add_file("etc/group", _GROUP.encode())
    return buffer.getvalue()


def _debootstrap_tarball(target: Path) -> None:
    """Run debootstrap into a scratch directory and cache the result as a tarball."""
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    scratch = Path(tempfile.mkdtemp(prefix="debian-rootfs-", dir=CACHE_DIR))
    try:
        rootfs = scratch / "rootfs"
        _run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(DEBIAN_INCLUDE)}",
                DEBIAN_SUITE,
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            what="debootstrap",
        )
        # A non-root account, for tests of the ``user`` setting.
        _run(
            [
                "chroot",
                str(rootfs),
                "useradd",
                "--create-home",
                "--uid",
                "1000",
                "--shell",
                "/bin/bash",
                "tester",
            ],
            what="useradd tester",
        )
        # The package cache is dead weight in an image.
        for leftover in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            leftover.unlink()
        partial = target.with_suffix(".tar.partial")
        _run(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(partial), "."],
            what="tar rootfs",
        )
        # Rename last, so an interrupted build never leaves a tarball that looks complete.
        partial.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    # Warm the cache ahead of a test run: ``python -m tests.support.images``.
    print(busybox_image())
    print(debian_image())
    print(pair_image())
