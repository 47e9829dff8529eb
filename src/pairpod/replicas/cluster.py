"""This replica's place in a cluster: the sharing service's view of the others.

:class:`Cluster` is the :class:`~pairpod.sharing.joinable.Elsewhere` of the
sharing service. It publishes this replica's links in the directory
(:mod:`pairpod.replicas.directory`), listens for other replicas on
``cluster.listen`` (:mod:`pairpod.replicas.serving`), and relays joiners and
control commands that landed here to the replica holding the session
(:mod:`pairpod.replicas.joining`).
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from functools import partial

from pairpod.cluster import ClusterStore
from pairpod.config import Config, parse_listen, same_address
from pairpod.errors import ConfigError, cannot_listen
from pairpod.log import fields, get_logger
from pairpod.replicas.directory import LinkDirectory
from pairpod.replicas.joining import Peers
from pairpod.replicas.link import PeerLink
from pairpod.replicas.serving import ServingSide
from pairpod.replicas.wire import Kind, cluster_key
from pairpod.sharing.joinable import ClusterUnavailable, Joinable
from pairpod.sharing.service import ControlError, SharingService
from pairpod.sharing.tokens import Access, Medium

log = get_logger("cluster")

# Control verbs that act on one session (the others are answered here).
_SESSION_VERBS = {"mint", "revoke", "kick"}


def listen_address(config: Config) -> tuple[str, int]:
    """Where the replica listener listens: ``cluster.listen``, else all addresses on advertise's port."""
    cluster = config.cluster
    if cluster.listen is not None:
        return parse_listen(cluster.listen)
    assert cluster.advertise is not None
    return "0.0.0.0", parse_listen(cluster.advertise)[1]  # noqa: S104 - other replicas must reach it


class Replicas:
    """The other replicas, as the sharing service of this one asks them."""

    def __init__(self, config: Config, service: SharingService, store: ClusterStore) -> None:
        cluster = config.cluster
        assert cluster.redis is not None and cluster.advertise is not None and cluster.secret is not None
        self._config = config
        self._service = service
        self._key = cluster_key(cluster.secret)
        self.directory = LinkDirectory(
            store, self._key, cluster.advertise, service, cluster.heartbeat, cluster.ttl
        )
        self.peers = Peers(self._key, cluster.heartbeat, cluster.ttl, config.ssh.max_pty)
        self._serving = ServingSide(service)
        self._server: asyncio.Server | None = None
        self._publisher: asyncio.Task[None] | None = None

    @property
    def advertise(self) -> str:
        """How the other replicas reach this one."""
        return self.directory.advertise

    async def start(self) -> None:
        """Listen for other replicas and start publishing this one's links."""
        host, port = listen_address(self._config)
        if same_address((host, port), self._config.listen_address):
            raise ConfigError("cluster.listen: must not be the SSH address (listen)")
        cluster = self._config.cluster
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: PeerLink(
                    self._key, self._serving, connecting=False, heartbeat=cluster.heartbeat, ttl=cluster.ttl
                ),
                host,
                port,
                reuse_address=True,
            )
        except OSError as error:
            raise cannot_listen("cluster.listen", f"{host}:{port}", error) from None
        self._publisher = loop.create_task(self.directory.run())
        log.info("cluster.listening", extra=fields(address=f"{host}:{port}", advertise=self.advertise))

    async def stop(self) -> None:
        """Withdraw this replica's entries, drop the links, stop listening."""
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher
        await self.directory.withdraw()
        if self._server is not None:
            self._server.close()
        self.peers.close()
        await self._serving.close()

    # --- the sharing service's Elsewhere ---------------------------------------------

    def changed(self) -> None:
        """Publish this replica's links now."""
        self.directory.changed()

    async def find(self, username: str, medium: Medium = Medium.SSH) -> Joinable | None:
        """The session a link names on another replica. Raises ClusterUnavailable."""
        address = await self.directory.where(username, medium)
        if address is None or address == self.advertise:
            return None
        request = {"username": username, "medium": medium.value}
        answer = await self.peers.request(address, Kind.LOOKUP, request)
        if not answer.get("found"):
            return None
        try:
            return Joinable(
                session_id=str(answer["session"]),
                access=Access(answer["access"]),
                open=bool(answer["open"]),
                may_join_as=tuple(str(name) for name in answer["may_join_as"]),
                where=address,
                _attach=partial(self.peers.attach, address, username, medium),
                owner=str(answer.get("owner", "")),
                link_id=str(answer.get("link", "")),
                size=self._size(answer),
            )
        except (KeyError, ValueError, TypeError):
            raise ClusterUnavailable(f"{address}: a malformed lookup answer") from None

    def _size(self, answer: dict[str, object]) -> tuple[int, int]:
        """A lookup answer's PTY size, bounded as a client's would be (80x24 when it gave none)."""
        cols, rows = answer.get("cols", 80), answer.get("rows", 24)
        if type(cols) is not int or type(rows) is not int:
            raise ValueError("size")
        return self._config.ssh.max_pty.bound(cols, rows)

    async def control(self, owner: str, command_line: str) -> str:
        """Run an owner's control command where their sessions are. Raises ControlError."""
        local = partial(self._service.control, owner, command_line)
        try:
            words = shlex.split(command_line)
        except ValueError:
            return local()  # says what is wrong with it
        verb = words[0] if words else "help"
        if verb != "list" and verb not in _SESSION_VERBS:
            return local()  # help, or an unknown verb
        here = bool(self._service.registry.sessions_of(f"user:{owner}"))
        try:
            others = await self.directory.owner_replicas(f"user:{owner}")
        except ClusterUnavailable as error:
            if here:
                return local()
            raise ControlError(error.user_message) from None
        if not others:
            return local()
        places = (["here"] if here else []) + others
        if verb == "list":
            parts = [await self._control_at(place, owner, command_line) for place in places]
            listed = "".join(part for part in parts if part != "no shared sessions\n")
            return listed or "no shared sessions\n"
        if len(places) > 1 and len(words) == 2:
            raise ControlError("you have several shared sessions: name one (see list)")
        failure: ControlError | None = None
        for place in places:
            try:
                return await self._control_at(place, owner, command_line)
            except ControlError as error:  # another replica may hold the session named
                failure = error
        assert failure is not None
        raise failure

    async def _control_at(self, place: str, owner: str, command_line: str) -> str:
        if place == "here":
            return self._service.control(owner, command_line)
        try:
            answer = await self.peers.request(place, Kind.CONTROL, {"owner": owner, "command": command_line})
        except ClusterUnavailable as error:
            raise ControlError(error.user_message) from None
        if not answer.get("ok"):
            raise ControlError(str(answer.get("text")))
        return str(answer.get("text"))
