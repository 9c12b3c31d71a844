"""Reading a WAL left by an unclean stop before SQLite recovers it, to log what recovery will keep and drop."""

from __future__ import annotations

import logging
import os
import shutil
import struct
import time
from dataclasses import dataclass

log = logging.getLogger("mcprt.store")

_WAL_MAGIC = (0x377F0682, 0x377F0683)  # the low bit: checksums over big-endian words
_WAL_VERIFY_MAX = 64 << 20  # bytes: beyond, checksums take seconds (pure Python) and are skipped


@dataclass(frozen=True)
class WalRecovery:
    """What a WAL left by an unclean stop holds, read as SQLite's recovery reads it
    (https://www.sqlite.org/fileformat2.html#walformat): frames up to the last one that is a commit
    and whose cumulative checksum and salts are right are kept; everything after is ignored."""

    size: int
    frames: int = 0          # kept: valid frames up to and including the last valid commit
    commits: int = 0
    kept_bytes: int = 32
    lost_frames: int = 0     # frames of the current generation (the header's salts) that are ignored
    lost_commits: int = 0    # ...of which commit frames: transactions that had been committed
    bad_checksum: bool = False
    note: str = ""           # the header is unusable
    verified: bool = True    # False: larger than _WAL_VERIFY_MAX, not read

    @property
    def discarded_bytes(self) -> int:
        return self.size - self.kept_bytes

    @property
    def lost(self) -> bool:
        """Frames of committed or corrupted writes are ignored (not just an unfinished transaction or
        frames of a WAL generation already copied into the database)."""
        return bool(self.lost_commits or self.bad_checksum or self.note)


def _wal_checksum(data: bytes, s0: int, s1: int, big_endian: bool) -> tuple[int, int]:
    words = struct.unpack(f"{'>' if big_endian else '<'}{len(data) // 4}I", data)
    for i in range(0, len(words), 2):
        s0 = (s0 + words[i] + s1) & 0xFFFFFFFF
        s1 = (s1 + words[i + 1] + s0) & 0xFFFFFFFF
    return s0, s1


def read_wal(wal: str) -> WalRecovery | None:
    """What SQLite will keep of the WAL at `wal` (None when there is none, or it is empty)."""
    try:
        size = os.path.getsize(wal)
    except OSError:
        return None
    if size == 0:
        return None
    if size > _WAL_VERIFY_MAX:
        return WalRecovery(size, kept_bytes=size, verified=False)
    with open(wal, "rb") as f:
        data = f.read()
    if len(data) < 32:
        return WalRecovery(size, kept_bytes=0, note="shorter than its 32-byte header")
    magic, _version, page_size, _seq, salt1, salt2, c0, c1 = struct.unpack(">8I", data[:32])
    big = magic & 1 == 1
    if magic not in _WAL_MAGIC or _wal_checksum(data[:24], 0, 0, big) != (c0, c1):
        return WalRecovery(size, kept_bytes=0, note="its header is invalid, so SQLite ignores all of it")
    frame, s = 24 + page_size, (c0, c1)
    frames = commits = kept_frames = 0
    kept_bytes, offset, bad = 32, 32, False
    while offset + frame <= len(data):
        page, commit, f1, f2, k0, k1 = struct.unpack(">6I", data[offset:offset + 24])
        if (f1, f2) != (salt1, salt2):
            break
        s = _wal_checksum(data[offset + 24:offset + frame], *_wal_checksum(data[offset:offset + 8], *s, big), big)
        if s != (k0, k1):
            bad = True
            break
        frames += 1
        offset += frame
        if commit:
            commits, kept_frames, kept_bytes = commits + 1, frames, offset
    lost_frames = lost_commits = 0
    for at in range(kept_bytes, len(data) - frame + 1, frame):  # after the kept part, this generation's frames
        _page, commit, f1, f2 = struct.unpack(">4I", data[at:at + 16])
        if (f1, f2) != (salt1, salt2):
            break
        lost_frames += 1
        lost_commits += bool(commit)
    return WalRecovery(size, kept_frames, commits, kept_bytes, lost_frames, lost_commits, bad)


def inspect_wal(wal: str) -> WalRecovery | None:
    """Before opening: log what SQLite's recovery will keep of a WAL left behind, at warning level
    (with a copy of the WAL kept beside it) when it drops committed or corrupted frames."""
    found = read_wal(wal)
    if found is None:
        return None
    if not found.verified:
        log.warning("WAL recovery of %s: %d bytes, more than %d MB, not verified", wal, found.size,
                    _WAL_VERIFY_MAX >> 20)
        return found
    summary = (f"WAL recovery of {wal}: {found.frames} frames in {found.commits} commits are valid; "
               f"{found.discarded_bytes} of {found.size} bytes are discarded")
    if not found.lost:
        log.info("%s (an unfinished transaction or frames already checkpointed)", summary)
        return found
    copy = f"{wal}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.bad"
    try:
        shutil.copyfile(wal, copy)
    except OSError as exc:
        copy = f"not copied: {exc}"
    log.warning("%s, among them %d frames in %d committed transactions%s%s (WAL kept as %s)", summary,
                found.lost_frames, found.lost_commits, ", after a frame whose checksum is wrong" if found.bad_checksum
                else "", f"; {found.note}" if found.note else "", copy)
    return found
