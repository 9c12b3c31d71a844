"""Snapshots cost what the ops cost, not the document's size times its edits; every past revision still reads back."""

from __future__ import annotations

import random
import time

import pytest

from mcprt.documents import SNAPSHOT_OP_SHARE, Author, DocumentService, replay
from mcprt.ot import TextOperation
from mcprt.storage import store_for
from snapshot_cost import measure

AUTHOR = Author("alice", "peer-a")


@pytest.mark.asyncio
async def test_snapshot_bytes_follow_op_bytes_on_a_large_document(tmp_path):
    small = await measure(1_000, 2000, str(tmp_path))
    large = await measure(900_000, 2000, str(tmp_path))
    assert small["snapshots"] == 20  # small documents: every snapshot_interval revisions, as before
    # before: a 900 KB snapshot every 100 revisions, 9,010 bytes per one-character edit
    assert large["snapshot_bytes"] <= SNAPSHOT_OP_SHARE * large["op_bytes"] + 900_100  # the seed's own snapshot
    assert large["snapshot_bytes_per_edit"] < 500


@pytest.mark.asyncio
@pytest.mark.parametrize("seed", [1, 2])
async def test_every_past_revision_reads_back_after_random_edits(both_databases, seed):
    rng = random.Random(seed)
    store = await store_for(both_databases).open()
    try:
        documents = DocumentService(store, time.time, "bleach", 1_000_000, 5)
        document = await documents.create("r", "text")
        contents = [""]
        for _ in range(300):
            text, op = document.content, TextOperation()
            at = rng.randint(0, len(text))
            cut = rng.randint(0, min(3, len(text) - at)) if rng.random() < 0.3 else 0
            op.retain(at)
            if cut:
                op.delete(cut)
            op.insert(rng.choice(["a", "bc", "<p>", "é", "\U0001F600"]) * rng.randint(1, 3))
            op.retain(len(text) - at - cut)
            documents.apply(document, op, document.revision, AUTHOR, None)
            contents.append(document.content)
        await documents.flush()
        await store.barrier()
        for revision in range(0, len(contents), 7):
            assert (await documents.read("r", revision))["content"] == contents[revision], revision
        documents.release("r")
        loaded = await documents.open("r")
        assert loaded.content == contents[-1] and loaded.revision == len(contents) - 1
        snapshots, at = [], None
        while (found := await store.latest_snapshot("r", at)) is not None:
            snapshots.insert(0, found.revision)
            at = found.revision - 1
    finally:
        await store.close()
    assert snapshots[0] == 0 and all(b - a >= 5 for a, b in zip(snapshots, snapshots[1:]))


def test_replay_composes_to_what_applying_one_by_one_gives():
    rng = random.Random(7)
    text, ops = "hello world", []
    current = text
    for _ in range(200):
        at = rng.randint(0, len(current))
        op = TextOperation().retain(at).insert(rng.choice("xyz")).retain(len(current) - at)
        current = op.apply(current)
        ops.append(op)
    assert replay(text, ops) == current and replay(text, []) == text
