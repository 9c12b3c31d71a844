"""Instructions per edit in the server, counted by callgrind: a figure this machine repeats to 0.1 %, where
CPU time per edit moves by half between two runs of the same code on a shared VM.

    .venv/bin/python bench/instructions.py [--edits 2000] [--warmup 300]

For each server (mcprt's real server on a fresh SQLite file, and the bare Tornado echo of `mcprt.bench`),
in one run: start it under `valgrind --tool=callgrind` with counting off, send `--warmup` edits one at a
time, switch counting on (`callgrind_control -i on`), send `--edits` more, each after the previous one's
answer, switch it off, and divide. What is counted is the server process's user-space instructions, all
threads (SQLite's and the kernel's work inside syscalls are not). It needs `valgrind` (Debian's package);
a run takes about a minute.

Under callgrind a commit takes tens of milliseconds, which would make the SQLite store send its commits to
the writer thread (it does that after a commit slower than 5 ms on the loop's thread, see
`mcprt.storage.sqlite`); the server is started through this file, which lifts that threshold, so the
path counted is the one taken at full speed. What runs once a second (the checkpoint, and the pass that
indexes message ids, migration 0007) is counted too; under callgrind an edit runs about fifty times
slower, so each such pass covers fewer edits than at full speed and weighs more on each.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from mcprt import bench_client as C  # noqa: E402


def serve(argv: list[str]) -> int:
    """The server, as mcprt.bench_servers runs it, with commits kept on the loop's thread."""
    import mcprt.storage.sqlite as sqlite
    from mcprt import bench_servers
    sqlite._INLINE_SLOW = float("inf")
    return bench_servers.main(argv)


async def count(kind: str, edits: int, warmup: int) -> float:
    """Instructions per edit in a fresh `kind` server (real | bare)."""
    workdir = tempfile.mkdtemp(prefix="mcprt-instructions-")
    out = os.path.join(workdir, "callgrind.out")
    server = [sys.executable, os.path.abspath(__file__), "--serve", kind]
    if kind == "real":
        server += [os.path.join(workdir, "bench.db"), "asyncio"]
    process = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                                *server], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": ROOT})
    try:
        port = int(process.stdout.readline().split()[1])
        target = C.Target(kind, port, process.pid)
        session_id = (await C.create_sessions(target, 1))[0]
        conn = await C.ws_connect(target, session_id, "counted")
        await C._drain([conn])

        async def send(first: int, last: int) -> None:
            for i in range(first, last):
                await conn.send(C.edit(i))
                async with asyncio.timeout(C.STALL):
                    while True:
                        text = await conn.recv()
                        if C.message_type(text) == "error":
                            raise RuntimeError(f"edit e{i} was refused: {text[:300]}")
                        if C.message_id(text) == f"e{i}":
                            break

        await send(0, warmup)
        subprocess.run(["callgrind_control", "-i", "on", str(process.pid)], check=True, capture_output=True)
        await send(warmup, warmup + edits)
        subprocess.run(["callgrind_control", "-i", "off", str(process.pid)], check=True, capture_output=True)
        await conn.close()
    finally:
        process.terminate()
        process.wait()
    total = 0
    for name in glob.glob(out + "*"):  # one file per process (the server does not fork)
        with open(name) as f:
            total += max((int(line.split()[1]) for line in f if line.startswith(("summary:", "totals:"))),
                         default=0)
    shutil.rmtree(workdir, ignore_errors=True)
    if not total:
        raise RuntimeError(f"callgrind counted nothing in the {kind} server")
    return total / edits


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    args = parser.parse_args()
    real = await count("real", args.edits, args.warmup)
    bare = await count("bare", args.edits, args.warmup)
    print(f"instructions per edit, one in flight, {args.edits} edits of 200 bytes (callgrind, server process):")
    print(f"  mcprt (SQLite, committed before the ack) {real:12,.0f}")
    print(f"  bare Tornado JSON echo                   {bare:12,.0f}")
    print(f"  ratio                                    {real / bare:12.2f}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        sys.exit(serve(sys.argv[2:]))
    sys.exit(asyncio.run(main()))
