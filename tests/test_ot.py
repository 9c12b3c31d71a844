"""Operational transform: ot.js's TextOperation suite, wire deltas, diffs, cursors, convergence."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcprt.ot import (
    OpError,
    TextOperation,
    diff,
    from_delta,
    span,
    to_delta,
    transform_cursor,
)
from support import ROOT

THUMBS = "\U0001F44D\U0001F3FD"  # 👍🏽: thumbs up + skin-tone modifier, two code points
E_ACUTE = "e\u0301"  # e + combining acute, two code points
ALPHABET = "ab \n" + THUMBS + E_ACUTE + "Ω"

docs = st.text(alphabet=ALPHABET, max_size=24)
snippets = st.text(alphabet=ALPHABET, min_size=1, max_size=5)


def op(*components) -> TextOperation:
    return TextOperation.from_json(list(components))


def deletes(o: TextOperation) -> bool:
    return any(isinstance(c, int) and c < 0 for c in o.ops)


@st.composite
def ops_on(draw, length: int) -> TextOperation:
    """A random operation on a document of `length` code points."""
    result, left = TextOperation(), length
    steps = st.tuples(st.sampled_from("rid"), st.integers(1, 8), snippets)
    for kind, n, text in draw(st.lists(steps, max_size=8)):
        if kind == "i":
            result.insert(text)
        elif left:
            n = min(n, left)
            result.retain(n) if kind == "r" else result.delete(n)
            left -= n
    return result.delete(left) if draw(st.booleans()) else result.retain(left)


@st.composite
def doc_and_ops(draw, count: int):
    """A document and `count` independent operations on it."""
    doc = draw(docs)
    return (doc, *(draw(ops_on(len(doc))) for _ in range(count)))


# --- the ot.js TextOperation suite -------------------------------------------------


def test_lengths_follow_components():
    o = TextOperation()
    assert (o.base_length, o.target_length) == (0, 0)
    o.retain(5)
    assert (o.base_length, o.target_length) == (5, 5)
    o.insert("abc")
    assert (o.base_length, o.target_length) == (5, 8)
    o.retain(2)
    assert (o.base_length, o.target_length) == (7, 10)
    o.delete(2)
    assert (o.base_length, o.target_length) == (9, 10)


def test_chaining_ignores_empty_components():
    o = (
        TextOperation().retain(5).retain(0).insert("lorem").insert("")
        .delete("abc").delete(3).delete(0).delete("")
    )
    assert o.ops == [5, "lorem", -6]


def test_empty_components_add_nothing():
    assert TextOperation().retain(0).insert("").delete("").ops == []


def test_equal_effects_compare_equal():
    one = TextOperation().delete(1).insert("lo").retain(2).retain(3)
    two = TextOperation().delete(-1).insert("l").insert("o").retain(5)
    assert one == two
    one.delete(1)
    two.retain(1)
    assert one != two


def test_adjacent_components_merge():
    o = TextOperation()
    o.retain(2).retain(3)
    assert o.ops == [5]
    o.insert("abc").insert("xyz")
    assert o.ops == [5, "abcxyz"]
    o.delete("d").delete("d")
    assert o.ops == [5, "abcxyz", -2]


def test_insert_goes_before_an_adjacent_delete():
    assert TextOperation().retain(1).delete(2).insert("x").ops == [1, "x", -2]
    assert TextOperation().insert("a").delete(2).insert("b").ops == ["ab", -2]


def test_is_noop():
    o = TextOperation()
    assert o.is_noop()
    assert o.retain(5).retain(3).is_noop()
    assert not o.insert("lorem").is_noop()
    assert not TextOperation().delete(1).is_noop()


def test_apply_example():
    assert op(6, "big ", 5, -2).apply("Hello world!!") == "Hello big world"


def test_apply_rejects_a_document_of_the_wrong_length():
    with pytest.raises(OpError, match="length 3"):
        op(3).apply("ab")


def test_compose_example():
    first = op(5, " world")  # "hello" -> "hello world"
    second = op(-1, "J", 10)  # "hello world" -> "Jello world"
    assert first.compose(second) == op("J", -1, 4, " world")


def test_compose_rejects_a_length_mismatch():
    with pytest.raises(OpError, match="compose"):
        op(3).compose(op(4))


def test_transform_puts_the_first_operations_insert_first():
    a, b = op(1, "A", 1), op(1, "B", 1)
    a2, b2 = TextOperation.transform(a, b)
    assert a2 == op(1, "A", 2) and b2 == op(2, "B", 1)
    assert a.compose(b2).apply("xy") == b.compose(a2).apply("xy") == "xABy"


def test_server_puts_a_late_insert_left_of_an_earlier_one_at_the_same_place():
    history = [op("B")]  # landed first, at revision 0
    late = op("A")  # made against revision 0 too
    for concurrent in history:
        late, _ = TextOperation.transform(late, concurrent)
    assert late.apply(history[0].apply("")) == "AB"


def test_transform_overlapping_deletes_remove_the_text_once():
    a, b = op(1, -3, 1), op(2, -3)  # "abcde": a deletes bcd, b deletes cde
    a2, b2 = TextOperation.transform(a, b)
    assert a2 == op(1, -1) and b2 == op(1, -1)
    assert a.compose(b2).apply("abcde") == "a"


def test_transform_keeps_an_insert_made_inside_deleted_text():
    a, b = op(-4), op(2, "X", 2)
    a2, b2 = TextOperation.transform(a, b)
    assert a2.apply(b.apply("abcd")) == b2.apply(a.apply("abcd")) == "X"


def test_transform_rejects_different_bases():
    with pytest.raises(OpError, match="base lengths"):
        TextOperation.transform(op(2), op(3))


def test_from_json_normalises():
    o = TextOperation.from_json([2, -1, -1, "cde"])
    assert o.ops == [2, "cde", -2]
    assert (o.base_length, o.target_length) == (4, 5)


@pytest.mark.parametrize(
    "bad",
    [
        [2, {"insert": "x"}],
        [2, None],
        [0],
        [True],
        [False, "x"],
        [1.0],
        [""],
        [[1]],
        "abc",
        {"ops": [1]},
        None,
    ],
)
def test_from_json_rejects_malformed_operations(bad):
    with pytest.raises(OpError):
        TextOperation.from_json(bad)


@pytest.mark.parametrize(
    "build",
    [
        lambda o: o.retain(-1),
        lambda o: o.retain(True),
        lambda o: o.retain(1.5),
        lambda o: o.insert(5),
        lambda o: o.delete(None),
        lambda o: o.delete(False),
    ],
)
def test_builders_reject_bad_arguments(build):
    with pytest.raises(OpError):
        build(TextOperation())


def test_repr_and_json_show_the_wire_form():
    o = op(5, "abc", -2)
    assert o.to_json() == [5, "abc", -2]
    assert repr(o) == "TextOperation([5, 'abc', -2])"
    assert o != [5, "abc", -2]


@given(doc_and_ops(1))
def test_apply_produces_the_target_length(case):
    doc, o = case
    assert len(o.apply(doc)) == o.target_length


@given(doc_and_ops(1))
def test_json_round_trip(case):
    _, o = case
    assert TextOperation.from_json(o.to_json()) == o


@given(doc_and_ops(1))
def test_invert_undoes(case):
    doc, o = case
    inverse = o.invert(doc)
    assert inverse.apply(o.apply(doc)) == doc
    assert (inverse.base_length, inverse.target_length) == (o.target_length, o.base_length)


@given(st.data())
def test_compose_matches_applying_in_turn(data):
    doc, a = data.draw(doc_and_ops(1))
    after_a = a.apply(doc)
    b = data.draw(ops_on(len(after_a)))
    ab = a.compose(b)
    assert ab.apply(doc) == b.apply(after_a)
    assert (ab.base_length, ab.target_length) == (a.base_length, b.target_length)


@given(doc_and_ops(2))
def test_transform_converges(case):
    doc, a, b = case
    a2, b2 = TextOperation.transform(a, b)
    assert b2.apply(a.apply(doc)) == a2.apply(b.apply(doc))
    assert a.compose(b2) == b.compose(a2)


# --- code points ---------------------------------------------------------------------


def test_emoji_with_modifier_counts_as_two_code_points():
    doc = "a" + THUMBS + "b"
    assert len(doc) == 4
    assert from_delta({"position": 2, "delete": 1}, 4).apply(doc) == "a\U0001F44Db"
    assert from_delta({"position": 4, "insert": THUMBS}, 4).apply(doc) == doc + THUMBS
    assert op(3, "!", 1).apply(doc) == doc[:3] + "!b"


def test_combining_accent_counts_as_its_own_code_point():
    doc = "caf" + E_ACUTE
    assert diff(doc, "cafe").ops == [4, -1]
    assert from_delta({"position": 4, "insert": "\u0301"}, 4).apply("cafe") == doc


def test_diff_can_split_an_emoji_from_its_modifier():
    assert span(diff("a" + THUMBS + "b", "a\U0001F44Db")) == (2, 1, "")


# --- wire deltas ----------------------------------------------------------------------


def test_from_delta_insert():
    assert from_delta({"position": 2, "insert": "XY"}, 5) == op(2, "XY", 3)


def test_from_delta_delete():
    assert from_delta({"position": 1, "delete": 3}, 5) == op(1, -3, 1)


def test_from_delta_delete_then_insert_in_one_part():
    o = from_delta({"position": 1, "delete": 2, "insert": "Z"}, 4)
    assert o.apply("abcd") == "aZd"


def test_from_delta_with_empty_insert_and_a_delete_just_deletes():
    assert from_delta({"position": 0, "delete": 1, "insert": ""}, 2) == op(-1, 1)


@given(st.data())
def test_a_delta_part_makes_the_op_the_builder_makes(data):
    """from_delta builds one part's op at once; it is the op retain, delete, insert and retain build."""
    length = data.draw(st.integers(0, 30))
    pos = data.draw(st.integers(0, length))
    count = data.draw(st.integers(0, length - pos))
    text = data.draw(st.text(max_size=5))
    if not count and not text:
        text = "x"
    part = {"position": pos, **({"delete": count} if count else {}), **({"insert": text} if text or data.draw(
        st.booleans()) else {})}
    made = from_delta(part, length)
    built = TextOperation().retain(pos).delete(count).insert(text).retain(length - pos - count)
    assert (made.ops, made.base_length, made.target_length) == (built.ops, built.base_length, built.target_length)


def test_from_delta_list_applies_parts_in_order():
    parts = [
        {"position": 0, "insert": "ab"},  # "abxyz"
        {"position": 3, "delete": 1},  # "abxz"
        {"position": 4, "insert": "!"},
    ]
    assert from_delta(parts, 3).apply("xyz") == "abxz!"


def test_from_delta_list_part_may_delete_an_earlier_parts_insert():
    parts = [{"position": 1, "insert": "tmp"}, {"position": 1, "delete": 3}]
    assert from_delta(parts, 2).is_noop()


@pytest.mark.parametrize(
    "delta",
    [
        {"position": -1, "insert": "x"},
        {"position": 4, "insert": "x"},
        {"position": 2, "delete": 2},
        {"position": 0, "delete": 0},
        {"position": 0, "delete": -1},
        {"position": 0, "delete": 0, "insert": "x"},
        {"position": 0, "insert": ""},
        {"position": 0},
        {"insert": "x"},
        {"position": True, "insert": "x"},
        {"position": 1.0, "insert": "x"},
        {"position": "1", "insert": "x"},
        {"position": 0, "delete": True},
        {"position": 0, "delete": 1.0},
        {"position": 0, "insert": 5},
        {"position": 0, "insert": None},
        {"position": 0, "insert": "x", "length": 1},
        [],
        [{"position": 0, "insert": "x"}, {"position": 5, "insert": "y"}],
        [{"position": 0, "delete": 3}, {"position": 0, "delete": 1}],
        ["x"],
        "x",
        None,
    ],
)
def test_from_delta_refuses_what_does_not_fit(delta):
    with pytest.raises(OpError):
        from_delta(delta, 3)


def test_to_delta_example():
    assert to_delta(op(1, "ab", -2, 3, -1)) == [
        {"position": 1, "insert": "ab"},
        {"position": 3, "delete": 2},
        {"position": 6, "delete": 1},
    ]
    assert to_delta(op(4)) == []


@given(doc_and_ops(1))
def test_to_delta_round_trips(case):
    doc, o = case
    if o.is_noop():
        assert to_delta(o) == []
    else:
        assert from_delta(to_delta(o), o.base_length).apply(doc) == o.apply(doc)


# --- diff and span --------------------------------------------------------------------


def test_diff_examples():
    assert diff("hello world", "hello brave world") == op(6, "brave ", 5)
    assert diff("abc", "abc") == op(3)
    assert diff("", "") == TextOperation()
    assert diff("aaa", "aa") == op(2, -1)
    assert diff("abc", "xyz") == op("xyz", -3)


def _best_kept(old: str, new: str) -> int:
    """Most code points any single-span edit keeps, by brute force."""
    return max(
        p + s
        for p in range(min(len(old), len(new)) + 1)
        for s in range(min(len(old), len(new)) - p + 1)
        if old[:p] == new[:p] and old[len(old) - s:] == new[len(new) - s:]
    )


@given(docs, docs)
def test_diff_is_the_minimal_single_span(old, new):
    d = diff(old, new)
    assert d.apply(old) == new
    edit = span(d)
    if old == new:
        assert edit is None
        return
    position, deleted, inserted = edit
    assert deleted + len(inserted) == len(old) + len(new) - 2 * _best_kept(old, new)
    assert old[:position] == new[:position]


def test_span_examples():
    assert span(op(2, "x", -3, 4)) == (2, 3, "x")
    assert span(op("x")) == (0, 0, "x")
    assert span(op(-2)) == (0, 2, "")
    assert span(op(5)) is None
    assert span(TextOperation()) is None
    assert span(op(1, "x", 1, -1)) is None


@given(doc_and_ops(1))
def test_span_describes_single_edits_exactly(case):
    doc, o = case
    edit = span(o)
    if edit is not None:
        position, deleted, text = edit
        assert o.apply(doc) == doc[:position] + text + doc[position + deleted:]


@given(doc_and_ops(1))
def test_span_is_none_exactly_when_the_changes_are_not_in_one_place(case):
    _, o = case
    changes = [i for i, c in enumerate(o.ops) if not (isinstance(c, int) and c > 0)]
    in_one_place = bool(changes) and all(not (isinstance(c, int) and c > 0) for c in o.ops[changes[0]:changes[-1]])
    assert (span(o) is not None) == in_one_place


@given(doc_and_ops(1))
def test_an_ops_stored_json_is_what_json_dumps_writes(case):
    _, o = case
    assert o.json() == json.dumps(o.to_json())
    assert TextOperation.from_json(json.loads(o.json())) == o


# --- cursors --------------------------------------------------------------------------


def test_insert_at_a_cursor_pushes_it_right_unless_own():
    o = op(2, "XY", 2)
    assert transform_cursor(2, o) == 4
    assert transform_cursor(2, o, own=True) == 2
    assert transform_cursor(1, o) == transform_cursor(1, o, own=True) == 1
    assert transform_cursor(3, o) == transform_cursor(3, o, own=True) == 5


def test_cursor_inside_deleted_text_moves_to_the_deletion():
    assert transform_cursor(3, op(1, -4, 1)) == 1
    assert transform_cursor(3, op(1, "new", -4, 1)) == 4
    assert transform_cursor(6, op(1, -4, 1)) == 2


def test_cursor_at_the_end_follows_an_append():
    assert transform_cursor(3, op(3, "!")) == 4
    assert transform_cursor(3, op(3, "!"), own=True) == 3


def test_cursor_outside_the_document_is_refused():
    for bad in (-1, 4, True, 1.0):
        with pytest.raises(OpError):
            transform_cursor(bad, op(3))


@given(doc_and_ops(1), st.booleans())
def test_cursor_stays_in_the_document_and_in_order(case, own):
    doc, o = case
    moved = [transform_cursor(p, o, own) for p in range(len(doc) + 1)]
    assert all(0 <= m <= o.target_length for m in moved)
    assert moved == sorted(moved)
    if not deletes(o):
        assert len(set(moved)) == len(moved)


@given(doc_and_ops(1))
def test_cursor_keeps_its_neighbour_when_nothing_is_deleted(case):
    doc, o = case
    if deletes(o):
        return
    new = o.apply(doc)
    for p in range(len(doc)):
        assert new[transform_cursor(p, o)] == doc[p]  # still before the same character
        assert new[transform_cursor(p + 1, o, own=True) - 1] == doc[p]  # still after it


# --- many clients against one server --------------------------------------------------


class Client:
    """An ot.js client: Synchronized, AwaitingConfirm or AwaitingWithBuffer."""

    def __init__(self, doc: str, revision: int):
        self.doc, self.revision = doc, revision
        self.outstanding: TextOperation | None = None  # sent, not yet acknowledged
        self.buffer: TextOperation | None = None  # made while waiting, not yet sent
        self.outbox: deque = deque()  # (base_revision, op) on its way to the server
        self.inbox: deque = deque()  # ("ack", None) or ("op", op) on its way here

    @property
    def state(self) -> str:
        if self.outstanding is None:
            return "Synchronized"
        return "AwaitingConfirm" if self.buffer is None else "AwaitingWithBuffer"

    def edit(self, o: TextOperation) -> None:
        self.doc = o.apply(self.doc)
        if self.outstanding is None:
            self.outstanding = o
            self.outbox.append((self.revision, o))
        elif self.buffer is None:
            self.buffer = o
        else:
            self.buffer = self.buffer.compose(o)

    def receive(self) -> None:
        kind, o = self.inbox.popleft()
        self.revision += 1
        if kind == "ack":
            self.outstanding, self.buffer = self.buffer, None
            if self.outstanding is not None:
                self.outbox.append((self.revision, self.outstanding))
            return
        if self.outstanding is not None:
            self.outstanding, o = TextOperation.transform(self.outstanding, o)
        if self.buffer is not None:
            self.buffer, o = TextOperation.transform(self.buffer, o)
        self.doc = o.apply(self.doc)


class Server:
    """The authority: transforms each op over the history since its base, then appends."""

    def __init__(self, doc: str, clients: list[Client]):
        self.doc, self.clients, self.history = doc, clients, []

    def receive(self, sender: Client) -> None:
        revision, o = sender.outbox.popleft()
        for concurrent in self.history[revision:]:
            o, _ = TextOperation.transform(o, concurrent)
        self.doc = o.apply(self.doc)
        self.history.append(o)
        for client in self.clients:
            client.inbox.append(("ack", None) if client is sender else ("op", o))


def simulate(data, start: str, make_edit) -> Server:
    """Random edits and random per-channel delivery (FIFO within a channel), then drain."""
    clients = [Client(start, 0) for _ in range(data.draw(st.integers(2, 4), label="clients"))]
    server = Server(start, clients)
    for _ in range(data.draw(st.integers(1, 30), label="steps")):
        moves = [("edit", c) for c in clients]
        moves += [("up", c) for c in clients if c.outbox]
        moves += [("down", c) for c in clients if c.inbox]
        kind, client = moves[data.draw(st.integers(0, len(moves) - 1), label="move")]
        if kind == "edit":
            client.edit(make_edit(client))
        elif kind == "up":
            server.receive(client)
        else:
            client.receive()
    while any(c.outbox or c.inbox for c in clients):
        for client in clients:
            while client.outbox:
                server.receive(client)
            while client.inbox:
                client.receive()
    return server


def assert_converged(server: Server) -> None:
    for client in server.clients:
        assert client.doc == server.doc
        assert client.state == "Synchronized"
        assert client.revision == len(server.history)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_clients_converge_and_every_insert_survives_whole(data):
    inserted = []

    def insert_marker(client: Client) -> TextOperation:
        # Only between markers, so a marker found split at the end was split by transform.
        doc = client.doc
        gaps = [i for i in range(len(doc) + 1) if i == 0 or doc[i - 1] == "]"]
        at = gaps[data.draw(st.integers(0, len(gaps) - 1), label="gap")]
        inserted.append(f"[{len(inserted)}{THUMBS}{E_ACUTE}]")
        return TextOperation().retain(at).insert(inserted[-1]).retain(len(doc) - at)

    server = simulate(data, "[start]", insert_marker)
    assert_converged(server)
    markers = re.findall(r"\[[^\]]*\]", server.doc)
    assert "".join(markers) == server.doc
    assert sorted(markers) == sorted(inserted + ["[start]"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_clients_converge_with_deletes_and_content_edits(data):
    def random_edit(client: Client) -> TextOperation:
        if data.draw(st.booleans(), label="whole content"):
            return diff(client.doc, data.draw(docs, label="content"))
        return data.draw(ops_on(len(client.doc)), label="op")

    assert_converged(simulate(data, data.draw(docs, label="start"), random_edit))


def random_op(rng: random.Random, doc: str) -> TextOperation:
    """A random operation over doc (code points, emoji included)."""
    op, left = TextOperation(), len(doc)
    while left:
        n = rng.randint(1, min(left, 4))
        if rng.random() < 0.3:
            op.insert(rng.choice(["a", "\U0001F600", "<b>", "é", "xy"]))
        if rng.random() < 0.6:
            op.retain(n)
        else:
            op.delete(n)
        left -= n
    if rng.random() < 0.5:
        op.insert(rng.choice(["z", "\U0001F44D\U0001F3FD", "&amp;"]))
    return op


OT_JS_CASES = """
import { readFileSync } from 'node:fs';
const { TextOperation: T, transformCursor, splitOp, diff } = await import(process.argv[2]);
const cases = JSON.parse(readFileSync(0, 'utf8'));
console.log(JSON.stringify(cases.map(({ doc, a, b, c, cursor }) => {
    const [ja, jb, jc] = [a, b, c].map((op) => T.fromJSON(op));
    const [a2, b2] = T.transform(ja, jb);
    const [head, tail] = splitOp(ja, 2, 2);
    return { a2: a2.toJSON(), b2: b2.toJSON(), ac: ja.compose(jc).toJSON(), applied: ja.apply(doc),
             cursor: transformCursor(cursor, ja), own: transformCursor(cursor, ja, true),
             split: tail.apply(head.apply(doc)), diff: diff(doc, ja.apply(doc)).apply(doc),
             caretDiff: diff(doc, ja.apply(doc), cursor).apply(doc) };
})));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js runs the demo's ot.js")
def test_the_demos_ot_js_agrees_with_the_server(tmp_path):
    """static/ot.js transforms, composes, splits and moves cursors exactly as mcprt.ot does (under Node)."""
    module = tmp_path / "ot.mjs"  # .mjs: Node reads a plain .js outside a "type": "module" package as CommonJS
    module.write_text((ROOT / "static" / "ot.js").read_text(encoding="utf-8"), encoding="utf-8")
    script = tmp_path / "cases.mjs"
    script.write_text(OT_JS_CASES, encoding="utf-8")
    rng = random.Random(7)
    cases = []
    for _ in range(300):
        doc = "".join(rng.choice("ab\U0001F600é<") for _ in range(rng.randint(0, 9)))
        a, b = random_op(rng, doc), random_op(rng, doc)
        cases.append({"doc": doc, "a": a.to_json(), "b": b.to_json(), "c": random_op(rng, a.apply(doc)).to_json(),
                      "cursor": rng.randint(0, len(doc))})
    run = subprocess.run(["node", str(script), module.as_uri()], input=json.dumps(cases), capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    for case, js in zip(cases, json.loads(run.stdout), strict=True):
        a, b, c = (TextOperation.from_json(case[k]) for k in "abc")
        a2, b2 = TextOperation.transform(a, b)
        after = a.apply(case["doc"])
        assert (js["a2"], js["b2"]) == (a2.to_json(), b2.to_json()), case
        assert js["ac"] == a.compose(c).to_json(), case
        assert js["applied"] == js["split"] == js["diff"] == js["caretDiff"] == after, case
        assert js["cursor"] == transform_cursor(case["cursor"], a), case
        assert js["own"] == transform_cursor(case["cursor"], a, own=True), case


DIFF_AT_CARET = r"""
const { diff } = await import(process.argv[2]);
const cases = [
  ['Start. da', 'Start. daa', 9], ['Start. da', 'Start. daa', 10], ['Start. da', 'Start. daa', null],
  ['aaa', 'aaaa', 1], ['xaay', 'xay', 1], ['xaay', 'xay', 2], ['ab', 'aXb', 2], ['é\u{1F600}', 'é\u{1F600}\u{1F600}', 2],
];
console.log(JSON.stringify(cases.map(([before, after, caret]) => diff(before, after, caret).toJSON())));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js runs the demo's ot.js")
def test_the_demos_diff_puts_a_keystroke_where_the_caret_says(tmp_path):
    """Typing "a" after an "a" reads the same on either side of it; the caret decides, so that a typist's
    next keystroke lands beside their own, not beyond a collaborator's letter that happens to match."""
    module = tmp_path / "ot.mjs"
    module.write_text((ROOT / "static" / "ot.js").read_text(encoding="utf-8"), encoding="utf-8")
    script = tmp_path / "diff.mjs"
    script.write_text(DIFF_AT_CARET, encoding="utf-8")
    run = subprocess.run(["node", str(script), module.as_uri()], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [
        [8, "a", 1],   # the caret after the typed letter, before the other one
        [9, "a"],      # the caret after both: the second
        [9, "a"],      # no caret: the longest common prefix, as before
        ["a", 3],      # slid to the caret through a run (the caret after the first: typed at 0)
        [1, -1, 2],    # a delete too
        [2, -1, 1],
        [1, "X", 1],   # nothing ambiguous: unchanged
        [1, "\U0001F600", 1],  # code points, not UTF-16 units (the caret after the first emoji)
    ]
