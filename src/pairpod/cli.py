"""The command line: ``pairpod serve | pair | ctl | admin | check-config | hash-password | demo-setup``."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml

from pairpod import __version__
from pairpod.config import Config, dump_config, load_config, parse_listen
from pairpod.errors import ConfigError, PairpodError
from pairpod.eventloop import LOOP_CHOICES, close_on_exec_above_stdio, loop_name
from pairpod.eventloop import run as run_on_loop
from pairpod.log import fields, get_logger, setup_logging

log = get_logger("cli")

EXIT_CONFIG = 2

T = TypeVar("T")


def _fail(message: str, code: int = EXIT_CONFIG) -> None:
    click.echo(f"pairpod: {message}", err=True)
    sys.exit(code)


def _cli_overrides(listen: str | None, backend: str | None, event_loop: str | None = None) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    if event_loop is not None:
        overrides["event_loop"] = event_loop
    if listen is not None:
        try:
            parse_listen(listen)
        except ValueError as error:
            _fail(f"--listen: {error}")
        overrides["listen"] = listen
    if backend is not None:
        overrides["backend"] = backend
    return overrides


#: ``serve`` and ``pair`` alike: the loop they run on.
event_loop_option = click.option(
    "--event-loop",
    type=click.Choice(list(LOOP_CHOICES)),
    help="asyncio's own loop or uvloop (overrides the config's event_loop).",
)


def _run_on_configured_loop(main: Callable[[], Coroutine[Any, Any, T]], config: Config) -> T:
    """Run ``main()`` on the config's event loop (ConfigError: that loop is missing)."""
    return run_on_loop(_on_loop(main), config.event_loop)


async def _on_loop(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    # Before anything is spawned: uvloop ignores close_fds (see pairpod.eventloop).
    sealed = close_on_exec_above_stdio()
    log.info("gateway.event_loop", extra=fields(loop=loop_name(asyncio.get_running_loop()), sealed=sealed))
    return await main()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pairpod")
def main() -> None:
    """pairpod: an SSH gateway that gives every connection a fresh environment."""


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="YAML config file (see examples/pairpod.yaml).",
)
@click.option("--listen", help="HOST:PORT to listen on (overrides the config).")
@click.option(
    "--backend",
    type=click.Choice(["local", "docker", "kubernetes"]),
    help="Backend to use (overrides the config).",
)
@event_loop_option
def serve(config_path: Path | None, listen: str | None, backend: str | None, event_loop: str | None) -> None:
    """Run the gateway until SIGTERM or SIGINT."""
    try:
        config = load_config(config_path, _cli_overrides(listen, backend, event_loop))
    except ConfigError as error:
        _fail(str(error))
        return
    setup_logging(config.log.level, config.log.format)
    try:
        _run_on_configured_loop(functools.partial(_serve, config), config)
    except ConfigError as error:
        _fail(str(error))


async def _serve(config: Config) -> None:
    from pairpod.ssh import Gateway, raise_open_files_limit

    before, after = raise_open_files_limit()
    log.info("gateway.open_files_limit", extra=fields(soft=after, was=before))
    gateway = Gateway(config)
    await gateway.start()
    # The first SIGTERM (or SIGINT) drains; the next one ends the sessions at once.
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            log.info("gateway.signal", extra=fields(action="end sessions now"))
            hurry.set()
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    await stop.wait()
    log.info("gateway.signal", extra=fields(action="shutdown"))
    await gateway.stop(hurry=hurry)


@main.command()
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="The gateway's config file.")
@click.option("--listen", help="HOST:PORT to serve joiners on (default: the config's listen).")
@click.option(
    "--name",
    envvar="PAIRPOD_NAME",
    help="Stable join commands for this name (admits only the people named); or $PAIRPOD_NAME.",
)
@click.option("--gitlab", "gitlab", multiple=True, metavar="LOGIN", help="A GitLab user who may join.")
@click.option("--open", "open_", is_flag=True, help="Let a link alone admit anyone (as tmate does).")
@click.option("--respawn", is_flag=True, help="Start a fresh shell when the shell exits.")
@click.option("--via", metavar="HOST[:PORT]", help="Share through this pairpod gateway (host mode).")
@click.option("-i", "key_path", type=click.Path(path_type=Path), help="--via: the key to log in with.")
@click.option("-l", "login", help="--via: the login on the gateway (default: your user name).")
@click.option("--accept-new-host-key", is_flag=True, help="--via: trust an unknown gateway key.")
@event_loop_option
@click.argument("github", nargs=-1, metavar="[GITHUB_LOGIN]...")
def pair(
    config_path: Path | None,
    listen: str | None,
    name: str | None,
    gitlab: tuple[str, ...],
    open_: bool,
    respawn: bool,
    via: str | None,
    key_path: Path | None,
    login: str | None,
    accept_new_host_key: bool,
    event_loop: str | None,
    github: tuple[str, ...],
) -> None:
    """Share a shell on this machine with the GitHub (and GitLab) users named.

    Prints a read-only and a read-write ssh command; exits with the shell's status.
    With --via, the commands point at that gateway (nobody named: the gateway's
    sharing policy decides who may join).
    """
    from pairpod.pair.links import audience
    from pairpod.pair.serve import PairOptions, run_pair

    run: Callable[[], Coroutine[Any, Any, int]]
    try:
        if via is not None:
            from pairpod.pair.via import run_via, via_options

            options = via_options(
                via, login=login, key_path=key_path, accept_new_host_key=accept_new_host_key,
                github=github, gitlab=gitlab, respawn=respawn, served_here=bool(name or open_ or listen),
            )  # fmt: skip
            config = load_config(config_path, _cli_overrides(None, None, event_loop))
            run = functools.partial(run_via, config, options)
        else:
            people = audience(github, gitlab, open=open_, name=name)
            config = load_config(config_path, _cli_overrides(listen, None, event_loop))
            run = functools.partial(run_pair, config, PairOptions(people, respawn=respawn))
    except ConfigError as error:
        _fail(str(error).removeprefix("pair: "))
        return
    setup_logging(config.log.level, config.log.format)
    try:
        code = _run_on_configured_loop(run, config)
    except ConfigError as error:
        _fail(str(error).removeprefix("pair: "))
        return
    except PairpodError as error:  # the shell could not start: the operator is the user here
        _fail(str(error), 1)
        return
    sys.exit(code)


@main.command()
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    envvar="PAIRPOD_CONTROL",
    help="The pair session's control socket (default: $PAIRPOD_CONTROL, set in its shell).",
)
@click.argument("command", nargs=-1, required=True)
def ctl(socket_path: Path | None, command: tuple[str, ...]) -> None:
    """Control a pairpod pair session: list, mint ro|rw, revoke LINK, kick ID."""
    import shlex

    if socket_path is None:
        _fail("no control socket: run this in the shared shell, or pass --socket", 1)
        return
    answer = _ask(socket_path, {"command": "control", "line": shlex.join(command)})
    click.echo(answer["output"], nl=False)


@main.group()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="The gateway's config file: its admin.socket is where to ask.",
)
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(path_type=Path),
    help="The gateway's admin socket (instead of reading it from --config).",
)
@click.pass_context
def admin(ctx: click.Context, config_path: Path | None, socket_path: Path | None) -> None:
    """Look at and end the connections of a gateway running on this machine."""
    if socket_path is None:
        try:
            socket_path = load_config(config_path).admin.socket
        except ConfigError as error:
            _fail(str(error))
        if socket_path is None:
            _fail(
                f"admin.socket is not set in {config_path or 'the default config'}: "
                "set it (and restart the gateway) to use pairpod admin"
            )
    ctx.obj = socket_path


def _ask(socket_path: Path, request: dict[str, Any]) -> dict[str, Any]:
    from pairpod.admin.control import ask

    try:
        answer = ask(socket_path, request)
    except (OSError, ValueError) as error:
        _fail(f"no gateway answers at {socket_path}: {error}", 1)
    if "error" in answer:
        _fail(str(answer["error"]), 1)
    return answer


@admin.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the gateway's JSON answer.")
@click.pass_obj
def admin_list(socket_path: Path, as_json: bool) -> None:
    """Connections: user, address, environment, channels, shared sessions, bytes."""
    from pairpod.admin.view import format_connections

    answer = _ask(socket_path, {"command": "list"})
    if as_json:
        click.echo(json.dumps(answer["connections"], indent=2))
    else:
        click.echo(format_connections(answer["connections"]), nl=False)


@admin.command("end")
@click.argument("connection")
@click.pass_obj
def admin_end(socket_path: Path, connection: str) -> None:
    """End CONNECTION: its user is told why, its environment is removed."""
    answer = _ask(socket_path, {"command": "end", "connection": connection})
    click.echo(f"connection {answer['ended']} ended")


@main.command("check-config")
@click.argument("path", type=click.Path(path_type=Path))
def check_config(path: Path) -> None:
    """Validate a config file and print the effective config (exit 2 if invalid)."""
    try:
        config = load_config(path)
    except ConfigError as error:
        _fail(str(error))
        return
    click.echo(dump_config(config), nl=False)


@main.command("hash-password")
def hash_password_command() -> None:
    """Print an argon2id hash of a password (for auth.users.NAME.password_hash).

    Asks twice on a terminal; reads one line from standard input otherwise.
    """
    from pairpod.auth import hash_password

    if sys.stdin.isatty():
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        _fail("refusing to hash an empty password", 1)
    click.echo(hash_password(password))


@main.command("demo-setup")
@click.argument("directory", type=click.Path(path_type=Path), default=Path(".demo"))
@click.option("--port", default=2222, show_default=True, help="Port of the demo gateway.")
def demo_setup(directory: Path, port: int) -> None:
    """Write a demo config, host key and client key into DIRECTORY; print the ssh command."""
    import asyncssh

    from pairpod.hostkeys import load_host_keys

    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    client_key_path = directory / "id_ed25519"
    if not client_key_path.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment="pairpod-demo")
        key.write_private_key(client_key_path)
        client_key_path.chmod(0o600)
        key.write_public_key(directory / "id_ed25519.pub")
    public = asyncssh.read_private_key(client_key_path).export_public_key().decode()
    (directory / "authorized_keys").write_text(public)
    host_key = load_host_keys([directory / "ssh_host_ed25519_key"])[0]
    host_public = host_key.export_public_key().decode().strip()
    (directory / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_public}\n")
    config = {
        "listen": f"127.0.0.1:{port}",
        "host_keys": [str((directory / "ssh_host_ed25519_key").resolve())],
        "banner": "Welcome to the pairpod demo gateway.",
        "auth": {"authorized_keys": str((directory / "authorized_keys").resolve())},
        "backend": "local",
        # Web joiners on the next port: a shared session's notice shows a read-only web link.
        "sharing": {"web": {"listen": f"127.0.0.1:{port + 1}", "auto": True}},
    }
    (directory / "pairpod.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    ssh = (
        f"ssh -i {client_key_path} -o IdentitiesOnly=yes "
        f"-o UserKnownHostsFile={directory / 'known_hosts'} -p {port}"
    )
    click.echo("pairpod demo: connect with")
    click.echo(f"  {ssh} demo@127.0.0.1")
    click.echo("or share the session (join commands and a web link are printed first):")
    click.echo(f"  {ssh} -o SetEnv=PAIRPOD_SHARE=1 demo@127.0.0.1")


if __name__ == "__main__":  # pragma: no cover
    main()
