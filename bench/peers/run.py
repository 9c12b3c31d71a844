"""mcprt's edit round trip beside ShareDB, Hocuspocus and pycrdt-websocket, in one run on this machine.

One editor appends one character per edit to one document, --window edits in flight (1 by default),
for --seconds after --warmup. Per server: acknowledged edits per second, and the server process's CPU
(utime + stime of all its threads, from /proc/PID/stat, read around the timed part) per edit. Medians
of --reps repetitions, the servers taking turns within each. Run it with mcprt's venv:
`.venv/bin/python bench/peers/run.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PYCRDT_PYTHON = HERE / ".venv-pycrdt" / "bin" / "python"
NPM_LINE = "npm ci --prefix bench/peers"
VENV_LINE = ("python3 -m venv bench/peers/.venv-pycrdt && "
             "bench/peers/.venv-pycrdt/bin/pip install -r bench/peers/requirements-pycrdt.txt")
TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Peer:
    name: str
    server: str  # which server process: mcprt, sharedb, hocuspocus, pycrdt
    client: tuple[str, ...]  # node script and its flags
    echo: bool  # True: an edit counts when a second client receives it; False: at the server's ack
    how: str  # who drives it and what answers an edit, for the legend


PEERS = (
    Peer("mcprt", "mcprt", ("mcprt_client.js",), False,
         "Node ws client; the edit_ack with the edit's id"),
    Peer("mcprt-echo", "mcprt", ("mcprt_client.js", "--echo"), True,
         "Node ws client; the realtime_edit broadcast reaching a second socket"),
    Peer("sharedb", "sharedb", ("sharedb_client.js",), False,
         "sharedb's Node client (text-unicode); submitOp's callback, the server's ack"),
    Peer("hocuspocus", "hocuspocus", ("hocuspocus_client.js",), False,
         "HocuspocusProvider (Node, ws); the server's sync-status ack (unsyncedChanges falls by one per answer)"),
    Peer("hocuspocus-echo", "hocuspocus", ("hocuspocus_client.js", "--echo"), True,
         "HocuspocusProvider (Node, ws); the update reaching a second provider"),
    Peer("pycrdt", "pycrdt", ("pycrdt_client.js",), True,
         "y-websocket WebsocketProvider (Node, ws); the update reaching a second provider (no ack in the protocol)"),
    Peer("tornado-echo", "tornado-echo", ("mcprt_client.js", "--bare"), False,
         "Node ws client, mcprt's edit message; a bare Tornado WebSocketHandler echoing it (bench's baseline)"),
    Peer("asyncio-echo", "asyncio-echo", ("mcprt_client.js", "--bare"), False,
         "Node ws client, mcprt's edit message; a bare asyncio Protocol echoing it (a Python server's floor)"),
    Peer("asyncio-commit", "asyncio-commit", ("mcprt_client.js", "--bare"), False,
         "Node ws client, mcprt's edit message; the asyncio echo committing each message to SQLite first "
         "(a durable Python server's floor)"),
    Peer("mcprt-uvloop", "mcprt-uvloop", ("mcprt_client.js",), False,
         "Node ws client; the edit_ack with the edit's id, from mcprt on uvloop (--loop uvloop)"),
)
PYTHON_HOW = ("mcprt.bench_client (Python websockets; edit_rate at --window: 200-byte replaces at position 0, "
              "reference mode); the edit_ack")


class Failed(Exception):
    pass


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process, all its threads, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of stat(5)


def read_line(proc: subprocess.Popen, timeout: float, what: str) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else None
    if not line:
        raise Failed(f"{what}: {'no answer in %.0f s' % timeout if line is None else 'it ended'}")
    return line.strip()


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def server_command(server: str, workdir: str, run: int) -> list[str]:
    if server in ("mcprt", "mcprt-uvloop"):
        db = os.path.join(workdir, f"mcprt-{run}.db")
        return [sys.executable, "-m", "mcprt.bench_servers", "real", db, server.partition("-")[2] or "asyncio"]
    if server == "pycrdt":
        return [str(PYCRDT_PYTHON), str(HERE / "pycrdt_server.py")]
    if server == "tornado-echo":
        return [sys.executable, "-m", "mcprt.bench_servers", "bare"]
    if server == "asyncio-echo":
        return [sys.executable, str(HERE / "asyncio_echo_server.py")]
    if server == "asyncio-commit":
        return [sys.executable, str(HERE / "asyncio_echo_server.py"), "--commit",
                os.path.join(workdir, f"echo-{run}.db")]
    return ["node", str(HERE / f"{server}_server.js")]


def start(server: str, workdir: str, run: int, log) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(server_command(server, workdir, run), stdout=subprocess.PIPE, stderr=log, text=True,
                            cwd=workdir, env=env)
    try:
        return proc, int(read_line(proc, 60, f"{server} server did not start").split()[-1])  # mcprt: "PORT n"
    except (Failed, ValueError):
        stop(proc)
        raise


def drive(peer: Peer, port: int, pid: int, args) -> tuple[float, float]:
    """Run the peer's client against the server; (edits/s, server CPU ms per edit) of the timed part."""
    flags = []
    if peer.server.startswith("mcprt"):
        flags = ["--format", args.mcprt_format] + (["--lean"] if args.mcprt_mode == "lean" else [])
    client = subprocess.Popen(["node", str(HERE / peer.client[0]), *peer.client[1:], *flags, "--port", str(port),
                               "--warmup", str(args.warmup), "--seconds", str(args.seconds),
                               "--window", str(args.window)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=HERE)
    try:
        if read_line(client, args.warmup + 30, "the client's warm-up") != "timing":
            raise Failed("the client said something other than 'timing'")
        before = cpu_seconds(pid)
        client.stdin.write("go\n")
        client.stdin.flush()
        result = json.loads(read_line(client, args.seconds + 30, "the client's timed part"))
        cpu = cpu_seconds(pid) - before
        client.stdin.write("stop\n")
        client.stdin.close()
        client.wait(20)
    except (Failed, ValueError, OSError, subprocess.TimeoutExpired) as exc:
        client.kill()
        raise Failed(f"{exc}; client said: {client.stderr.read().strip()[-500:] or 'nothing'}") from None
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    if client.returncode:
        raise Failed(f"client exited {client.returncode}: {client.stderr.read().strip()[-500:]}")
    return result["rate"], 1000 * cpu / max(result["edits"], 1)


def drive_python(port: int, pid: int, args) -> tuple[float, float]:
    """mcprt.bench_client's edit_rate, --window in flight (200-byte replaces at position 0, reference mode), on
    documents made first in --mcprt-format by the user its session will have."""
    sys.path.insert(0, str(ROOT))
    from mcprt import bench_client as C

    async def both():
        target = C.Target("mcprt", port, pid)
        session_id = (await C.create_sessions(target, 1))[0]
        for document_id in ("peers-warmup", "peers-timed"):
            await C.create_document(target, session_id, document_id, args.mcprt_format)
        await C.edit_rate(target, args.warmup, args.window, "peers-warmup")
        return await C.edit_rate(target, args.seconds, args.window, "peers-timed"), target.errors
    result, errors = asyncio.run(both())
    if errors:
        raise Failed(f"the server answered with errors: {errors[0]}")
    return result["rate"], 10 * result["cpu"] / result["rate"]  # cpu: percent of one core over the timed part


def missing(peers: list[Peer]) -> list[str]:
    servers = {p.server for p in peers}
    problems = []
    if not shutil.which("node"):
        problems.append("Node is missing: install Node 18 or newer (node on PATH).")
    if not (HERE / "node_modules").is_dir():
        problems.append(f"The peers' npm packages are missing: run {NPM_LINE}")
    if "pycrdt" in servers and not PYCRDT_PYTHON.exists():
        problems.append(f"The pycrdt venv is missing: run {VENV_LINE}")
    return problems


def table(peers: list[Peer], results: dict[str, list[tuple[float, float]]], args) -> str:
    medians = {name: (statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs))
               for name, runs in results.items() if runs}
    rows = [("server", "counted at", "edits/s", "server CPU ms/edit", "x mcprt", "each rep: edits/s CPU-ms")]
    for peer in peers:
        runs = results[peer.name]
        base = medians.get("mcprt-echo" if peer.echo else "mcprt")
        rate, cpu = medians.get(peer.name, (None, None))
        rows.append((peer.name, "2nd client" if peer.echo else "server ack",
                     f"{rate:.0f}" if rate else "failed", f"{cpu:.3f}" if rate else "-",
                     f"{rate / base[0]:.2f}" if rate and base else "-",
                     "  ".join(f"{r:.0f} {c:.3f}" for r, c in runs)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i in (0, 1, 5) else cell.rjust(w) for i, (cell, w) in
                       enumerate(zip(row, widths))).rstrip() for row in rows]
    lines.append(f"\nMedians of {args.reps} rep(s) of {args.seconds:g} s after {args.warmup:g} s warm-up, "
                 f"{args.window} edit(s) in flight; "
                 f"x mcprt: against mcprt for server acks, mcprt-echo for 2nd-client rows; "
                 f"mcprt: a {args.mcprt_format} document, its Node client in {args.mcprt_mode} mode. "
                 "Each row's client and what counted an edit:")
    for peer in peers:
        python = peer.name == "mcprt" and args.mcprt_client == "python"
        lines.append(f"  {peer.name}: {PYTHON_HOW if python else peer.how}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="timed part of each run (default 4)")
    parser.add_argument("--warmup", type=float, default=1.0, help="edits before the timed part (default 1 s)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions, servers alternating (default 3)")
    parser.add_argument("--window", type=int, default=1,
                        help="edits in flight per editor (default 1); ShareDB's client sends one op at a time "
                             "and composes the rest into the next")
    parser.add_argument("--only", help="comma-separated rows: " + ",".join(p.name for p in PEERS))
    parser.add_argument("--mcprt-client", choices=("node", "python"), default="node",
                        help="drive the mcprt row with mcprt_client.js (default) or mcprt.bench_client")
    parser.add_argument("--mcprt-mode", choices=("lean", "reference"), default="lean",
                        help="lean: offer mcprt.ops.v1 (acks carry the length); reference: acks carry the content")
    parser.add_argument("--mcprt-format", choices=("text", "html"), default="text",
                        help="the format of mcprt's document: text (default, as the peers') or html (sanitized)")
    args = parser.parse_args(argv)
    if args.window < 1:
        parser.error("--window must be 1 or more")
    names = args.only.split(",") if args.only else [p.name for p in PEERS]
    unknown = set(names) - {p.name for p in PEERS}
    if unknown:
        parser.error(f"unknown in --only: {', '.join(sorted(unknown))}; known: {', '.join(p.name for p in PEERS)}")
    peers = [p for p in PEERS if p.name in names]
    problems = missing(peers)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    results: dict[str, list[tuple[float, float]]] = {p.name: [] for p in peers}
    failures = 0
    with tempfile.TemporaryDirectory(prefix="mcprt-peers-") as workdir:
        for rep in range(args.reps):
            for n, peer in enumerate(peers):
                log_path = os.path.join(workdir, f"{peer.name}-{rep}.log")
                try:
                    with open(log_path, "w") as log:
                        proc, port = start(peer.server, workdir, rep * len(peers) + n, log)
                    try:
                        if peer.name == "mcprt" and args.mcprt_client == "python":
                            figures = drive_python(port, proc.pid, args)
                        else:
                            figures = drive(peer, port, proc.pid, args)
                    finally:
                        stop(proc)
                except Exception as exc:  # noqa: BLE001 (a run that failed is reported; the others go on)
                    failures += 1
                    log_tail = Path(log_path).read_text(errors="replace").strip()[-800:]
                    print(f"rep {rep + 1} {peer.name}: FAILED: {exc}\n  server log: {log_tail or '(empty)'}",
                          file=sys.stderr)
                    continue
                results[peer.name].append(figures)
                print(f"rep {rep + 1}/{args.reps} {peer.name}: {figures[0]:.0f} edits/s, "
                      f"{figures[1]:.3f} server CPU ms/edit", file=sys.stderr)
    print(table(peers, results, args))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
