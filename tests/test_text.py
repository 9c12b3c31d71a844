"""Text: chunked content that an edit in one place copies only around that place."""

from hypothesis import given, settings
from hypothesis import strategies as st

from mcprt import text as T
from mcprt.ot import TextOperation
from mcprt.text import Text


def _edit(content: str, data) -> TextOperation:
    """A random op on content: one place (most edits) or several."""
    op, at = TextOperation(), 0
    for _ in range(data.draw(st.integers(1, 3))):
        keep = data.draw(st.integers(0, len(content) - at))
        op.retain(keep)
        at += keep
        cut = data.draw(st.integers(0, min(40, len(content) - at)))
        op.delete(cut)
        at += cut
        op.insert(data.draw(st.text(alphabet="ab\u00e9\U0001f600\n", max_size=20)))
    return op.retain(len(content) - at)


@settings(max_examples=300, deadline=None, database=None)
@given(start=st.text(alphabet="xyz\u00e9", max_size=5 * 64), data=st.data(), steps=st.integers(1, 12))
def test_a_text_applies_ops_as_the_string_does(start, data, steps):
    chunk, T.CHUNK = T.CHUNK, 8  # small chunks: edits across chunk edges, splits and merges
    try:
        content, text = start, Text.of(start)
        for _ in range(steps):
            op = _edit(content, data)
            content, text = op.apply(content), text.apply(op)
            assert len(text) == len(content) and str(text) == content
            assert text.isascii() == content.isascii()
            assert text.utf8_length() == len(content.encode("utf-8"))
    finally:
        T.CHUNK = chunk


def test_small_chunks_make_edits_local(monkeypatch):
    monkeypatch.setattr(T, "CHUNK", 8)
    content = "".join(chr(97 + i % 26) for i in range(200))
    text = Text.of(content)
    for i in range(300):  # typing and deleting all over; chunks stay between CHUNK/2 and 2 x CHUNK
        position = (i * 37) % (len(content) + 1)
        op = TextOperation().retain(position).insert("Q" * (i % 5))
        if position < len(content) and i % 3 == 0:
            op.delete(1)
        op.retain(len(content) - position - (1 if position < len(content) and i % 3 == 0 else 0))
        content, text = op.apply(content), text.apply(op)
        assert str(text) == content
    chunks = text.chunks()
    assert all(len(c) <= 2 * T.CHUNK for c in chunks) and sum(len(c) < T.CHUNK // 2 for c in chunks) <= 1
    before = text.chunks()
    after = text.apply(TextOperation().retain(3).insert("!").retain(len(content) - 3)).chunks()
    shared = {id(c) for c in before} & {id(c) for c in after}
    assert len(shared) >= len(before) - 2  # only the chunks around the edit were made anew
