"""Cluster mode (`--redis`): several nodes on one PostgreSQL store and one Redis.

Redis carries what must be shared now, the store what must last:
- channels, all under `--redis-prefix`: `control` (a session changed or ended: every node forgets its
  cached copy and closes that session's sockets), `node:<id>` (messages for one node);
- one publisher connection fed by a queue, so that what one node publishes arrives in the order it was
  published, and one subscriber connection read by one task.

One process without `--redis` builds none of this (Services.cluster is None).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from typing import Callable

import redis.asyncio as aioredis

from .ratelimit import seconds

log = logging.getLogger("mcprt.cluster")


def check_cluster(settings) -> None:
    """One sentence for cluster settings that cannot work."""
    if settings.redis is None:
        return
    from .storage import is_postgres
    if not settings.redis.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"--redis must be a redis://host:port/db URL, not {settings.redis!r}")
    if not is_postgres(settings.db):
        raise ValueError("--redis needs a shared PostgreSQL store (--db postgresql://…): every node reads and "
                         "writes the same documents and sessions")
    if not settings.redis_prefix or any(c in settings.redis_prefix for c in " *?[]"):
        raise ValueError("--redis-prefix must be a non-empty name without spaces or * ? [ ]")
    if settings.lease_ttl < 1:
        raise ValueError("--lease-ttl must be at least 1s")


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


class Cluster:
    """This node's Redis connections, its channels, and what it tells the other nodes."""

    def __init__(self, url: str, prefix: str, node_id: str | None = None):
        self.url, self.prefix = url, prefix
        self.node_id = node_id or default_node_id()
        self.redis = aioredis.Redis.from_url(url)                                   # commands
        self._publisher = aioredis.Redis.from_url(url, single_connection_client=True)  # publishes, in order
        self._subscriber = aioredis.Redis.from_url(url)
        self.pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self.handlers: dict[str, Callable[[dict], None]] = {}  # message type -> what this node does with it
        self.received = 0
        self.published = 0

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def control(self) -> str:
        return self.key("control")

    @property
    def inbox(self) -> str:
        return self.key("node", self.node_id)

    async def start(self) -> "Cluster":
        await self.redis.ping()
        await self.pubsub.subscribe(self.control, self.inbox)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read_forever()), loop.create_task(self._publish_forever())]
        log.info("cluster node %s on %s (prefix %s)", self.node_id, _safe_url(self.url), self.prefix)
        return self

    async def stop(self) -> None:
        await self._drain()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for closing in (self.pubsub.aclose(), self._subscriber.aclose(), self._publisher.aclose(), self.redis.aclose()):
            try:
                await closing
            except Exception:  # Redis gone at shutdown: nothing left to tell it
                pass

    async def _drain(self, seconds: float = 1.0) -> None:
        """Let what is queued go out (a stopping node's last words), for at most `seconds`."""
        for _ in range(int(seconds / 0.02)):
            if self._outbox.empty():
                return
            await asyncio.sleep(0.02)

    async def ping(self) -> str:
        """"ok", or why Redis does not answer (for /health)."""
        try:
            await asyncio.wait_for(self.redis.ping(), 2.0)
            return "ok"
        except Exception as exc:
            return f"error: {type(exc).__name__}: {exc}"

    # -- sending -----------------------------------------------------------------------------------

    def publish(self, channel: str, message: dict, heard: Callable[[int], None] | None = None) -> None:
        """Queue one message for a channel; they leave in the order queued. `heard` is told how many
        subscribers received it."""
        message["from"] = self.node_id
        self._outbox.put_nowait((heard, "PUBLISH", channel,
                                 json.dumps(message, separators=(",", ":"), ensure_ascii=False)))

    def command(self, *args) -> None:
        """Queue a Redis command nobody waits for (presence): in order with the publishes."""
        self._outbox.put_nowait((None, *args))

    async def _publish_forever(self) -> None:
        while True:
            first = await self._outbox.get()
            batch = [first]
            while not self._outbox.empty() and len(batch) < 512:
                batch.append(self._outbox.get_nowait())
            try:
                pipe = self._publisher.pipeline(transaction=False)
                for _, *args in batch:
                    pipe.execute_command(*args)
                results = await pipe.execute()
                self.published += len(batch)
                for (heard, *_), result in zip(batch, results):
                    if heard is not None:
                        heard(result)
            except Exception as exc:  # pub/sub is at most once: receivers fill gaps from the store
                log.warning("publishing %d cluster messages failed: %s", len(batch), exc)
                await asyncio.sleep(0.2)

    # -- receiving ---------------------------------------------------------------------------------

    async def _read_forever(self) -> None:
        while True:
            try:
                message = await self.pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reading cluster messages failed: %s; retrying", exc)
                await asyncio.sleep(0.5)
                continue
            if message is None:
                continue
            try:
                body = json.loads(message["data"])
            except (ValueError, TypeError):
                log.warning("a cluster message that is not JSON on %s", message.get("channel"))
                continue
            if body.get("from") == self.node_id:
                continue  # our own publish on a shared channel
            self.received += 1
            handler = self.handlers.get(body.get("t"))
            if handler is None:
                continue
            try:
                handler(body)
            except Exception:
                log.exception("handling a cluster message of type %s", body.get("t"))


def _safe_url(url: str) -> str:
    """A Redis URL without its password."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://…@{rest.rpartition('@')[2]}"
    return url


class SharedSessions:
    """Sessions valid on every node: a node that moves one (activate, end, refresh) says so on `control`;
    every other node forgets its cached copy (the store has the row) and closes the session's sockets
    when it ended."""

    def __init__(self, cluster: Cluster, sessions, close_sockets: Callable[[str, str], None]):
        self.cluster, self.sessions, self.close_sockets = cluster, sessions, close_sockets
        sessions.on_change.append(self._changed)
        cluster.handlers["session"] = self._remote

    def _changed(self, session, ended: str | None) -> None:
        self.cluster.publish(self.cluster.control, {"t": "session", "s": session.session_id, "end": ended})

    def _remote(self, body: dict) -> None:
        session_id = body["s"]
        self.sessions.forget(session_id)
        if body.get("end"):
            self.close_sockets(session_id, body["end"])


# -- documents -----------------------------------------------------------------------------------------

# Compare-and-expire and compare-and-delete: a node renews or gives up only the lease it holds.
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
# A session creation from an address, on any node: drop the window's entries older than ARGV[2]; at
# ARGV[3] entries or more refuse, with the oldest entry's time; else add this one (time ARGV[1], member
# ARGV[4]) and keep the key ARGV[5] ms. A fixed window per clock minute let twice the limit through
# around a minute's turn; this is the node's own sliding window, shared.
_CREATE = """
redis.call('zremrangebyscore', KEYS[1], '-inf', ARGV[2])
if redis.call('zcard', KEYS[1]) >= tonumber(ARGV[3]) then
  return {0, redis.call('zrange', KEYS[1], 0, 0, 'WITHSCORES')[2]}
end
redis.call('zadd', KEYS[1], ARGV[1], ARGV[4])
redis.call('pexpire', KEYS[1], ARGV[5])
return {1, ARGV[1]}
"""
# What a test may ask of a node through MCPRT_CLUSTER_TEST_HOOKS (comma-separated): drop_op=<revision>[+…]
# (leave the publish of those revisions out, once each), ignore_lease (keep serving past the lease and
# past a failed renewal, as an owner paused at the wrong moment would: only the store's fence stops it),
# slow_give_up=<seconds> (hold the lease that long after leaving a document's channel, as a slow Redis would),
# slow_take_over=<seconds> (wait that long after taking a lease before catching the copy up from the store),
# ignore_released (do not act on another node's "released", as if that message were late).
TEST_HOOKS = "MCPRT_CLUSTER_TEST_HOOKS"


class _Forwarded:
    __slots__ = ("done", "sender", "timer")

    def __init__(self, done, sender, timer):
        self.done, self.sender, self.timer = done, sender, timer


class Held:
    """A document this node has members on: owned (the lease is ours until `deadline`, monotonic) or
    followed (its owner is `owner_node`; committed ops arrive on its channel)."""

    def __init__(self, document_id: str):
        self.document_id = document_id
        self.owner = False
        self.token: str | None = None
        self.deadline = 0.0
        self.owner_node: str | None = None
        self.ready: asyncio.Future = asyncio.get_running_loop().create_future()
        self.inbox: list[dict] = []       # committed ops to take, in arrival order
        self.draining = False
        self.forwarded: list[dict] = []   # edits other nodes forwarded to us, in arrival order
        self.forwarding = False
        self.pending: dict[tuple, list[_Forwarded]] = {}  # (peer id, message id) -> edits forwarded by us
        self.steady = asyncio.Event()     # set unless a claim and a take-over are under way (`moving`)
        self.steady.set()
        self.checking = False             # a renewal or a claim is under way
        self.joining = 0                  # joins between attach() and the room (or a refusal)
        self.quiet = False                # owner: no other node follows, ops are not published
        self.hellos = 0                   # owner: hellos heard (a publish result older than one is moot)

    @property
    def moving(self) -> bool:
        """A claim and a take-over are under way: this copy may be behind the store, nothing commits."""
        return not self.steady.is_set()

    @moving.setter
    def moving(self, value: bool) -> None:
        if value:
            self.steady.clear()
        else:
            self.steady.set()


class SharedDocuments:
    """One owner per document, through a Redis lease; every other node with members on it keeps a copy
    that follows the owner's committed ops (in revision order, gaps filled from the store, duplicates
    dropped) and forwards its editors' edits to the owner. The store's PRIMARY KEY (document_id,
    revision) is the fence: a stale owner's write fails and the edit pipeline's reset closes its sockets
    with 4500."""

    def __init__(self, cluster: Cluster, deps, ttl: float, hooks: str = ""):
        self.cluster, self.deps, self.ttl = cluster, deps, ttl
        self.held: dict[str, Held] = {}
        self._renew = cluster.redis.register_script(_RENEW)
        self._release = cluster.redis.register_script(_RELEASE)
        self.hooks = {h.partition("=")[0]: h.partition("=")[2] for h in hooks.split(",") if h}
        self.dropping = set(self.hooks.get("drop_op", "").split("+")) - {""}
        # A forwarded edit not answered by then gets SERVER_ERROR (the client sends it again): by then a
        # dead owner's lease has run out and another node may have taken the document.
        self.forward_timeout = ttl + 1.0
        # A participant entry not refreshed for this long is a dead node's ghost (refreshed every ttl/3).
        self.presence_bound = ttl
        cluster.handlers.update(op=self._on_op, fan=self._on_fan, edit=self._on_edit, refused=self._on_refused,
                                again=self._on_again, abusive=self._on_abusive, released=self._on_released,
                                restore=self._on_restore, answer=self._on_answer, hello=self._on_hello,
                                head=self._on_head)
        self._questions: dict[str, asyncio.Future] = {}
        self._leaving: dict[str, asyncio.Future] = {}  # document -> done when its give-up has ended
        deps.edits.on_published = self._published
        deps.edits.on_reset.append(self._reset)
        self._keeper = asyncio.get_running_loop().create_task(self._keep_leases())

    def lease_key(self, document_id: str) -> str:
        return self.cluster.key("lease", document_id)

    def channel(self, document_id: str) -> str:
        return self.cluster.key("doc", document_id)

    async def stop(self) -> None:
        self._keeper.cancel()
        await asyncio.gather(self._keeper, return_exceptions=True)
        for held in list(self.held.values()):
            await self._give_up(held)

    # -- joining and leaving ---------------------------------------------------------------------------

    async def attach(self, document_id: str) -> Held:
        """Hold a document before opening it: subscribed to its channel, and owning it when nobody does."""
        held = self.held.get(document_id)
        fresh = held is None
        if fresh:
            held = self.held[document_id] = Held(document_id)
        held.joining += 1  # before any await: a detach meanwhile leaves it
        if fresh:
            try:
                leaving = self._leaving.get(document_id)
                if leaving is not None:  # our own lease and channel are still being given up: after that
                    await asyncio.shield(leaving)
                await self.cluster.pubsub.subscribe(self.channel(document_id))
                if not await self._claim(held):
                    self.cluster.publish(self.channel(document_id), {"t": "hello", "d": document_id})
                held.moving = False  # nothing to catch up: the copy is loaded after this
                held.ready.set_result(None)
            except BaseException as exc:
                self.held.pop(document_id, None)
                held.ready.set_exception(exc)
                held.ready.exception()
                raise
        try:
            await asyncio.shield(held.ready)
        except BaseException:
            held.joining -= 1
            raise
        return held

    def joined(self, document_id: str) -> None:
        """A join that attached has ended (in the room, or refused)."""
        held = self.held.get(document_id)
        if held is not None and held.joining:
            held.joining -= 1

    def opened(self, document) -> None:
        """The copy is in memory: take what arrived on the channel while it loaded."""
        held = self.held.get(document.document_id)
        if held is not None and held.inbox:
            self._drain_soon(held)

    async def detach(self, document_id: str) -> None:
        """Nobody here is on the document any more (its copy was released): leave its channel, and give
        the lease up, telling the others, so that one of them owns it at once."""
        held = self.held.get(document_id)
        if held is None or held.joining or self.deps.hub.members(document_id):
            return  # someone is joining or here again: it stays
        del self.held[document_id]
        left = self._leaving[document_id] = asyncio.get_running_loop().create_future()
        try:
            await self._give_up(held)
        finally:
            if self._leaving.get(document_id) is left:
                del self._leaving[document_id]
            left.set_result(None)

    async def _give_up(self, held: Held) -> None:
        try:
            await self.cluster.pubsub.unsubscribe(self.channel(held.document_id))
            if held.owner:
                if "slow_give_up" in self.hooks:
                    await asyncio.sleep(float(self.hooks["slow_give_up"]))
                held.owner = False
                await self._release(keys=[self.lease_key(held.document_id)], args=[held.token])
                self.cluster.publish(self.channel(held.document_id), {"t": "released", "d": held.document_id})
        except Exception as exc:  # Redis gone: the lease runs out by itself
            log.warning("giving up %s: %s", held.document_id, exc)
        for entries in held.pending.values():
            for entry in entries:
                entry.timer.cancel()

    async def _claim(self, held: Held) -> bool:
        """Take the lease if nobody holds it; otherwise note who does. True when it is ours (and then
        `held` is marked moving until the caller has made this copy the one that commits)."""
        redis, key = self.cluster.redis, self.lease_key(held.document_id)
        for _ in range(3):
            token = f"{self.cluster.node_id}:{uuid.uuid4().hex[:8]}"
            started = asyncio.get_running_loop().time()
            if await redis.set(key, token, nx=True, px=int(self.ttl * 1000)):
                held.moving = True
                held.owner, held.token, held.deadline, held.owner_node = True, token, started + self.ttl, None
                log.info("node %s owns %s", self.cluster.node_id, held.document_id)
                return True
            value = await redis.get(key)
            if value is not None:
                owner_node = value.decode().rpartition(":")[0]
                # Our own lease, left by a copy being reset: nobody to forward to until it is released.
                held.owner, held.owner_node = False, None if owner_node == self.cluster.node_id else owner_node
                return False
        raise RuntimeError(f"could not read or take the lease of {held.document_id}")

    # -- routing an edit -------------------------------------------------------------------------------

    def route(self, document_id: str) -> str:
        """"local" (this node owns it and may serve), "forward" (another node owns it), or "stale" (the
        lease may have run out: nothing is served until it is renewed)."""
        held = self.held.get(document_id)
        if held is None or held.moving:
            return "stale"
        if not held.owner:
            return "forward" if held.owner_node else "stale"
        if asyncio.get_running_loop().time() < held.deadline or "ignore_lease" in self.hooks:
            return "local"
        self.deps.tasks.spawn(self._recheck(held), f"renew the lease of {document_id}")
        return "stale"

    def forward(self, document, message: dict, author, sender, done) -> None:
        """Send an edit to the owner; `done` gets the Applied when the committed op comes back (or the
        original ack of a resend), or an AppError."""
        held = self.held[document.document_id]
        key = (author.peer_id, message["id"])
        timer = asyncio.get_running_loop().call_later(self.forward_timeout, self._timed_out, held, key)
        held.pending.setdefault(key, []).append(_Forwarded(done, sender, timer))
        self.cluster.publish(self.cluster.key("node", held.owner_node), {
            "t": "edit", "d": document.document_id, "m": {"id": message["id"], "payload": message["payload"]},
            "a": [author.user_id, author.peer_id, author.session_id], "x": sender.connection_id})

    def _timed_out(self, held: Held, key: tuple) -> None:
        self.deps.tasks.spawn(self._late(held, key), "a forwarded edit without an answer")

    async def _late(self, held: Held, key: tuple) -> None:
        """No answer in time: take what the store has (the op may have been committed and its publish
        lost), then refuse what is still unanswered; and look again at who owns the document."""
        document = self.deps.documents.get_open(held.document_id)
        try:
            if document is not None and not held.owner:
                await self._fill(held, document, None)
        except Exception as exc:
            log.warning("catching up %s: %s", held.document_id, exc)
        for entry in held.pending.pop(key, []):
            entry.done(_server_error("the document's owner did not answer in time; send the edit again "
                                     "(one applied meanwhile is recognized, never applied twice)"))
        if self.held.get(held.document_id) is held and not held.owner:
            self.deps.tasks.spawn(self._recheck(held), f"look again at who owns {held.document_id}")

    # -- the owner's side ------------------------------------------------------------------------------

    def _published(self, applied, author, message, origin) -> None:
        """A revision is durable here: every other node with members on the document gets it."""
        document_id = applied.document.document_id
        held = self.held.get(document_id)
        if held is None or not held.owner:
            return
        if str(applied.revision) in self.dropping:
            self.dropping.discard(str(applied.revision))
            return
        if held.quiet:
            return  # no other node follows it (it says hello when one does)
        payload = message.get("payload", {}) if message else {}
        generation = held.hellos
        self.cluster.publish(self.channel(document_id), {
            "t": "op", "d": document_id, "r": applied.revision, "op": applied.op.to_json(),
            "c": applied.correction.to_json() if applied.correction else None, "u": author.user_id,
            "p": author.peer_id, "m": message.get("id") if message else None,
            "cp": payload.get("cursor_position"), "o": payload.get("operation")},
            lambda receivers: self._heard(held, generation, receivers))

    def _heard(self, held: Held, generation: int, receivers: int) -> None:
        """Only this node (subscribed itself) got the op, and no node said hello since it was sent: stop
        publishing ops until one does."""
        if receivers <= 1 and generation == held.hellos and held.owner:
            held.quiet = True

    def _on_hello(self, body: dict) -> None:
        """A node follows the document now: publish its ops again, and say where the head is (the node
        fills from the store what was not published)."""
        held = self.held.get(body["d"])
        if held is None or not held.owner:
            return
        held.hellos += 1
        held.quiet = False
        document = self.deps.documents.get_open(body["d"])
        if document is not None:
            self.cluster.publish(self.channel(body["d"]), {"t": "head", "d": body["d"], "r": document.revision})

    def _on_head(self, body: dict) -> None:
        """The owner's revision now: a follower takes what it lacks up to it from the store."""
        held = self.held.get(body["d"])
        if held is None or held.owner:
            return
        held.inbox.append({**body, "head": True})
        self._drain_soon(held)

    def _on_edit(self, body: dict) -> None:
        held = self.held.get(body["d"])
        if held is None or not held.owner:
            self._answer(body, _server_error("this node does not own the document any more; send the edit again"),
                         moved=True)
            return
        if held.quiet:  # a node forwards: it follows, and waits for this op
            held.hellos, held.quiet = held.hellos + 1, False
        held.forwarded.append(body)
        if not held.forwarding:
            held.forwarding = True
            self.deps.tasks.spawn(self._run_forwarded(held), f"forwarded edits of {held.document_id}")

    async def _run_forwarded(self, held: Held) -> None:
        """Forwarded edits, one at a time in arrival order, through the same pipeline as local ones."""
        from .documents import Author
        from .edits import Reply
        from .protocol import AppError
        deps = self.deps
        try:
            while held.forwarded:
                body = held.forwarded.pop(0)
                document = deps.documents.get_open(held.document_id)
                if document is None or document.broken or not held.owner:
                    self._answer(body, _server_error("the document is being reloaded; send the edit again"),
                                 moved=True)
                    continue
                user_id, peer_id, session_id = body["a"]
                author, message = Author(user_id, peer_id, session_id), body["m"]

                def where(body=body, user_id=user_id, session_id=session_id) -> dict:
                    return {"document_id": body["d"], "user_id": user_id, "session_id": session_id}

                reply = Reply(lambda outcome, body=body: self._answer(body, outcome),
                              lambda exc, body=body: self._answer(body, exc, reject=True),
                              lambda body=body: self.cluster.publish(self.cluster.key("node", body["from"]), {
                                  "t": "abusive", "d": body["d"], "x": body["x"]}))
                try:
                    await deps.documents.know(document, peer_id)
                    base = (await deps.edits.base_content(document, message["payload"])
                            if deps.edits.needs_base(document, message["payload"]) else None)
                    deps.edits.submit(document, message, author, None, where, reply, base, origin=(body["from"],
                                                                                                   body["x"]))
                except AppError as exc:
                    self._answer(body, exc, reject=True)
        finally:
            held.forwarding = False

    def _answer(self, body: dict, outcome, reject: bool = False, moved: bool = False) -> None:
        """Tell the node a forwarded edit came from how it ended, unless the committed op tells it."""
        from .protocol import AppError
        to = self.cluster.key("node", body["from"])
        who = {"d": body["d"], "x": body["x"], "id": body["m"]["id"], "p": body["a"][1]}
        if isinstance(outcome, AppError):
            self.cluster.publish(to, {"t": "refused", **who, "code": outcome.code.value, "message": outcome.message,
                                      "details": outcome.details, "reject": reject, "moved": moved})
        elif outcome.again:
            self.cluster.publish(to, {"t": "again", **who, "r": outcome.revision, "op": outcome.op.to_json(),
                                      "c": outcome.correction.to_json() if outcome.correction else None,
                                      "content": outcome.content, "length": outcome.length})

    # -- the follower's side ---------------------------------------------------------------------------

    def _on_op(self, body: dict) -> None:
        held = self.held.get(body["d"])
        if held is None or held.owner:
            return
        held.inbox.append(body)
        self._drain_soon(held)

    def _drain_soon(self, held: Held) -> None:
        if not held.draining:
            held.draining = True
            self.deps.tasks.spawn(self._drain(held), f"follow {held.document_id}")

    async def _drain(self, held: Held) -> None:
        """Take arrived ops in revision order: a duplicate is dropped, a gap filled from the store first."""
        from .ot import TextOperation
        try:
            while held.inbox and not held.owner:
                document = self.deps.documents.get_open(held.document_id)
                if document is None:
                    return  # loading: opened() drains again
                body = held.inbox.pop(0)
                revision = body["r"]
                if revision <= document.revision:
                    continue
                if body.get("head"):
                    await self._fill(held, document, revision)
                    continue
                if revision > document.revision + 1:
                    await self._fill(held, document, revision - 1)
                    if revision != document.revision + 1:
                        log.warning("%s: revision %d did not follow %d even from the store", held.document_id,
                                    revision, document.revision)
                        continue
                correction = TextOperation.from_json(body["c"]) if body.get("c") else None
                self._take(held, document, revision, TextOperation.from_json(body["op"]), correction, body["u"],
                           body["p"], body["m"], {"cursor_position": body.get("cp"), "operation": body.get("o") or "edit"})
        finally:
            held.draining = False

    async def _fill(self, held: Held, document, upto: int | None) -> None:
        """Take the stored ops past this copy's revision (up to `upto`): a lost publish, or a catch-up."""
        from .ot import TextOperation
        rows = await self.deps.store.ops(document.document_id, document.revision, upto)
        for row in rows:
            if row.revision == document.revision + 1:
                self._take(held, document, row.revision, TextOperation.from_json(row.op),
                           TextOperation.from_json(row.correction) if row.correction else None, row.user_id,
                           row.peer_id, row.message_id, {})

    def _take(self, held: Held, document, revision: int, op, correction, user_id, peer_id, message_id,
              payload: dict) -> None:
        """One committed revision into this copy: its editors get it (the one who sent it, its ack)."""
        from .documents import Applied, Author
        deps = self.deps
        peers = deps.hub.members(document.document_id)
        deps.documents.follow(document, revision, op, peer_id, message_id)
        waiting = held.pending.pop((peer_id, message_id), []) if message_id else []
        sender = waiting[0].sender if waiting else None
        deps.hub.shift_cursors(document.document_id, op, sender)
        applied = Applied(document, revision, op, correction, (), document.content, len(document.text))
        for entry in waiting:
            entry.timer.cancel()
            entry.done(applied)
        deps.edits.publish(applied, Author(user_id or "", peer_id or ""), {"id": message_id, "payload": payload},
                           sender, peers)

    def _pending_of(self, body: dict) -> list[_Forwarded]:
        held = self.held.get(body["d"])
        entries = held.pending.pop((body["p"], body["id"]), []) if held is not None else []
        for entry in entries:
            entry.timer.cancel()
        return entries

    def _on_refused(self, body: dict) -> None:
        from .protocol import AppError, ErrorCode
        exc = AppError(ErrorCode(body["code"]), body["message"], body.get("details") or {})
        for entry in self._pending_of(body):
            if body.get("reject"):
                entry.sender.reject(exc, None, body["id"])
            else:
                entry.done(exc)
        held = self.held.get(body["d"])
        if body.get("moved") and held is not None:
            self.deps.tasks.spawn(self._recheck(held), f"look again at who owns {held.document_id}")

    def _on_again(self, body: dict) -> None:
        from .documents import Applied
        from .ot import TextOperation
        document = self.deps.documents.get_open(body["d"])
        for entry in self._pending_of(body):
            entry.done(Applied(document, body["r"], TextOperation.from_json(body["op"]),
                               TextOperation.from_json(body["c"]) if body.get("c") else None, (), body["content"],
                               body["length"], again=True))

    def _on_abusive(self, body: dict) -> None:
        for peer in self.deps.hub.members(body["d"]):
            if peer.connection_id == body["x"]:
                peer.abuse_disconnect()

    def _on_released(self, body: dict) -> None:
        held = self.held.get(body["d"])
        if held is not None and not held.owner and "ignore_released" not in self.hooks:
            self.deps.tasks.spawn(self._recheck(held), f"take over {held.document_id}")

    # -- restore ---------------------------------------------------------------------------------------

    async def restore(self, document_id: str, revision: int, author) -> tuple[dict, int]:
        """A restore (REST) on whichever node owns the document: here when this node owns it, or nobody
        does (then only for the restore); else asked of the owner. A take-over under way is waited for, and
        an owner that gave the document up meanwhile sends us to the lease again, until forward_timeout
        has passed. (The document's state, the new revision.)"""
        held = await self.attach(document_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.forward_timeout
        body = {"t": "restore", "d": document_id, "rev": revision,
                "a": [author.user_id, author.peer_id, author.session_id]}
        try:  # joining until the end: a member leaving meanwhile does not give the lease up under the restore
            while True:
                try:
                    return await self._restore_here(held, document_id, revision, author, deadline)
                except _Moved:
                    pass
                if held.owner_node is not None:
                    try:
                        return await self._ask(held, body)
                    except _Moved:
                        pass
                if loop.time() >= deadline:
                    raise _server_error("the document's owner is changing; retry")
                await self._recheck(held)  # a lease nobody holds is taken; else we learn who holds it
                if not held.owner:
                    await asyncio.sleep(0.02)  # another look at the lease is under way, or its holder just left
        finally:
            self.joined(document_id)
            await self.detach(document_id)  # (it stays while anyone is here or joining)

    async def _restore_here(self, held: Held, document_id: str, revision: int, author,
                            deadline: float) -> tuple[dict, int]:
        """The restore, once a take-over under way has ended, if this node owns the document; else _Moved."""
        if not held.steady.is_set():
            try:
                await asyncio.wait_for(held.steady.wait(), max(0.0, deadline - asyncio.get_running_loop().time()))
            except asyncio.TimeoutError:
                raise _server_error("the document's owner is changing; retry") from None
        if not held.owner or self.held.get(document_id) is not held:
            raise _Moved()
        applied = await self.deps.edits.restore(document_id, revision, author)
        return applied.document.state(), applied.revision

    async def _ask(self, held: Held, body: dict) -> tuple[dict, int]:
        from .protocol import AppError, ErrorCode
        query = uuid.uuid4().hex
        answer = asyncio.get_running_loop().create_future()
        self._questions[query] = answer
        self.cluster.publish(self.cluster.key("node", held.owner_node), {**body, "q": query})
        try:
            reply = await asyncio.wait_for(answer, self.forward_timeout)
        except asyncio.TimeoutError:
            raise _server_error("the document's owner did not answer in time; retry") from None
        finally:
            self._questions.pop(query, None)
        if reply.get("moved"):
            raise _Moved()
        if "code" in reply:
            raise AppError(ErrorCode(reply["code"]), reply["message"], reply.get("details") or {})
        return reply["state"], reply["r"]

    def _on_restore(self, body: dict) -> None:
        self.deps.tasks.spawn(self._restore_for(body), f"a restore of {body['d']} for another node")

    async def _restore_for(self, body: dict) -> None:
        from .documents import Author
        from .protocol import AppError
        to = self.cluster.key("node", body["from"])
        held = self.held.get(body["d"])
        try:
            if held is None:
                raise _Moved()
            deadline = asyncio.get_running_loop().time() + self.forward_timeout
            held.joining += 1  # the lease stays while the restore runs
            try:
                state, revision = await self._restore_here(held, body["d"], body["rev"], Author(*body["a"]), deadline)
            finally:
                self.joined(body["d"])
                await self.detach(body["d"])  # (it stays while anyone is here or joining)
            self.cluster.publish(to, {"t": "answer", "q": body["q"], "state": state, "r": revision})
        except _Moved:  # the asking node looks at the lease again
            self.cluster.publish(to, {"t": "answer", "q": body["q"], "moved": True})
        except AppError as exc:
            self.cluster.publish(to, {"t": "answer", "q": body["q"], "code": exc.code.value, "message": exc.message,
                                      "details": exc.details})

    def _on_answer(self, body: dict) -> None:
        answer = self._questions.get(body["q"])
        if answer is not None and not answer.done():
            answer.set_result(body)

    # -- presence and the rest ---------------------------------------------------------------------------

    def fan(self, document_id: str, type_: str, text: str) -> None:
        """A message every editor of the document gets as it is (joins, leaves, presence), to the others."""
        if document_id in self.held:
            self.cluster.publish(self.channel(document_id), {"t": "fan", "d": document_id, "k": type_, "b": text})

    def _on_fan(self, body: dict) -> None:
        self.deps.metrics.sent[body["k"]].inc(self.deps.hub.publish(body["d"], body["b"]))

    def presence_key(self, document_id: str) -> str:
        return self.cluster.key("here", document_id)

    def here(self, peer) -> None:
        """A local connection on a document (joined, moved its cursor, or still there), for every node's
        participant lists; an entry not refreshed within the lease is a dead node's ghost."""
        self.cluster.command("HSET", self.presence_key(peer.document_id), f"{self.cluster.node_id}|{peer.connection_id}",
                             json.dumps({"u": peer.user_id, "p": peer.peer_id, "c": peer.cursor, "at": time.time()}))

    def gone(self, peer) -> None:
        self.cluster.command("HDEL", self.presence_key(peer.document_id), f"{self.cluster.node_id}|{peer.connection_id}")

    async def participants(self, document_id: str) -> list[dict]:
        """The document's participants on the other nodes, from their live entries."""
        entries = await self.cluster.redis.hgetall(self.presence_key(document_id))
        fresh, _ = self._sorted_entries(entries)
        seen: dict[str, dict] = {}
        for node, value in fresh:
            if node == self.cluster.node_id:
                continue
            entry = seen.setdefault(value["p"], {"user_id": value["u"], "peer_id": value["p"], "connections": 0,
                                                 "cursor": None})
            entry["connections"] += 1
            entry["cursor"] = value.get("c") or entry["cursor"]
        return list(seen.values())

    def _sorted_entries(self, entries: dict) -> tuple[list, list]:
        """(node, entry) pairs still refreshed, and (field, entry) pairs past the bound."""
        fresh, stale, cutoff = [], [], time.time() - self.presence_bound
        for field, raw in entries.items():
            field = field.decode() if isinstance(field, bytes) else field
            try:
                value = json.loads(raw)
            except ValueError:
                value = None
            if value is not None and value.get("at", 0) >= cutoff:
                fresh.append((field.rpartition("|")[0], value))
            else:
                stale.append((field, value))
        return fresh, stale

    async def _refresh_presence(self) -> None:
        """Refresh this node's entries; remove the ghosts of nodes that stopped refreshing theirs, and tell
        the local editors those users left."""
        from . import protocol as P
        from .clock import iso
        deps = self.deps
        for document_id in list(self.held):
            for peer in deps.hub.members(document_id):
                self.here(peer)
            entries = await self.cluster.redis.hgetall(self.presence_key(document_id))
            fresh, stale = self._sorted_entries(entries)
            if not stale:
                continue
            await self.cluster.redis.hdel(self.presence_key(document_id), *(field for field, _ in stale))
            live = {value["p"] for _, value in fresh} | {p.peer_id for p in deps.hub.members(document_id)}
            for peer_id, user_id in {(v["p"], v["u"]) for _, v in stale if v}:
                if peer_id in live:
                    continue
                live.add(peer_id)
                text = P.dumps(P.build(P.SESSION_DISCONNECTED, {"user_id": user_id, "peer_id": peer_id,
                                                                "reason": "node_lost"}, iso(deps.clock())))
                deps.metrics.sent[P.SESSION_DISCONNECTED].inc(deps.hub.publish(document_id, text))

    # -- leases ----------------------------------------------------------------------------------------

    async def _keep_leases(self) -> None:
        """Every third of the lease: renew what we own; for what we follow, take it if its owner is gone."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            for held in list(self.held.values()):
                try:
                    await self._recheck(held)
                except Exception as exc:
                    log.warning("lease of %s: %s", held.document_id, exc)
            try:
                await self._refresh_presence()
            except Exception as exc:
                log.warning("presence: %s", exc)

    async def _recheck(self, held: Held) -> None:
        """Renew the lease we hold (losing the document if someone else has it), or take a lease nobody
        holds; one at a time per document."""
        if held.checking or self.held.get(held.document_id) is not held:
            return
        held.checking = True
        try:
            if held.owner:
                started = asyncio.get_running_loop().time()
                if await self._renew(keys=[self.lease_key(held.document_id)], args=[held.token, int(self.ttl * 1000)]):
                    held.deadline = started + self.ttl
                elif "ignore_lease" not in self.hooks:
                    self._lost(held)
                return
            try:
                if await self._claim(held):  # edits wait (SERVER_ERROR, sent again) while the copy catches up
                    await self._promote(held)
                else:  # still following: said every round, so that a lost hello costs one round at most
                    self.cluster.publish(self.channel(held.document_id), {"t": "hello", "d": held.document_id})
            finally:
                held.moving = False
        finally:
            held.checking = False

    async def _promote(self, held: Held) -> None:
        """The lease became ours: this copy catches up from the store and commits from now on."""
        document = self.deps.documents.get_open(held.document_id)
        if document is None:
            return
        held.inbox.clear()
        if "slow_take_over" in self.hooks:
            await asyncio.sleep(float(self.hooks["slow_take_over"]))
        await self._fill(held, document, None)
        await self.deps.documents.take_over(document)
        log.info("node %s took over %s at revision %d", self.cluster.node_id, held.document_id, document.revision)

    def _lost(self, held: Held) -> None:
        """Someone else holds the lease now: drop this copy (it may be behind, or ahead of the store) and
        close its sockets with 4500, so that its editors reconnect to what is durable."""
        held.owner = False
        log.warning("node %s lost the lease of %s", self.cluster.node_id, held.document_id)
        document = self.deps.documents.get_open(held.document_id)
        if document is not None:
            self.deps.edits.reset(document, "the lease of this document passed to another node")

    def _reset(self, document) -> None:
        """A write of this copy failed (the fence, or the store): it no longer owns anything."""
        held = self.held.get(document.document_id)
        if held is not None and held.owner:
            self.deps.tasks.spawn(self._release_after_reset(held), f"give up {document.document_id}")

    async def _release_after_reset(self, held: Held) -> None:
        held.owner = False
        try:
            await self._release(keys=[self.lease_key(held.document_id)], args=[held.token])
        except Exception as exc:
            log.warning("releasing %s: %s", held.document_id, exc)


class _Moved(Exception):
    """The node asked does not own the document (any more): look at the lease again."""


def _server_error(message: str):
    from .protocol import AppError, ErrorCode
    return AppError(ErrorCode.SERVER_ERROR, message, {})


# -- limits ----------------------------------------------------------------------------------------------

class SharedLimits:
    """Per-session message limits and per-address session-create limits that hold across nodes.

    Messages: each node keeps its token bucket per session (no Redis round trip on a message) and every
    FLUSH adds what its sessions spent to a Redis counter per session; what the counter grew by beyond
    this node's share was spent on other nodes, and is debited from the local bucket. A session spread
    over nodes gets its rate once, give or take what FLUSH lets through. Session creation: a sliding
    window per address in Redis (a sorted set of the creations' times, checked and added to in one
    script), beside the node's own window; like that one it counts what it allowed, for the last 60 s."""

    FLUSH = 0.1  # s

    def __init__(self, cluster: Cluster, limits, clock: Callable[[], float]):
        self.cluster, self.limits, self.clock = cluster, limits, clock
        self._spent: dict[str, int] = {}   # session -> messages spent here since the last flush
        self._seen: dict[str, int] = {}    # session -> its counter after this node's last flush
        self._create = cluster.redis.register_script(_CREATE)
        limits.on_spend = self._spend
        self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())

    def _spend(self, session_id: str) -> None:
        self._spent[session_id] = self._spent.get(session_id, 0) + 1

    async def stop(self) -> None:
        self._flusher.cancel()
        await asyncio.gather(self._flusher, return_exceptions=True)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.FLUSH)
            if not self._spent:
                continue
            try:
                await self.flush()
            except Exception as exc:  # Redis away: each node still holds its own limit
                log.warning("sharing rate limits: %s", exc)

    async def flush(self) -> None:
        spent, self._spent = self._spent, {}
        pipe = self.cluster.redis.pipeline(transaction=False)
        for session_id, n in spent.items():
            key = self.cluster.key("spent", session_id)
            pipe.incrby(key, n)
            pipe.expire(key, 3600)
        totals = (await pipe.execute())[::2]
        now = self.clock()
        for (session_id, n), total in zip(spent.items(), totals):
            seen = self._seen.get(session_id)
            self._seen[session_id] = total
            elsewhere = 0 if seen is None else total - seen - n
            if elsewhere > 0:
                self.limits.buckets.get(session_id, now).debit(now, elsewhere)
        if len(self._seen) > 4 * max(1, len(self.limits.buckets)):  # forget sessions long idle here
            self._seen = {k: v for k, v in self._seen.items() if k in spent}

    async def create_session(self, addr: str | None) -> None:
        """Count a session creation from an address across nodes, or RATE_LIMITED."""
        from .protocol import AppError, ErrorCode
        limit, window = self.limits.session_creates.limit, self.limits.session_creates.window  # the node's own
        now = self.clock()
        allowed, oldest = await self._create(keys=[self.cluster.key("creates", addr or "-")],
                                             args=[repr(now), repr(now - window), limit, uuid.uuid4().hex,
                                                   int(window * 1000)])
        if not allowed:
            raise AppError(ErrorCode.RATE_LIMITED, "too many sessions created from this address; slow down",
                           {"limit_per_minute": limit,
                            "retry_after": seconds(float(oldest) + window - now)})
