"""A throwaway PostgreSQL cluster for the tests and the benchmarks: initdb and postgres as a direct child
on a free loopback port, in a temporary folder; a fresh database per use, copied from a migrated template.

initdb and postgres refuse to run as root: as root they run as the `postgres` user through setpriv,
which execs, so the pid held is the server's. Debian keeps the binaries off PATH, in a folder per major
version. Without them the tests that need PostgreSQL skip, unless MCPRT_REQUIRE_POSTGRES=1 (CI), where
that is a failure; the benchmarks say so in their table.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

REQUIRED = os.environ.get("MCPRT_REQUIRE_POSTGRES") == "1"


def _stop_with_parent() -> None:
    """In the child before exec: SIGINT when the parent dies (Linux's PR_SET_PDEATHSIG)."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT)  # 1: PR_SET_PDEATHSIG


def free_port() -> int:
    """A loopback port nobody listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bin_dir() -> str | None:
    """Where initdb and postgres are, or None."""
    if shutil.which("initdb") and shutil.which("postgres"):
        return os.path.dirname(shutil.which("initdb"))
    config = shutil.which("pg_config")
    if config:
        found = subprocess.run([config, "--bindir"], capture_output=True, text=True).stdout.strip()
        if os.path.exists(os.path.join(found, "initdb")):
            return found
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0)
    return os.path.dirname(versions[-1]) if versions else None


class Cluster:
    """One running server; `database()` hands out a fresh migrated database's URL."""

    def __init__(self, bindir: str, fsync: bool = False):
        self.bindir = bindir
        self.folder = tempfile.mkdtemp(prefix="mcprt-pg-")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.fsync = fsync  # the tests: off; the benchmarks: on, as a deployment runs
        self._names = itertools.count(1)
        self._as = self._user_prefix()

    def _user_prefix(self) -> list[str]:
        """As root: run as `postgres`, and stop (SIGINT: a fast shutdown) if the process that started it dies
        without stopping it (a test run killed, say) instead of staying behind."""
        if os.geteuid() != 0:
            return []
        user = pwd.getpwnam("postgres")
        os.chown(self.folder, user.pw_uid, user.pw_gid)
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--pdeathsig=INT"]

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> "Cluster":
        subprocess.run([*self._as, os.path.join(self.bindir, "initdb"), "-D", self._data, "-U", "postgres", "-A",
                        "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"], check=True, capture_output=True,
                       timeout=120)
        self.launch()
        _run(self._template())
        return self

    @property
    def _data(self) -> str:
        return os.path.join(self.folder, "data")

    def launch(self) -> None:
        """Start the server on the cluster's data (again, after halt())."""
        with open(os.path.join(self.folder, "server.log"), "a") as server_log:
            self.proc = subprocess.Popen(
                [*self._as, os.path.join(self.bindir, "postgres"), "-D", self._data, "-k", self.folder,
                 "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                 "-c", f"fsync={'on' if self.fsync else 'off'}", "-c", f"full_page_writes={'on' if self.fsync else 'off'}",
                 "-c", "max_connections=300"],
                stdout=subprocess.DEVNULL, stderr=server_log, preexec_fn=None if self._as else _stop_with_parent)
        _run(self._ready())

    def halt(self) -> None:
        """Stop the server (a fast shutdown: open connections are cut), keeping its data."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    async def _ready(self) -> None:
        import asyncpg
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = await asyncpg.connect(self.url("postgres"), timeout=2)
                await conn.close()
                return
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"PostgreSQL did not start: {self.log()[-2000:]}")
                await asyncio.sleep(0.05)

    async def _template(self) -> None:
        """mcprt_template: migrated once; each test's database is a copy (CREATE DATABASE ... TEMPLATE)."""
        import asyncpg

        from mcprt.storage.postgres import PostgresStore
        conn = await asyncpg.connect(self.url("postgres"))
        await conn.execute("CREATE DATABASE mcprt_template")
        await conn.close()
        store = await PostgresStore(self.url("mcprt_template")).open()
        await store.close()

    def database(self) -> str:
        """A fresh, migrated, empty database."""
        name = f"t{os.getpid()}_{next(self._names)}"

        async def create() -> None:
            import asyncpg
            conn = await asyncpg.connect(self.url("postgres"))
            try:
                await conn.execute(f"CREATE DATABASE {name} TEMPLATE mcprt_template")
            finally:
                await conn.close()
        _run(create())
        return self.url(name)

    def log(self) -> str:
        try:
            with open(os.path.join(self.folder, "server.log")) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.folder, ignore_errors=True)


def _run(coro) -> None:
    """Run a coroutine whether or not an event loop runs in this thread (fixtures are called from both)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    import threading
    failure: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(coro)
        except BaseException as exc:  # handed to the caller
            failure.append(exc)
    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
