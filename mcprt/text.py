"""A document's content as immutable chunks, so that an edit in one place copies one chunk, not the document.

A Python string cannot be changed in place: applying an edit to a 1 MB string makes a new 1 MB string (two
copies, the slices and the join), and on a 1 MB document that copy is most of what an edit costs beyond one
on 1 KB. A Text keeps the content as a tuple of chunks of at most CHUNK code points: an edit in one place
rebuilds the chunks it touches and shares the rest with the previous revision. The whole string is made
(once per revision, then kept) only when something reads it: a snapshot, a document_state, a markup edit.
"""

from __future__ import annotations

from bisect import bisect_right

from .ot import OpError, TextOperation, span

CHUNK = 16384  # code points: copying one costs about what a lone edit's other work costs


class Text:
    """Immutable content: `str(text)` is the string, `len(text)` its length in code points."""

    __slots__ = ("_joined", "_chunks", "_starts", "_length")

    def __init__(self, joined: str | None, chunks: tuple[str, ...] | None, length: int):
        self._joined, self._chunks, self._length = joined, chunks, length
        self._starts: list[int] | None = None

    @classmethod
    def of(cls, content: str) -> "Text":
        """A Text holding `content` (cut into chunks only when first edited)."""
        return cls(content, None, len(content))

    def __len__(self) -> int:
        return self._length

    def __str__(self) -> str:
        if self._joined is None:
            self._joined = "".join(self._chunks)
        return self._joined

    def isascii(self) -> bool:
        """As str.isascii(), reading one flag per chunk."""
        if self._joined is not None:
            return self._joined.isascii()
        return all(chunk.isascii() for chunk in self._chunks)

    def utf8_length(self) -> int:
        """Bytes in UTF-8; only chunks that are not ASCII are encoded."""
        return sum(len(chunk) if chunk.isascii() else len(chunk.encode("utf-8")) for chunk in self.chunks())

    def chunks(self) -> tuple[str, ...]:
        if self._chunks is None:
            text = self._joined
            self._chunks = tuple(text[i:i + CHUNK] for i in range(0, len(text), CHUNK))
        return self._chunks

    def apply(self, op: TextOperation) -> "Text":
        """The Text after op (as op.apply on the string). An edit in one place rebuilds the chunks it
        touches; an op that changes several places is applied to the whole string."""
        if op.base_length != self._length:
            raise OpError(f"operation expects a document of length {op.base_length}, got {self._length}")
        edit = span(op)
        if edit is None:
            return self if op.is_noop() else Text.of(op.apply(str(self)))
        position, deleted, inserted = edit
        chunks = self.chunks()
        if not chunks:
            return Text.of(inserted)
        starts = self._chunk_starts()
        first = max(0, bisect_right(starts, position) - 1)
        last = max(first, bisect_right(starts, position + deleted) - 1)
        middle = (chunks[first][:position - starts[first]] + inserted
                  + chunks[last][position + deleted - starts[last]:])
        if len(middle) < CHUNK // 2:  # too small to stand alone: take in a neighbour, so chunks stay few
            if last + 1 < len(chunks):
                last += 1
                middle += chunks[last]
            elif first > 0:
                first -= 1
                middle = chunks[first] + middle
        count = -(-len(middle) // CHUNK)  # pieces of equal size, none over CHUNK (and none tiny)
        size = -(-len(middle) // count) if count else 0
        pieces = tuple(middle[i:i + size] for i in range(0, len(middle), size)) if size else ()
        return Text(None, chunks[:first] + pieces + chunks[last + 1:], op.target_length)

    def _chunk_starts(self) -> list[int]:
        if self._starts is None:
            starts, at = [], 0
            for chunk in self._chunks:
                starts.append(at)
                at += len(chunk)
            self._starts = starts
        return self._starts
