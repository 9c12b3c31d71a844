"""The SQLite backend, the embedded default: a WAL database file, one writer connection, a reader.

Reads go through aiosqlite. Writes go through one plain sqlite3 connection: a small batch commits on the
event loop's thread (a WAL commit with synchronous=NORMAL only write()s to the page cache, about 25 us,
where a hop to a thread and back costs 100-150 us of wall time and CPU on both threads); a large batch, a
held lock, and the seconds after a slow commit go to the writer thread, where a stall waits alone. A
checkpoint runs once a second with commits, on the writer thread, between two batches. Times are stored
as RFC 3339 text with microseconds (they sort as text).
"""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import aiosqlite

from ..clock import iso, parse_iso
from .wal import inspect_wal
from .base import StoreOpenError
from .batch import Lost, Refused, Unit, WriterBroken, grouped
from .migrations import MIGRATIONS_DIR, Migration, discover_migrations, unknown_versions
from .sql import STATEMENTS, SqlStore

log = logging.getLogger("mcprt.store")

_INLINE_MAX_WRITES = 512
_INLINE_MAX_CHARS = 256 * 1024
_INLINE_SLOW = 0.005      # seconds: a slower commit on the loop sends the next ones to the thread...
_INLINE_PAUSE = 5.0       # ...for this long
CHECKPOINT_INTERVAL = 1.0  # seconds
_SQLITE_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (primary codes)
BUSY_TIMEOUT_MS = 5000
_PRAGMAS = ("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL", "PRAGMA foreign_keys=ON",
            f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def path_of(url: str) -> str:
    """The file of `mcprt.db`, `sqlite:///rel.db` or `sqlite:////abs.db` (`sqlite://:memory:` too)."""
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://"):]
        return rest[1:] if rest.startswith("/") else rest
    return url


def _check_openable(path: str) -> None:
    """Refuse, in one sentence, a path SQLite would answer only with "unable to open database file"."""
    if path == ":memory:" or path.startswith("file:"):
        return
    target = Path(path)
    if target.is_dir():
        raise StoreOpenError(f"cannot open database {path}: it is a directory")
    if not target.parent.is_dir():
        raise StoreOpenError(f"cannot open database {path}: the folder {target.parent} does not exist")


def _identities(path: str) -> dict[str, tuple[int, int]]:
    """(st_dev, st_ino) of the database file and its WAL, as opened (a path of no file: nothing to check)."""
    found = {}
    for name in (path, path + "-wal"):
        try:
            st = os.stat(name)
        except OSError:
            continue
        found[name] = (st.st_dev, st.st_ino)
    return found


# The exactly-once index, kept off the commit path (migration 0007): op_messages is filled from the ops past
# a document's messages_through, and a lookup reads both.
# A pass indexes _INDEX_CHUNK revisions of each of _INDEX_DOCUMENTS documents at most (about 2 ms at 1,000
# rows: the batches behind it wait that long), and asks for the next pass at once while any is behind.
_INDEX_CHUNK = 1000
_INDEX_DOCUMENTS = 16
_INDEX_BOUNDS = ("SELECT messages_through, (SELECT coalesce(max(revision), 0) FROM ops WHERE document_id = ?1)"
                 " FROM documents WHERE document_id = ?1")
_INDEX_MESSAGES = (  # (a duplicate, which no commit makes: the first revision stays)
    "INSERT OR IGNORE INTO op_messages (document_id, peer_id, message_id, revision)"
    " SELECT document_id, peer_id, message_id, revision FROM ops WHERE document_id = ? AND revision > ?"
    " AND revision <= ? AND peer_id IS NOT NULL AND message_id IS NOT NULL ORDER BY revision")
_MESSAGES_THROUGH = "UPDATE documents SET messages_through = ? WHERE document_id = ?"
_UNINDEXED = ("SELECT document_id FROM documents WHERE messages_through <"
              " (SELECT coalesce(max(revision), 0) FROM ops WHERE ops.document_id = documents.document_id)")
_MESSAGE_REVISIONS = (
    "SELECT message_id, revision FROM op_messages WHERE document_id = ?1 AND peer_id = ?2"
    " UNION ALL SELECT message_id, revision FROM ops WHERE document_id = ?1 AND peer_id = ?2"
    " AND message_id IS NOT NULL AND revision >"
    " coalesce((SELECT messages_through FROM documents WHERE document_id = ?1), 0)")


def _still_open(path: str) -> str:
    """Where a removed file is still reachable while this process runs (Linux), as a hint for the log."""
    gone = os.path.realpath(path) + " (deleted)"
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return ""
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == gone:
                return f"; until this process exits its data is still in /proc/{os.getpid()}/fd/{fd}"
        except OSError:  # closed meanwhile (the listing's own descriptor, say)
            continue
    return ""


def _suffix(path: str, database: str) -> str:
    return "'s WAL" if path != database else ""


def _is_busy(exc: Exception) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_BUSY_CODES


class SqliteStore(SqlStore):
    """One writer connection fed by the group commit, and one reader connection."""

    dialect = "sqlite"

    def __init__(self, url: str, migrations_dir: Path | None = None,
                 checkpoint_interval: float = CHECKPOINT_INTERVAL, check_wal: bool = False):
        super().__init__()
        self.url = url
        self.path = path_of(url)
        self.check_wal = check_wal  # the server's open: no other process writes the WAL being read
        self.checkpoint_interval = checkpoint_interval
        self.migrations_dir = migrations_dir if migrations_dir is not None else MIGRATIONS_DIR / "sqlite"
        self._writer: sqlite3.Connection | None = None
        self._writer_thread: ThreadPoolExecutor | None = None
        self._reader: aiosqlite.Connection | None = None
        self._checkpointer: asyncio.Task | None = None
        self._commits_since_checkpoint = 0
        self._inline_after = 0.0  # time.perf_counter() before which batches commit on the writer thread
        self._restart_pending = False  # the next commit starts the WAL over: on the writer thread
        self._identity: dict[str, tuple[int, int]] = {}  # path -> (st_dev, st_ino) at open
        self._unindexed: set[str] = set()  # documents with ops past their messages_through
        self._message_index = True  # the schema has op_messages (migration 0007)
        self._checkpoint_wanted = False  # the next maintenance pass checkpoints (else it only indexes)

    def describe(self) -> str:
        return self.path

    def lock_exclusive(self):
        """The server's claim on the file: one process serves a SQLite database (several nodes share
        PostgreSQL and Redis instead). An open file holding an exclusive flock on `<db>.lock` (released
        when closed, or when the process dies), or StoreOpenError naming the holder."""
        if self.path == ":memory:" or not os.path.isdir(os.path.dirname(os.path.abspath(self.path))):
            return None  # nothing to share; a missing folder is reported by open()
        lock = open(f"{self.path}.lock", "a+")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise StoreOpenError(f"{self.path} is served by {holder} already: one process serves a SQLite "
                                 "file; for several nodes use --db postgresql://… with --redis") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"mcprt pid {os.getpid()}\n")
        lock.flush()
        return lock

    # -- life cycle --------------------------------------------------------------------------------------

    async def open(self) -> "SqliteStore":
        """Connect, migrate, and start the writer; StoreOpenError when the path is not a database."""
        _check_openable(self.path)
        recovery = inspect_wal(self.path + "-wal") if self.check_wal else None
        self._writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mcprt-writer")
        try:
            try:
                self._writer = await self._on_writer(self._connect_writer)
            except sqlite3.DatabaseError as exc:
                raise StoreOpenError(f"cannot open database {self.path}: {exc}") from None
            await self.migrate()
            if recovery is not None and recovery.lost:
                await self._on_writer(self._log_last_revisions)
            self._identity = _identities(self.path)
            self._message_index = bool(await self._on_writer(
                self._read_writer, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'op_messages'"))
            if self._message_index:  # (not in a schema migrated only part of the way, as some tests make)
                self._unindexed = {row[0] for row in await self._on_writer(self._read_writer, _UNINDEXED)}
            # Commits on the loop's thread never wait for a lock; the writer thread's set their own timeout.
            await self._on_writer(self._writer.execute, "PRAGMA busy_timeout=0")
        except BaseException:
            await self._close_writer()
            raise
        self._reader = await self._connect()
        self._start_writer()
        self._checkpointer = asyncio.get_running_loop().create_task(self._checkpoint_loop())
        return self

    async def _connect(self) -> aiosqlite.Connection:
        """The reader connection."""
        db = await aiosqlite.connect(self.path, isolation_level=None)
        for pragma in _PRAGMAS:
            await db.execute(pragma)
        return db

    def _connect_writer(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            for pragma in _PRAGMAS:
                db.execute(pragma)
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()  # not a database: fail here
        except BaseException:
            db.close()
            raise
        # Commits never checkpoint (that fsyncs, and would stall the batch that triggers it every
        # ~80 commits); _checkpoint_loop does it once a second instead.
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute("PRAGMA journal_size_limit=16777216")  # a WAL reset after a busy second shrinks to 16 MB
        return db

    def _on_writer(self, fn: Callable, *args: Any) -> asyncio.Future:
        """Run fn on the writer thread."""
        return asyncio.get_running_loop().run_in_executor(self._writer_thread, fn, *args)

    async def _close_writer(self) -> None:
        if self._writer is not None:
            try:
                await self._on_writer(self._writer.close)
            except RuntimeError:  # the writer thread is gone (a failed store): close it from here
                self._writer.close()
            self._writer = None
        if self._writer_thread is not None:
            self._writer_thread.shutdown(wait=True)
            self._writer_thread = None

    async def _checkpoint_loop(self) -> None:
        """Every interval with commits, ask the write loop for a checkpoint: it runs on the writer thread
        between two batches, so no write runs beside it (it copies the whole WAL, and the next commit
        starts the WAL over) and none touches the connection while it does."""
        while True:
            await asyncio.sleep(self.checkpoint_interval)
            due = self._commits_since_checkpoint or (self._unindexed and self._message_index)
            if due and self.failed is None:  # a failed store stays as it is
                self._commits_since_checkpoint = 0
                self._checkpoint_wanted = True
                self.request_maintenance()

    async def _maintain(self) -> None:
        """A pass between two batches: the next chunk of message ids to index, and the checkpoint that
        _checkpoint_loop asked for (a pass asked for only to go on indexing does not checkpoint)."""
        await self._index_pass()
        if self._checkpoint_wanted:
            self._checkpoint_wanted = False
            await self._checkpoint_pass()

    async def _index_pass(self) -> None:
        if self._unindexed and self._message_index:
            documents = set(itertools.islice(self._unindexed, _INDEX_DOCUMENTS))
            self._unindexed -= documents
            try:
                behind = await self._on_writer(self._index_messages, documents)
            except sqlite3.Error as exc:  # a lock another process holds, say: next time
                self._unindexed |= documents
                log.warning("indexing message ids failed: %s", exc)
            else:
                self._unindexed |= behind
                if self._unindexed and self.failed is None:  # the rest in the next pass, after the batches
                    self.request_maintenance()             # queued meanwhile: commits wait one chunk at most

    async def _checkpoint_pass(self) -> None:
        try:
            _, frames, copied = await self._on_writer(self._checkpoint, "PASSIVE")
        except sqlite3.Error as exc:  # a reader holding an old snapshot, say: next time
            log.warning("checkpoint failed: %s", exc)
            return
        # Every frame copied: the next commit starts the WAL over, and truncates a WAL past
        # journal_size_limit (6-10 ms for a second of single edits here): that commit goes to the thread.
        self._restart_pending = frames > 0 and frames == copied

    def _checkpoint(self, mode: str) -> tuple:
        """On the writer thread. The row is read here: a cursor handed back to the loop would keep the
        PRAGMA's statement open until the loop dropped it, and a COMMIT of the next batch, running
        meanwhile, would fail with "SQL statements in progress"."""
        return tuple(self._writer.execute(f"PRAGMA wal_checkpoint({mode})").fetchone())

    def _read_writer(self, sql: str) -> list[tuple]:
        """On the writer thread: a read through the writer connection (while opening)."""
        return self._writer.execute(sql).fetchall()

    def _index_messages(self, documents: set[str]) -> set[str]:
        """On the writer thread, between two batches: the message ids of these documents' next ops past
        their messages_through (_INDEX_CHUNK revisions each at most) into op_messages, in one transaction;
        the documents that still have ops past it."""
        db, behind = self._writer, set()
        db.execute("BEGIN IMMEDIATE")
        try:
            for document_id in documents:
                bounds = db.execute(_INDEX_BOUNDS, (document_id,)).fetchone()
                if bounds is None:  # deleted meanwhile (its entries went with it)
                    continue
                through, last = bounds
                upto = min(last, through + _INDEX_CHUNK)
                db.execute(_INDEX_MESSAGES, (document_id, through, upto))
                db.execute(_MESSAGES_THROUGH, (upto, document_id))
                if upto < last:
                    behind.add(document_id)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return behind

    def _log_last_revisions(self) -> None:
        """On the writer thread, after a recovery that dropped frames: what each document kept."""
        rows = self._writer.execute("SELECT document_id, max(revision), max(time) FROM ops GROUP BY document_id"
                                    " ORDER BY 3 DESC LIMIT 20").fetchall()
        log.info("after recovery, the last revision of the %d most recently edited documents: %s", len(rows),
                 ", ".join(f"{d} at {r}" for d, r, _ in rows) or "none")

    async def close(self) -> None:
        """Drain the queue (every accepted write is committed), then close both connections."""
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
            self._checkpointer = None
        await self._stop_writer()
        if self._reader is not None:
            await self._reader.close()
            self._reader = None
        await self._close_writer()

    # -- migrations ----------------------------------------------------------------------------------

    async def migrate(self) -> list[Migration]:
        """Apply pending migrations, each with its schema_migrations row in one transaction."""
        return await self._on_writer(self._migrate)

    def _migrate(self) -> list[Migration]:
        db = self._writer
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)")
        known = discover_migrations(self.migrations_dir)
        applied = dict(db.execute("SELECT version, name FROM schema_migrations").fetchall())
        unknown_versions(set(applied), known, self.path)
        done = []
        for migration in known:
            if migration.version in applied:
                continue
            db.execute("BEGIN IMMEDIATE")
            try:
                for statement in migration.statements():
                    db.execute(statement)
                db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) "
                    "VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                    (migration.version, migration.name))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            log.info("applied migration %04d_%s", migration.version, migration.name)
            done.append(migration)
        if done:
            self._checkpoint("TRUNCATE")  # the new schema into the main file at once
        return done

    # -- times and reads --------------------------------------------------------------------------------

    _time_in = staticmethod(iso)  # a time is stored as RFC 3339 text (iso itself: one call fewer per row)
    _time_out = staticmethod(parse_iso)

    async def _fetch(self, sql: str, params: tuple = ()) -> list[tuple]:
        return list(await self._reader.execute_fetchall(sql, params))

    async def message_revisions(self, document_id: str, peer_id: str) -> dict[str, int]:
        if not self._message_index:
            return await super().message_revisions(document_id, peer_id)
        found: dict[str, int] = {}
        for message_id, revision in await self._fetch(_MESSAGE_REVISIONS, (document_id, peer_id)):
            if found.get(message_id, revision) >= revision:  # (a duplicate, which no commit makes: the first)
                found[message_id] = revision
        return found

    # -- commits ---------------------------------------------------------------------------------------

    sync_commits = True  # a batch that fits commits on the loop's thread (_commit_now)

    async def _commit(self, units: list[Unit]) -> None:
        groups = self._groups(units)
        started = time.perf_counter()
        if not self._inline_fits(groups, started) or not self._commit_inline(groups, started):
            try:
                waiting = self._on_writer(self._commit_waiting, groups)
            except RuntimeError as exc:  # the writer thread is gone
                raise WriterBroken(f"the writer thread cannot run: {exc}") from exc
            await waiting
            self._restart_pending = False
        self._committed()

    def _commit_now(self, units: list[Unit]) -> bool:
        groups = self._groups(units)
        started = time.perf_counter()
        if not self._inline_fits(groups, started) or not self._commit_inline(groups, started):
            return False
        self._committed()
        return True

    def _groups(self, units: list[Unit]) -> list:
        try:
            self._writer.in_transaction  # noqa: B018 (a closed connection raises)
        except sqlite3.ProgrammingError as exc:
            raise WriterBroken(f"the writer connection cannot be used: {exc}") from exc
        if len(units) == 1 and len(units[0].writes) == 1:  # one row (an edit at low load): nothing to group
            write = units[0].writes[0]
            if write.kind == "insert_op":
                self._unindexed.add(write.values[0])
            return [(STATEMENTS[write.kind], [self._times(write.kind, write.values)], units[0].writes)]
        groups = []
        for kind, writes in grouped(units):
            if kind == "insert_op":
                self._unindexed.update(w.values[0] for w in writes)
            groups.append((STATEMENTS[kind], [self._times(kind, w.values) for w in writes], writes))
        return groups

    def _committed(self) -> None:
        self._commits_since_checkpoint += 1
        lost = self._file_problem()
        if lost is not None:
            raise Lost(lost[0], f"; {lost[1]}{_still_open(lost[1])}")

    def _inline_fits(self, groups: list, now: float) -> bool:
        if now < self._inline_after or self._restart_pending:
            return False
        count = chars = 0
        for _, rows, _ in groups:
            count += len(rows)
            for row in rows:
                for value in row:
                    if value.__class__ is str:
                        chars += len(value)
        return count <= _INLINE_MAX_WRITES and chars <= _INLINE_MAX_CHARS

    def _commit_inline(self, groups: list, started: float) -> bool:
        """The batch in one transaction on this (the loop's) thread; False when it did not commit: then
        the writer thread commits it (waiting for a lock another process holds; here it is not waited for)."""
        if self._writer.in_transaction:
            return False
        try:  # the connection's busy timeout is 0 except while the writer thread commits
            self._execute(groups)
            return True
        except Exception:
            return False
        finally:
            if time.perf_counter() - started > _INLINE_SLOW:
                self._inline_after = time.perf_counter() + _INLINE_PAUSE

    def _commit_waiting(self, groups: list) -> None:
        """On the writer thread, waiting up to BUSY_TIMEOUT_MS for a lock another process holds."""
        db = self._writer
        db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        try:
            if db.in_transaction:  # left open by a failure we did not see end: start clean
                db.execute("ROLLBACK")
            try:
                self._execute(groups)
            except Exception as exc:
                if _is_busy(exc):  # another process holds the lock: unit by unit would wait for it per unit
                    raise Refused(exc) from exc
                raise
        finally:
            db.execute("PRAGMA busy_timeout=0")

    def _execute(self, groups: list) -> None:
        """One transaction; each group of one kind is one executemany (a counted write: one execute). A
        batch of one row is one statement, its own transaction (no BEGIN and COMMIT to run)."""
        db = self._writer
        if len(groups) == 1 and len(groups[0][1]) == 1:
            sql, rows, writes = groups[0]
            writes[0].result = db.execute(sql, rows[0]).rowcount
            return
        db.execute("BEGIN")
        try:
            for sql, rows, writes in groups:
                if writes[0].counted:
                    writes[0].result = db.execute(sql, rows[0]).rowcount
                else:
                    db.executemany(sql, rows)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # some errors (a full disk) have rolled it back already
                db.execute("ROLLBACK")
            raise

    def _file_problem(self) -> tuple[str, str] | None:
        """After a commit: why the database at `path` is no longer the file this writer opened (removed or
        replaced: whatever it commits now is lost on restart) and which path, or None."""
        for path, identity in self._identity.items():
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return f"the database file{_suffix(path, self.path)} was removed", path
            except OSError as exc:
                return f"the database file{_suffix(path, self.path)} cannot be checked: {exc.strerror}", path
            if (st.st_dev, st.st_ino) != identity:
                return f"the database file{_suffix(path, self.path)} was replaced by another file", path
        return None
