"""Operational transform over code points: the ot.js TextOperation, deltas, diffs, cursors.

An operation walks the whole document once: a positive int keeps that many code points,
a negative int deletes that many, a string inserts itself. Operations stay normalised
(adjacent components of one kind merged, an insert always before a delete it touches),
so two operations with the same effect compare equal, as in ot.js. Every position and
length counts code points (Python str indexing): an emoji with a skin-tone modifier is
two units, a letter with a combining accent is two units.
"""

from __future__ import annotations

from json.encoder import encode_basestring_ascii as _ascii_json  # a JSON string as json.dumps writes it

Component = int | str


class OpError(ValueError):
    """An operation that does not fit the document (bad position, length mismatch)."""


def _is_retain(c: Component | None) -> bool:
    return type(c) is int and c > 0


def _is_delete(c: Component | None) -> bool:
    return type(c) is int and c < 0


def _is_insert(c: Component | None) -> bool:
    return type(c) is str


def _size(c: Component) -> int:
    """How many code points a component covers (of the old text, or of the new for inserts)."""
    return len(c) if isinstance(c, str) else abs(c)


def _count(n: object, what: str) -> int:
    """n itself if it is a true int; bools are ints to Python but not to JSON clients."""
    if type(n) is not int:
        raise OpError(f"{what} must be an integer, got {n!r}")
    return n


class TextOperation:
    """A sequence of retain / insert / delete components covering a whole document."""

    __hash__ = None  # mutable, like the list it wraps

    def __init__(self) -> None:
        self.ops: list[Component] = []
        self.base_length = 0
        self.target_length = 0

    def retain(self, n: int) -> TextOperation:
        """Keep the next n code points."""
        if _count(n, "retain") < 0:
            raise OpError(f"retain expects a non-negative count, got {n}")
        if n == 0:
            return self
        self.base_length += n
        self.target_length += n
        if self.ops and _is_retain(self.ops[-1]):
            self.ops[-1] += n
        else:
            self.ops.append(n)
        return self

    def insert(self, s: str) -> TextOperation:
        """Insert s at the current position."""
        if not isinstance(s, str):
            raise OpError(f"insert expects a string, got {s!r}")
        if not s:
            return self
        self.target_length += len(s)
        ops = self.ops
        if ops and _is_insert(ops[-1]):
            ops[-1] += s
        elif ops and _is_delete(ops[-1]):
            # Insert-then-delete and delete-then-insert have the same effect; always
            # putting the insert first makes equal effects compare equal.
            if len(ops) > 1 and _is_insert(ops[-2]):
                ops[-2] += s
            else:
                ops.insert(len(ops) - 1, s)
        else:
            ops.append(s)
        return self

    def delete(self, n: int | str) -> TextOperation:
        """Delete the next n code points (a string: its length; the sign is ignored, as ot.js)."""
        if isinstance(n, str):
            n = len(n)
        n = abs(_count(n, "delete"))
        if n == 0:
            return self
        self.base_length += n
        if self.ops and _is_delete(self.ops[-1]):
            self.ops[-1] -= n
        else:
            self.ops.append(-n)
        return self

    def is_noop(self) -> bool:
        """True when applying this operation changes nothing."""
        return not self.ops or (len(self.ops) == 1 and _is_retain(self.ops[0]))

    def apply(self, doc: str) -> str:
        """Return doc with this operation applied."""
        self._check_fits(doc)
        parts, index = [], 0
        for c in self.ops:
            if c.__class__ is str:  # an insert (_is_insert, without a call per component)
                parts.append(c)
            elif c > 0:
                parts.append(doc[index:index + c])
                index += c
            else:
                index -= c
        return "".join(parts)

    def invert(self, doc: str) -> TextOperation:
        """The operation that undoes this one, given the document this one applies to."""
        self._check_fits(doc)
        inverse, index = TextOperation(), 0
        for c in self.ops:
            if _is_insert(c):
                inverse.delete(len(c))
            elif c > 0:
                inverse.retain(c)
                index += c
            else:
                inverse.insert(doc[index:index - c])
                index -= c
        return inverse

    def _check_fits(self, doc: str) -> None:
        if len(doc) != self.base_length:
            raise OpError(
                f"operation expects a document of length {self.base_length}, got {len(doc)}"
            )

    def compose(self, other: TextOperation) -> TextOperation:
        """One operation with the effect of this one followed by other."""
        if self.target_length != other.base_length:
            raise OpError(
                f"cannot compose: first operation produces length {self.target_length}, "
                f"second expects {other.base_length}"
            )
        out = TextOperation()
        a, b = _Reader(self.ops), _Reader(other.ops)
        while a.head is not None or b.head is not None:
            if _is_delete(a.head):
                out.delete(a.take())
            elif _is_insert(b.head):
                out.insert(b.take())
            else:
                _line_up(a, b)
                n = min(_size(a.head), _size(b.head))
                first, second = a.take(n), b.take(n)
                if _is_retain(second) and _is_insert(first):
                    out.insert(first)
                elif _is_retain(second):
                    out.retain(n)
                elif _is_retain(first):
                    out.delete(n)
                # else: the second deletes text the first inserted; neither survives.
        return out

    @staticmethod
    def transform(a: TextOperation, b: TextOperation) -> tuple[TextOperation, TextOperation]:
        """Return (a', b') for concurrent a and b, so that a.compose(b') == b.compose(a').

        Ties go to `a`, as in ot.js: when both insert at the same position, a's text
        lands first (to the left). The server transforms an incoming op as `a` over each
        newer history op as `b`, and a client transforms its pending op as `a` over each
        op it receives, so the later-arriving op's text lands left on every side alike.
        """
        if a.base_length != b.base_length:
            raise OpError(
                f"cannot transform: base lengths differ ({a.base_length} and {b.base_length})"
            )
        a2, b2 = TextOperation(), TextOperation()
        ra, rb = _Reader(a.ops), _Reader(b.ops)
        while ra.head is not None or rb.head is not None:
            if _is_insert(ra.head):
                text = ra.take()
                a2.insert(text)
                b2.retain(len(text))
            elif _is_insert(rb.head):
                text = rb.take()
                a2.retain(len(text))
                b2.insert(text)
            else:
                _line_up(ra, rb)
                n = min(_size(ra.head), _size(rb.head))
                _transform_step(ra.take(n), rb.take(n), n, a2, b2)
        return a2, b2

    def to_json(self) -> list:
        """The ot.js wire form, e.g. [5, "abc", -2]."""
        return list(self.ops)

    def json(self) -> str:
        """json.dumps(self.to_json()), the stored form, byte for byte, without the encoder's machinery."""
        return "[" + ", ".join([_ascii_json(c) if c.__class__ is str else str(c) for c in self.ops]) + "]"

    @classmethod
    def from_json(cls, ops: list) -> TextOperation:
        """Build from the ot.js wire form; anything malformed raises OpError."""
        if not isinstance(ops, list):
            raise OpError(f"an operation is a list, got {type(ops).__name__}")
        op = cls()
        for c in ops:
            if _is_insert(c) and c:
                op.insert(c)
            elif _is_retain(c):
                op.retain(c)
            elif _is_delete(c):
                op.delete(c)
            else:
                raise OpError(f"bad operation component {c!r}")
        return op

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TextOperation):
            return NotImplemented
        return (self.base_length, self.target_length, self.ops) == (
            other.base_length, other.target_length, other.ops,
        )

    def __repr__(self) -> str:
        return f"TextOperation({self.ops!r})"


class _Reader:
    """Hands out an operation's components, whole or split, as compose and transform eat them."""

    def __init__(self, ops: list[Component]) -> None:
        self._rest = iter(ops)
        self.head: Component | None = next(self._rest, None)

    def take(self, n: int | None = None) -> Component:
        """Remove and return the head component, or only its first n code points' worth."""
        head = self.head
        if n is None or n >= _size(head):
            self.head = next(self._rest, None)
            return head
        if isinstance(head, str):
            self.head = head[n:]
            return head[:n]
        if head > 0:
            self.head = head - n
            return n
        self.head = head + n
        return -n


def _line_up(a: _Reader, b: _Reader) -> None:
    # Unreachable when the lengths check out, unless someone edited `ops` by hand.
    if a.head is None or b.head is None:
        raise OpError("operations do not cover the same text")


def _transform_step(x: int, y: int, n: int, a2: TextOperation, b2: TextOperation) -> None:
    """Transform n code points that a treats as x and b treats as y (retain or delete)."""
    if _is_retain(x) and _is_retain(y):
        a2.retain(n)
        b2.retain(n)
    elif _is_retain(y):
        a2.delete(n)
    elif _is_retain(x):
        b2.delete(n)
    # else: both deleted the same text; it is already gone on both sides.


_DELTA_KEYS = frozenset({"position", "insert", "delete"})


def from_delta(delta: dict | list[dict], doc_length: int) -> TextOperation:
    """A wire change_delta (one part, or a list of parts applied in order) as an operation.

    Each part is {"position": p, "insert": text} and/or "delete": n (the delete happens
    at p first, then the insert at p). In a list, each position refers to the document
    as the previous parts left it.
    """
    parts = delta if isinstance(delta, list) else [delta]
    if not parts:
        raise OpError("change_delta list is empty")
    if _count(doc_length, "document length") < 0:
        raise OpError(f"document length cannot be negative, got {doc_length}")
    op = _part_op(parts[0], doc_length)
    for part in parts[1:]:
        op = op.compose(_part_op(part, op.target_length))
    return op


def _part_op(part: object, length: int) -> TextOperation:
    """One change_delta part as an operation on a document of `length` code points."""
    if not isinstance(part, dict):
        raise OpError(f"a change_delta part is an object, got {type(part).__name__}")
    if not part.keys() <= _DELTA_KEYS:
        raise OpError(f"unknown change_delta fields: {sorted(map(str, set(part) - _DELTA_KEYS))}")
    if "position" not in part:
        raise OpError("a change_delta part needs a position")
    pos = _count(part["position"], "position")
    if not 0 <= pos <= length:
        raise OpError(f"position {pos} is outside the document (length {length})")
    text = part.get("insert", "")
    if not isinstance(text, str):
        raise OpError(f"insert must be a string, got {text!r}")
    count = _count(part.get("delete", 0), "delete")
    if "delete" in part and count < 1:
        raise OpError(f"delete must be at least 1, got {count}")
    if pos + count > length:
        raise OpError(f"deleting {count} at {pos} runs past the end (length {length})")
    if not text and not count:
        raise OpError("a change_delta part must insert or delete something")
    # What retain(pos).delete(count).insert(text).retain(rest) builds, in its canonical order (the insert
    # before the delete), made at once: the values are checked above, and this runs once per edit.
    op = TextOperation()
    op.ops = [c for c in (pos, text, -count, length - pos - count) if c]
    op.base_length, op.target_length = length, length - count + len(text)
    return op


def to_delta(op: TextOperation) -> list[dict]:
    """op as sequential change_delta parts (an empty list for a no-op)."""
    parts, pos = [], 0
    for c in op.ops:
        if _is_insert(c):
            parts.append({"position": pos, "insert": c})
            pos += len(c)
        elif c > 0:
            pos += c
        else:
            parts.append({"position": pos, "delete": -c})
    return parts


def diff(old: str, new: str) -> TextOperation:
    """The smallest single-span operation turning old into new (common prefix and suffix kept)."""
    limit = min(len(old), len(new))
    prefix = _longest(limit, lambda k: old[:k] == new[:k])
    suffix = _longest(limit - prefix, lambda k: old[len(old) - k:] == new[len(new) - k:])
    return (
        TextOperation()
        .retain(prefix)
        .delete(len(old) - prefix - suffix)
        .insert(new[prefix:len(new) - suffix])
        .retain(suffix)
    )


def _longest(limit: int, same) -> int:
    """The largest k <= limit with same(k), for a same() that holds up to some k and no further."""
    # Halving with slice compares runs in C; a per-character loop crawls on big documents.
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if same(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def transform_cursor(position: int, op: TextOperation, own: bool = False) -> int:
    """Where a cursor at `position` (before op) ends up after op.

    Text inserted exactly at the cursor pushes it right (ot.js Range.transform: how other
    users' cursors move). With own=True the cursor sides with `a` in transform(a, b),
    whose inserts win ties, and stays left of the insert: use it for a cursor that came
    with `a`, when moving it over b'. A cursor inside deleted text lands where the
    deletion was (after any text inserted in its place).
    """
    if not 0 <= _count(position, "cursor position") <= op.base_length:
        raise OpError(f"cursor {position} is outside the document (length {op.base_length})")
    moved, ahead = position, position  # ahead: old code points left between walk and cursor
    for c in op.ops:
        if _is_insert(c):
            if ahead > 0 or not own:
                moved += len(c)
        elif c > 0:
            ahead -= c
        else:
            moved -= min(ahead, -c)
            ahead += c
        if ahead < 0:
            break
    return moved


def span(op: TextOperation) -> tuple[int, int, str] | None:
    """(position, delete count, inserted text) for an edit in one place; else (or a no-op) None."""
    ops = op.ops
    start = 1 if ops and _is_retain(ops[0]) else 0
    end = len(ops) - 1 if len(ops) > start and _is_retain(ops[-1]) else len(ops)
    if start >= end:
        return None
    text, deleted = "", 0
    for c in ops[start:end]:  # one insert and one delete at most, in a normalized op
        if c.__class__ is str:
            text += c
        elif c > 0:
            return None
        else:
            deleted -= c
    return (ops[0] if start else 0), deleted, text


def extent(op: TextOperation) -> tuple[int, int] | None:
    """[start, end) of the base document that op changes (an insert alone changes an empty range at
    its place); None for a no-op."""
    ops = op.ops
    first = 1 if ops and _is_retain(ops[0]) else 0
    last = len(ops) - 1 if len(ops) > first and _is_retain(ops[-1]) else len(ops)
    if first >= last:
        return None
    start = ops[0] if first else 0
    return start, op.base_length - (ops[-1] if last < len(ops) else 0)


def widened(op: TextOperation, before: int, after: int) -> TextOperation:
    """An op on a span, as the op on a document that holds `before` code points ahead of the span
    and `after` behind it."""
    whole = TextOperation().retain(before)
    for c in op.ops:
        if _is_retain(c):
            whole.retain(c)
        elif _is_insert(c):
            whole.insert(c)
        else:
            whole.delete(c)
    return whole.retain(after)
