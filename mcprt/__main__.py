"""`python -m mcprt`: serve (the default), migrate, events, sessions, bench."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time

from . import __version__
from .audit import EVENT_KINDS, SEVERITIES
from .clock import iso, parse_iso
from .cluster import check_cluster
from .identity import check_auth
from .config import add_settings_arguments, parse_duration, settings_from_namespace

COMMANDS = ("serve", "migrate", "events", "sessions", "history", "bench")
log = logging.getLogger("mcprt")


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad argument told in one line (not the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m mcprt", description=(
        "mcprt: a real-time collaborative editing server. Without a command it serves "
        "(python -m mcprt --port 3000 is python -m mcprt serve --port 3000)."))
    parser.add_argument("--version", action="version", version=f"mcprt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    serve = sub.add_parser("serve", help="serve the API, the WebSocket and the demo (default)")
    add_settings_arguments(serve)
    migrate = sub.add_parser("migrate", help="create or upgrade the database schema")
    migrate.add_argument("--db", default=os.environ.get("MCPRT_DB", "mcprt.db"), help="SQLite database file")
    migrate.add_argument("--list", action="store_true", help="list applied and pending migrations, change nothing")
    events = sub.add_parser("events", help="read the event log (works while the server runs)")
    events.add_argument("--db", default=os.environ.get("MCPRT_DB", "mcprt.db"), help="SQLite database file")
    events.add_argument("--kind", choices=EVENT_KINDS, help="only events of this kind")
    events.add_argument("--severity", choices=SEVERITIES, help="only events of this severity")
    for name in ("type", "user", "document"):
        events.add_argument(f"--{name}", help=f"only events with this {name}")
    events.add_argument("--session", help="only events of this session (its full id, or the first characters "
                        "this command prints)")
    events.add_argument("--addr", help="only events from this client address")
    events.add_argument("--since", help="only events newer than this: a duration back from now (1h, 30m, 7d), "
                        "a date (2026-12-01, midnight UTC) or an RFC 3339 time")
    events.add_argument("--limit", type=int, default=50, help="at most this many (newest), default 50")
    events.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    events.add_argument("--follow", action="store_true", help="keep printing new events until interrupted")
    sessions = sub.add_parser("sessions", help="list sessions from the database")
    sessions.add_argument("--db", default=os.environ.get("MCPRT_DB", "mcprt.db"), help="SQLite database file")
    sessions.add_argument("--state", type=str.capitalize, choices=("Pending", "Active", "Expired", "Invalidated"),
                          help="only sessions in this state (any case)")
    sessions.add_argument("--user", help="only this user's sessions")
    sessions.add_argument("--limit", type=int, default=100, help="at most this many (newest), default 100")
    sessions.add_argument("--json", action="store_true", help="JSON lines (with full session ids) instead of a table")
    history = sub.add_parser("history", help="who edited a document when, and what changed between two revisions")
    history.add_argument("document", help="the document id")
    history.add_argument("--db", default=os.environ.get("MCPRT_DB", "mcprt.db"), help="SQLite file or PostgreSQL URL")
    history.add_argument("--since", help="only edits newer than this: a duration (1d, 2h), a date or an RFC 3339 time")
    history.add_argument("--diff", nargs=2, type=int, metavar=("FROM", "TO"),
                         help="the change from revision FROM to revision TO, as a unified diff of the text")
    history.add_argument("--pause", type=parse_duration, default=300.0,
                         help="a pause longer than this starts a new stretch of one user's edits (default 5m)")
    bench = sub.add_parser("bench", help="measure the server beside a bare Tornado baseline")
    bench.add_argument("--quick", action="store_true", help="a small run (a few minutes; CI's)")
    bench.add_argument("--only", help="comma-separated benchmark names")
    bench.add_argument("--cluster", action="store_true",
                       help="the cluster group alone: two nodes on PostgreSQL and Redis beside one process")
    bench.add_argument("--json", action="store_true", help="print results as JSON too")
    bench.add_argument("--chart", metavar="FILE", help="write an SVG of every row's ratio to its baseline")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "serve")
    args = build_parser().parse_args(argv)
    command = {"serve": cmd_serve, "migrate": cmd_migrate, "events": cmd_events, "sessions": cmd_sessions,
               "history": cmd_history, "bench": cmd_bench}[args.command]
    try:
        return command(args)
    except BrokenPipeError:  # `events | head` closed our stdout: a reader that had enough, not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
        return 0


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": iso(record.created), "level": record.levelname.lower(), "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(level: str, format_: str = "text") -> None:
    """One line per record on stderr (text, or JSON), session ids masked in every message."""
    from .app import MaskingFilter
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if format_ == "json" else
                         logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(MaskingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def cmd_serve(args) -> int:
    try:
        settings = settings_from_namespace(args)
        factory = loop_factory(settings.loop)
        check_auth(settings)
        check_cluster(settings)
    except ValueError as exc:  # before logging is set up: the level may be the bad value
        print(f"error: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(_serve(settings))


def loop_factory(name: str):
    """The event loop factory for --loop: None for asyncio's own."""
    if name == "asyncio":
        return None
    if name == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise ValueError("--loop uvloop needs uvloop: pip install 'mcprt[uvloop]' (or uvloop)") from None
        return uvloop.new_event_loop
    raise ValueError(f"--loop must be asyncio or uvloop, not {name!r}")


async def _serve(settings) -> int:
    import sqlite3

    from .app import Server
    from .storage.base import MigrationError, StoreOpenError
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        server = await Server(settings).start()
    except (MigrationError, StoreOpenError) as exc:
        log.error("%s", exc)
        return 2
    except sqlite3.Error as exc:
        log.error("cannot use database %s: %s", settings.db, exc)
        return 2
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, exc.strerror or exc)
        return 2
    except Exception as exc:  # Redis unreachable (cluster mode), say: one line, not a traceback
        if type(exc).__module__.startswith("redis"):
            log.error("cannot use Redis at %s: %s", settings.redis, exc)
            return 2
        raise
    log.info("mcprt %s serving http://%s:%d/ (database %s)", __version__,
             "localhost" if settings.host in ("127.0.0.1", "0.0.0.0") else settings.host, server.port,
             server.deps.store.describe())
    return await run_until_stopped(server, stop)


async def run_until_stopped(server, stop: asyncio.Event) -> int:
    """Serve until `stop` is set (0) or the database can take no more writes (1), then shut down."""
    waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(server.fatal.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for waiting in waits:
        waiting.cancel()
    if server.fatal.is_set():
        log.critical("shutting down: the database can take no more writes (%s)", server.fatal_reason)
    else:
        log.info("shutting down")
    await server.stop()
    return 1 if server.fatal.is_set() else 0


def _missing_file(url: str) -> bool:
    """A SQLite --db whose file does not exist (a PostgreSQL URL never is)."""
    from .storage import is_postgres
    from .storage.sqlite import path_of
    return not is_postgres(url) and not os.path.exists(path_of(url))


async def _open_store(url: str):
    """The store for a CLI command, or None after saying in one line why it cannot be opened."""
    from .storage import store_for
    from .storage.base import MigrationError, StoreOpenError
    if _missing_file(url):
        print(f"no database at {url} (start the server once, or run: python -m mcprt migrate --db {url})",
              file=sys.stderr)
        return None
    try:
        return await store_for(url).open()
    except (StoreOpenError, MigrationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def cmd_migrate(args) -> int:
    from .storage import is_postgres, store_for
    from .storage.base import MigrationError, StoreOpenError
    from .storage.migrations import discover_migrations
    logging.basicConfig(level="INFO", format="%(message)s")

    async def run() -> int:
        try:
            store = store_for(args.db)
        except StoreOpenError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        try:
            if args.list:
                if _missing_file(args.db):
                    applied = {}
                else:
                    store = await store.open()
                    applied = {m["version"]: m["applied_at"] for m in await store.applied_migrations()}
                for m in discover_migrations(dialect="postgres" if is_postgres(args.db) else "sqlite"):
                    print(f"{m.version:04d}_{m.name}  {'applied ' + applied[m.version] if m.version in applied else 'pending'}")
                return 0
            await store.open()
            rows = await store.applied_migrations()
            print(f"{args.db}: schema at version {rows[-1]['version'] if rows else 0}")
            return 0
        except (MigrationError, StoreOpenError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        finally:
            await store.close()
    return asyncio.run(run())


def since_value(text: str | None) -> float | None:
    """A --since argument as epoch seconds: a duration back from now (1h, 30m, 7d), a date (midnight UTC)
    or an RFC 3339 time."""
    if not text:
        return None
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        pass
    if len(text) == 10:  # 2026-12-01
        return parse_iso(f"{text}T00:00:00Z")
    return parse_iso(text)


_REFUSED = object()


def since_arg(text: str | None, examples: str):
    """since_value, or _REFUSED after saying in one line what --since takes."""
    try:
        return since_value(text)
    except ValueError:
        print(f"error: --since must be a duration ({examples}), a date or an RFC 3339 time, not {text!r}",
              file=sys.stderr)
        return _REFUSED


_COLOURS = {"low": "36", "medium": "33", "high": "31", "critical": "1;31"}  # cyan, yellow, red, bold red


def _line_maker(stream):
    """How an event is printed: on a terminal, cut to its width (a cut marked …) with the severity in
    colour; elsewhere (a pipe, a file) whole."""
    import shutil
    tty = stream.isatty()
    width = shutil.get_terminal_size((120, 24)).columns if tty else None

    def line(row: dict) -> str:
        session = (row["session_id"] or "-")[:8]
        details = json.dumps(row["details"], ensure_ascii=False)
        head = (f"{row['time'][:23]}Z  {row['severity']:<8} {row['kind']:<10} {row['type']:<22} "
                f"user={row['user_id'] or '-'} session={session} doc={row['document_id'] or '-'} "
                f"addr={row['client_addr'] or '-'} ")
        text = head + details
        if width is not None and len(text) > width:
            text = text[:max(width - 1, len(head))] + "…"
        if tty and row["severity"] in _COLOURS:
            severity = f"{row['severity']:<8}"
            text = text.replace(severity, f"\x1b[{_COLOURS[row['severity']]}m{severity}\x1b[0m", 1)
        return text
    return line


def cmd_events(args) -> int:
    since = since_arg(args.since, "1h, 30m, 7d")
    if since is _REFUSED:
        return 2

    from .audit import EventTail, event_json
    line = _line_maker(sys.stdout)

    def show(event) -> None:
        row = event_json(event)
        print(json.dumps(row, ensure_ascii=False) if args.json else line(row), flush=True)

    async def run() -> int:
        store = await _open_store(args.db)
        if store is None:
            return 1
        filters = {"kind": args.kind, "type": args.type, "severity": args.severity, "user_id": args.user,
                   "document_id": args.document, "client_addr": args.addr}
        prefixes = {}
        if args.session:
            if len(args.session) >= 36:
                filters["session_id"] = args.session
            else:
                prefixes["session_id"] = args.session.rstrip("…")
        try:
            rows = await store.events(limit=args.limit, since=since, prefixes=prefixes, **filters)
            if not args.json:
                total = await store.count_events(since=since, prefixes=prefixes, **filters) \
                    if len(rows) == args.limit else len(rows)
                shown = f"showing the newest {len(rows)} of {total} (use --limit)" if total > len(rows) else \
                    f"{len(rows)} event(s)"
                print(f"{shown}, oldest first" + (f", since {iso(since)}" if since else ""))
            for row in reversed(rows):
                show(row)
            if args.follow:
                newest = rows[0].id if rows else next((e.id for e in await store.events(limit=1)), 0)
                tail = EventTail(newest)
                while True:
                    await asyncio.sleep(0.5)
                    for event in tail.take(await store.events(limit=1000, after_id=tail.after, prefixes=prefixes,
                                                              **filters)):
                        show(event)
            return 0
        finally:
            await store.close()
    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 0


def cmd_sessions(args) -> int:
    async def run() -> int:
        store = await _open_store(args.db)
        if store is None:
            return 1
        try:
            records = await store.list_sessions(user_id=args.user, state=args.state, limit=args.limit)
            addresses = [next((e.client_addr for e in await store.events(type="session_created", limit=1,
                                                                         session_id=r.session_id)), None)
                         for r in records] if not args.json else []
        finally:
            await store.close()
        from .sessions import session_json
        rows = [session_json(r, with_id=True) for r in records]
        if args.json:
            for row in rows:
                print(json.dumps(row, ensure_ascii=False))
            return 0
        print(f"{'session':<9} {'state':<12} {'user':<20} {'created':<20} {'expires':<20} {'last_seen':<20} "
              f"{'ended':<16} address")
        for r, address in zip(rows, addresses):
            print(f"{r['session_id'][:8]}… {r['state']:<12} {r['user_id'][:20]:<20} {r['created_at'][:19]:<20} "
                  f"{r['expires_at'][:19]:<20} {(r['last_seen'] or '-')[:19]:<20} {(r['end_reason'] or '-')[:16]:<16} "
                  f"{address or '-'}")
        print(f"{len(rows)} session(s)")
        return 0
    return asyncio.run(run())


def cmd_history(args) -> int:
    """Stretches of edits (one user, no pause longer than --pause) with what they added and removed; or,
    with --diff, what changed between two revisions."""
    since = since_arg(args.since, "1d, 2h")
    if since is _REFUSED:
        return 2

    async def content_at(store, revision: int) -> str:
        from .documents import replay_stored
        return (await replay_stored(store, args.document, revision))[0]

    async def run() -> int:
        store = await _open_store(args.db)
        if store is None:
            return 1
        try:
            document = await store.get_document(args.document)
            if document is None:
                print(f"error: no document {args.document!r}", file=sys.stderr)
                return 1
            last = await store.last_revision(args.document)
            if args.diff:
                low, high = args.diff
                if not (0 <= low <= last and 0 <= high <= last):
                    print(f"error: {args.document} has revisions 0 to {last}", file=sys.stderr)
                    return 2
                before, after = await content_at(store, low), await content_at(store, high)
                print(_readable_diff(before, after, document.format, f"{args.document}@{low}",
                                     f"{args.document}@{high}"), end="")
                return 0
            ops = await store.ops(args.document, 0)
        finally:
            await store.close()
        from .ot import TextOperation
        stretches: list[dict] = []
        for row in ops:
            if since is not None and row.time < since:
                continue
            op = TextOperation.from_json(row.op)
            added = sum(len(part) for part in op.ops if isinstance(part, str))
            removed = -sum(part for part in op.ops if isinstance(part, int) and part < 0)
            current = stretches[-1] if stretches else None
            if current and current["user"] == row.user_id and row.time - current["until"] <= args.pause:
                current.update(until=row.time, to=row.revision, added=current["added"] + added,
                               removed=current["removed"] + removed, edits=current["edits"] + 1)
            else:
                stretches.append({"user": row.user_id, "since": row.time, "until": row.time, "from": row.revision,
                                  "to": row.revision, "added": added, "removed": removed, "edits": 1})
        print(f"{args.document} ({document.format}), revisions 1 to {last}; {len(stretches)} stretch(es) of edits"
              + (f" since {iso(since)}" if since else ""))
        for s in stretches:
            print(f"{iso(s['since'])[:19]} – {iso(s['until'])[11:19]}  {(s['user'] or '-'):<20} revisions "
                  f"{s['from']}–{s['to']} ({s['edits']} edit(s)): +{s['added']} −{s['removed']} characters")
        if stretches:
            print(f"what changed: python -m mcprt history {args.document} --diff {stretches[0]['from'] - 1} "
                  f"{stretches[-1]['to']}")
        return 0
    return asyncio.run(run())


def _readable_diff(before: str, after: str, format_: str, old: str, new: str) -> str:
    """A unified diff of the text, a line per paragraph (an HTML document's text, from its markup)."""
    import difflib
    if format_ == "html":
        from .documents import text_of
        before, after = text_of(before), text_of(after)
    lines = difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True), old, new)
    out = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    return out or f"no change between {old} and {new}\n"


def cmd_bench(args) -> int:
    try:
        from .bench import run_bench
    except ImportError as exc:  # websockets and psutil are the bench extra, not runtime dependencies
        print(f"error: the benchmarks need {exc.name}: pip install 'mcprt[bench]'", file=sys.stderr)
        return 2
    only = args.only.split(",") if args.only else None
    if args.cluster:
        only = [*(only or []), "cluster"]
    return run_bench(quick=args.quick, only=only, as_json=args.json, chart_path=args.chart)


if __name__ == "__main__":
    sys.exit(main())
