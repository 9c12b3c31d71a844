"""Snapshots cost what the ops cost, not the document's size times its edits; every past revision still reads back."""

from __future__ import annotations

import json
import random
import time

import pytest

from mcprt.bench_client import prose
from mcprt.documents import PIECED_FROM, SNAPSHOT_OP_SHARE, Author, DocumentService, replay
from mcprt.ot import TextOperation
from mcprt.storage import store_for
from mcprt.storage.base import piece_digest
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


@pytest.mark.asyncio
async def test_a_large_snapshot_writes_only_the_pieces_its_edits_changed(both_databases):
    """A snapshot of a large document names its pieces; the first stores them all, each later one only
    the pieces the edits since touched. Every revision still reads back, after a reload too, and the
    pieces go with the document."""
    store = await store_for(both_databases).open()
    try:
        documents = DocumentService(store, time.time, "bleach", 1_000_000, 5)
        document = await documents.create("big", "text")
        seed = prose(300_000)
        assert len(seed) >= 4 * PIECED_FROM
        documents.apply(document, TextOperation().insert(seed), 0, AUTHOR, None)
        contents = ["", seed]
        for i in range(700):  # 200 characters replaced in one place, as a user retyping a paragraph
            text, at = document.content, 150_000 + 50 * (i % 3)
            op = TextOperation().retain(at).delete(200).insert(prose(200 + i)[-200:]).retain(len(text) - at - 200)
            documents.apply(document, op, document.revision, AUTHOR, None)
            contents.append(document.content)
        await documents.flush()
        await store.barrier()
        rows = await store._fetch("SELECT revision, pieces FROM snapshots WHERE document_id = 'big' AND"
                                  " revision > 0 ORDER BY revision")
        assert len(rows) >= 4 and all(pieces is not None for _, pieces in rows)
        named = [json.loads(pieces) for _, pieces in rows]
        stored = await store._fetch("SELECT piece, length(content) FROM snapshot_pieces WHERE document_id = 'big'")
        assert {piece for piece, _ in stored} == set().union(*named)  # every piece named, none stored twice
        first = len(set(named[0]))
        assert len(stored) <= first + 2 * (len(named) - 1)  # later snapshots: the pieces the edits touched
        assert sum(size for _, size in stored) < 2 * len(contents[-1])  # not the content once per snapshot
        for revision in [r for r, _ in rows] + list(range(0, len(contents), 23)):
            assert (await documents.read("big", revision))["content"] == contents[revision], revision
        documents.release("big")
        loaded = await documents.open("big")
        assert loaded.content == contents[-1] and loaded.revision == len(contents) - 1
        # What a snapshot writes: a new copy knows no pieces, so its first writes them all (the store keeps
        # the ones it has); after an edit in one place, the next writes the piece it touched.
        writes = DocumentService._snapshot(loaded, time.time())
        assert [w.kind for w in writes] == ["insert_snapshot_piece"] * len(set(named[-1])) + ["insert_snapshot"]
        documents.apply(loaded, TextOperation().retain(1000).delete(5).insert("12345").retain(len(loaded.text) - 1005),
                        loaded.revision, AUTHOR, None)
        writes = DocumentService._snapshot(loaded, time.time())
        assert [w.kind for w in writes] == ["insert_snapshot_piece", "insert_snapshot"]
        assert json.loads(writes[-1].values[4]) == [piece_digest(p) for p in loaded.text.chunks()]
        await documents.flush()
        await documents.delete("big")
        assert await store._fetch("SELECT count(*) FROM snapshot_pieces") == [(0,)]
    finally:
        await store.close()


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
