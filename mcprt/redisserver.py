"""A throwaway Redis for the tests and the benchmarks: `redis-server` as a direct child on a free loopback
port, nothing saved, stopped by its pid (and with this process: PR_SET_PDEATHSIG).

Without the binary the tests that need it skip, unless MCPRT_REQUIRE_REDIS=1 (CI), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

from .pgcluster import free_port

REQUIRED = os.environ.get("MCPRT_REQUIRE_REDIS") == "1"


def binary() -> str | None:
    return shutil.which("redis-server")


def _stop_with_parent() -> None:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


class RedisServer:
    """One running redis-server; `url(db)` names one of its databases."""

    def __init__(self, path: str):
        self.path, self.port = path, free_port()
        self.proc: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, seconds: float = 10.0) -> "RedisServer":
        self.proc = subprocess.Popen([self.path, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--databases", "64", "--loglevel", "warning"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_stop_with_parent)
        deadline = time.monotonic() + seconds
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {self.proc.stderr.read().decode()[-500:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None
