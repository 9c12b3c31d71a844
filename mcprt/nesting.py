"""Bounds on markup cost: a linear nesting estimate before parsing, and a guard inside html5lib's tree builder.

An HTML parser spends time in proportion to tokens times open elements (html5lib walks its
whole stack for every scope check), so nesting depth is what must be capped before any parser
runs. Misnested formatting tags are the other lever: a parser re-opens them ("reconstructs the
active formatting elements") at every later token, so a few bytes can become megabytes.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from bleach._vendor.html5lib import treebuilders

# Elements the tree builder pops as soon as it inserts them, or ignores in a fragment.
VOID = frozenset(
    "area base basefont bgsound br col embed frame hr image img input keygen link meta param "
    "source track wbr".split()
)
# The formatting elements the parser re-opens after a misnested close.
FORMATTING = frozenset("a b big code em font i nobr s small strike strong tt u".split())
# The HTML standard's "special" category: an end tag for a formatting element that has one
# of these open inside it keeps a clone of itself open.
SPECIAL = frozenset(
    "address applet area article aside base basefont bgsound blockquote body br button caption "
    "center col colgroup dd details dir div dl dt embed fieldset figcaption figure footer form "
    "frame frameset h1 h2 h3 h4 h5 h6 head header hgroup hr html iframe img input keygen li link "
    "listing main marquee menu meta nav noembed noframes noscript object ol p param plaintext pre "
    "script search section select source style summary table tbody td template textarea tfoot th "
    "thead title tr track ul wbr xmp mi mo mn ms mtext annotation-xml foreignobject desc".split()
)
# Elements that end a scope: an end tag for something open below them is ignored.
_SCOPE = frozenset(
    "applet caption html table td th marquee object template foreignobject desc title mi mo mn ms "
    "mtext annotation-xml".split()
)
_TABLE_SCOPE = frozenset({"html", "table", "template"})
BOUNDARY = {
    "li": _SCOPE | {"ol", "ul"}, "p": _SCOPE | {"button"},
    **{t: _TABLE_SCOPE for t in "table caption tbody thead tfoot tr td th".split()},
}
# End tags the parser honours when their element is in scope; any other end tag is ignored
# when a special element is open above its element.
_SCOPED_END = frozenset(
    "address article aside blockquote button center details dialog dir div dl fieldset figcaption "
    "figure footer header hgroup listing main menu nav ol pre search section summary ul form p li dd "
    "dt h1 h2 h3 h4 h5 h6 applet marquee object table caption colgroup tbody thead tfoot tr td th "
    "select template".split()
)
# Elements that put a marker in the list of formatting elements: their end tag clears it.
_MARKERS = frozenset("applet caption marquee object template td th".split())
_CLOSES_P = frozenset(
    "address article aside blockquote center details dialog dir div dl fieldset figcaption figure "
    "footer header hgroup main menu nav ol p search section summary ul h1 h2 h3 h4 h5 h6 pre "
    "listing form li dd dt plaintext table xmp".split()
)
_HEADINGS = frozenset("h1 h2 h3 h4 h5 h6".split())
# For an open element, the start tags that close it when it is the current node.
_CLOSED_BY = {
    "p": _CLOSES_P, "li": frozenset({"li"}), "dd": frozenset({"dd", "dt"}), "dt": frozenset({"dd", "dt"}),
    **{h: _HEADINGS for h in _HEADINGS},
    "option": frozenset({"option", "optgroup"}), "optgroup": frozenset({"optgroup"}),
    "tr": frozenset({"tr"}), "td": frozenset({"td", "th", "tr"}), "th": frozenset({"td", "th", "tr"}),
    **{s: frozenset({"thead", "tbody", "tfoot"}) for s in ("thead", "tbody", "tfoot")},
    **{r: frozenset({"rb", "rt", "rtc", "rp"}) for r in ("rb", "rt", "rtc", "rp")},
}
# The parent the tree builder inserts when a table part arrives without one.
_IMPLIED_PARENT = {"tr": ("tbody", frozenset({"tbody", "thead", "tfoot"})),
                   "td": ("tr", frozenset({"tr"})), "th": ("tr", frozenset({"tr"}))}
# Elements whose content the tokenizer reads as text (outside svg and math).
RAW_TEXT = frozenset("script style xmp iframe noembed noframes noscript textarea title".split())
_RAW_END = {name: re.compile(rf"</{name}(?=[\t\n\f\r />])", re.IGNORECASE) for name in RAW_TEXT}

_WS = r"[\t\n\f\r ]"
# A tag as the HTML tokenizer reads it, quoted values and all. Every repetition is possessive
# and every alternative starts on different characters, so a match is linear in its length.
_TAG = re.compile(
    r"<(/?)([A-Za-z][^\t\n\f\r />]*+)"
    r"(?:[\t\n\f\r /]++"
    r"|[^\t\n\f\r />][^\t\n\f\r />=]*+"
    rf"(?:{_WS}*+={_WS}*+(?:\"[^\"]*+\"?|'[^']*+'?|[^\t\n\f\r >\"'][^\t\n\f\r >]*+)?)?"
    r")*+(>?)"
)
_MARKUP = re.compile(r"<[A-Za-z/!?]")
# Script data: where escaping starts and ends, and where a nested script opens or closes.
_SCRIPT_STEP = re.compile(r"<!--(?!-*>)|-->|<(/?)script(?=[\t\n\f\r />])", re.IGNORECASE)
# Each fork rescans the rest of the input: a few keep the scan linear.
_MAX_FORKS = 8
_COMMENT_END = re.compile(r"--!?>")


@dataclass(frozen=True)
class Nesting:
    """What the scan found; it stops early once a limit is passed."""

    depth: int
    reopened: int       # bytes of formatting tags a parser may re-open, summed over tokens
    ambiguous: str = ""  # why parsers may split this markup into tags differently, or ""


class Refused(ValueError):
    """Markup that costs too much to parse (raised by the tree-builder guard)."""


class _Stop(Exception):
    """A limit was passed: the scan has seen enough."""


class _Open:
    __slots__ = ("name", "cost", "displaced")

    def __init__(self, name: str, cost: int):
        self.name, self.cost, self.displaced = name, cost, False


def has_markup(text: str) -> bool:
    """False when the tokenizer would read only characters: no tag, comment or declaration."""
    return _MARKUP.search(text) is not None


def measure(text: str, max_depth: int, max_reopened: int) -> Nesting:
    """Over-estimate how deep `text` nests and how much a parser would re-open, in one pass."""
    depth = _balanced_depth(text, max_depth)
    if depth is not None:
        return Nesting(depth, 0)
    scan = _Scan(text, max_depth, max_reopened)
    try:
        scan.run(0, len(text), level=0)
    except _Stop:
        pass
    return Nesting(scan.depth, scan.reopened, scan.ambiguous)


# --- the fast path: markup as the engines and browsers write it ------------------------

# Tags that need no tree-building rule beyond "open here, close at my end tag".
_PLAIN = frozenset(
    "p br div span b strong i em u s ul ol li blockquote code pre h1 h2 h3 h4 h5 h6 a sub sup img hr".split()
)
_SIMPLE_TAG = re.compile(r'<(/?)([a-z][a-z0-9]*)(?: [a-z-]+(?:="[^"<>]*")?)*>')


def balanced(text: str) -> bool:
    """True for markup in the engines' own shape (see _balanced_depth) that closes every element it
    opens: a parser reads it as the tree its tags spell and ends where it started (nothing open, nothing
    to re-open, the tokenizer between tags), so what follows it parses as if it came first."""
    found = _plain(text, sys.maxsize)
    return found is not None and found[1] == 0


def _balanced_depth(text: str, max_depth: int) -> int | None:
    """The exact depth of markup in the engines' own shape, or None when it is not that simple.

    Simple means: only _PLAIN tags, written as the engines write them, every end tag closing
    the current element, and nothing a parser would close or re-open on its own.
    """
    found = _plain(text, max_depth)
    return None if found is None else found[0]


def _plain(text: str, max_depth: int) -> tuple[int, int] | None:
    """(depth, elements still open at the end) of simple markup, or None; the scan stops once deeper
    than max_depth."""
    if "<!" in text or "<?" in text:
        return None
    tags = _SIMPLE_TAG.findall(text)
    if len(tags) != text.count("<"):
        return None
    stack: list[str] = []
    depth = 0
    for slash, name in tags:
        if name not in _PLAIN:
            return None
        if slash:
            if not stack or stack.pop() != name:
                return None
        elif name in VOID:
            if name == "hr" and "p" in stack:
                return None
        elif not _opens_plainly(stack, name):
            return None
        else:
            stack.append(name)
            if len(stack) > depth:
                depth = len(stack)
                if depth > max_depth:
                    break
    return depth, len(stack)


def _opens_plainly(stack: list[str], name: str) -> bool:
    """False where the parser would close something first (and so may re-open formatting)."""
    if name == "li":
        return bool(stack) and stack[-1] in ("ul", "ol")
    if name in _CLOSES_P:
        return "p" not in stack
    return name != "a" or "a" not in stack


# --- the general scan -----------------------------------------------------------------


class _Scan:
    """An over-estimate of html5lib's and html5ever's stack of open elements.

    Tokenizing follows the HTML standard (quoted values may hold `>`; comments end at `-->`;
    raw-text elements end at their end tag). Tree building is approximated on the safe side:
    an element leaves the stack only by its own end tag (or the few implied closes of the
    current node), formatting elements stay counted while a parser could re-open them, and an
    end tag behind a scope boundary is ignored, as the parser ignores it.
    Comment and raw-text contents are scanned as well: the danger scan parses them again.
    """

    def __init__(self, text: str, max_depth: int, max_reopened: int, forks: list[int] | None = None):
        self.text, self.max_depth, self.max_reopened = text, max_depth, max_reopened
        self.forks = forks if forks is not None else [0]  # shared by every copy of one scan
        self.last_at = 0  # where the last construct started
        self.stack: list[_Open] = []
        self.depth = self.reopened = self.displaced_cost = 0
        self.ambiguous = ""
        self.cut = False  # the last construct ran into the end of the scanned range

    def run(self, pos: int, stop: int, level: int) -> None:
        """Scan text[pos:stop]."""
        text = self.text
        while True:
            found = _MARKUP.search(text, pos, stop)
            if found is None:
                self._text(pos, stop)
                return
            self._text(pos, found.start())
            pos = self._markup(found.start(), stop, level)

    def _text(self, start: int, end: int) -> None:
        if end > start:
            self._reopen()

    def _markup(self, at: int, stop: int, level: int) -> int:
        """Handle the construct at `at`; where scanning resumes."""
        text = self.text
        self.last_at = at
        second = text[at + 1]
        if second == "!" and text.startswith("<!--", at, stop):
            return self._comment(at + 4, stop, level)
        if second in "!?" or (second == "/" and not _is_letter(text, at + 2, stop)):
            if text.startswith("</>", at, stop):
                return at + 3
            return self._bogus(at, stop, level)
        tag = _TAG.match(text, at, stop)
        self.cut = not tag.group(3)
        name = tag.group(2).lower()
        if tag.group(1):
            self._end(name)
        else:
            self._start(name, tag.end() - at)
            if name in RAW_TEXT and not self.cut:
                return self._raw(name, tag.end(), stop, level)
        return tag.end()

    def _comment(self, start: int, stop: int, level: int) -> int:
        text = self.text
        if text.startswith(">", start, stop) or text.startswith("->", start, stop):
            return text.index(">", start) + 1
        end = _COMMENT_END.search(text, start, stop)
        data_end = end.start() if end else stop
        if level == 0 and "<" in text[start:data_end]:
            self._inside(start, data_end)
        self.cut = end is None
        return end.end() if end else stop

    def _bogus(self, at: int, stop: int, level: int) -> int:
        text = self.text
        end = text.find(">", at, stop)
        if text.startswith("<![CDATA[", at, stop) and any(o.name in ("svg", "math") for o in self.stack):
            close = text.find("]]>", at, stop)
            if 0 <= end < close:  # in svg or math the section runs on to ]]>
                self._fork(close + 3, stop, level)
        self.cut = end < 0
        return end + 1 if end >= 0 else stop

    def _raw(self, name: str, start: int, stop: int, level: int) -> int:
        """Raw text: scanned as markup too, since inside svg or math it is markup."""
        data_end = _script_end(self.text, start, stop) if name == "script" else _raw_end(self.text, name, start, stop)
        if "<" not in self.text[start:data_end]:
            return data_end
        self.cut = False
        self.run(start, data_end, level)
        if self.cut and data_end < stop:
            # Read as markup, the tag cut off here runs on past the end tag: follow that too.
            self._fork(self.last_at, stop, level)
        return data_end

    def _fork(self, pos: int, stop: int, level: int) -> None:
        """Scan on from pos as well, on a copy of the state: parsers may resume there instead."""
        self.forks[0] += 1
        if self.forks[0] > _MAX_FORKS:
            self._refuse("too many raw-text elements that parsers split differently")
        other = _Scan(self.text, self.max_depth, self.max_reopened, self.forks)
        other.stack = [_copy(o) for o in self.stack]
        other.depth, other.reopened, other.displaced_cost = self.depth, self.reopened, self.displaced_cost
        try:
            other.run(pos, stop, level)
        finally:
            self.depth = max(self.depth, other.depth)
            self.reopened = max(self.reopened, other.reopened)
            self.ambiguous = self.ambiguous or other.ambiguous

    def _inside(self, start: int, end: int) -> None:
        """Comment content, as the danger scan parses it: a fragment of its own."""
        inner = _Scan(self.text, self.max_depth, self.max_reopened, self.forks)
        inner.reopened = self.reopened
        try:
            inner.run(start, end, level=1)
        finally:
            self.depth = max(self.depth, inner.depth)
            self.reopened = inner.reopened
            self.ambiguous = self.ambiguous or inner.ambiguous

    def _refuse(self, why: str) -> None:
        self.ambiguous = why
        raise _Stop

    def _reopen(self) -> None:
        """Text and most start tags make a parser re-open displaced formatting elements."""
        if self.displaced_cost:
            self.reopened += self.displaced_cost
            if self.reopened > self.max_reopened:
                raise _Stop

    def _start(self, name: str, cost: int) -> None:
        self._reopen()
        if name == "col" and not (self.stack and self.stack[-1].name == "colgroup"):
            self._push("colgroup", 0)  # a table's col lands in an implied colgroup
        if name in VOID:
            return
        stack = self.stack
        while stack and name in _CLOSED_BY.get(stack[-1].name, ()):
            stack.pop()
        if name in _CLOSES_P:
            self._displace_above("p")
        if name in ("li", "dd", "dt"):
            self._displace_above(name)
        self._push(name, cost if name in FORMATTING else 0)

    def _push(self, name: str, cost: int) -> None:
        stack = self.stack
        implied = _IMPLIED_PARENT.get(name)
        if implied and not (stack and stack[-1].name in implied[1]):
            self._push(implied[0], 0)
        stack.append(_Open(name, cost))
        if len(stack) > self.depth:
            self.depth = len(stack)
            if self.depth > self.max_depth:
                raise _Stop

    def _end(self, name: str) -> None:
        stack = self.stack
        if stack and stack[-1].name == name:
            self._drop(stack.pop())
            return
        index = _nearest(stack, name)
        if index < 0:
            return
        above = stack[index + 1:]
        if name in FORMATTING or name not in _SCOPED_END:
            if any(o.name in SPECIAL for o in above):
                return  # a formatting element stays open as a clone; any other end tag is ignored
        elif any(o.name in BOUNDARY.get(name, _SCOPE) for o in above):
            return  # out of scope: the parser ignores this end tag
        elif name == "select" and any(o.name not in ("option", "optgroup") for o in above):
            return
        self._drop(stack[index])
        kept = [] if name in _MARKERS else [o for o in above if o.name in FORMATTING]
        for o in kept:
            self._displace(o)
        del stack[index:]
        stack.extend(kept)

    def _displace_above(self, name: str) -> None:
        """A start tag that closes an open p (or li) closes the formatting elements above it too."""
        index = _nearest(self.stack, name)
        for o in self.stack[index + 1:] if index >= 0 else ():
            self._displace(o)

    def _displace(self, o: _Open) -> None:
        if o.cost and not o.displaced:
            o.displaced = True
            self.displaced_cost += o.cost

    def _drop(self, o: _Open) -> None:
        if o.displaced:
            self.displaced_cost -= o.cost


def _raw_end(text: str, name: str, start: int, stop: int) -> int:
    end = _RAW_END[name].search(text, start, stop)
    return end.start() if end else stop


def _script_end(text: str, start: int, stop: int) -> int:
    """Where script data ends: `<!--` and a nested `<script>` move it past the first `</script>`."""
    escaped = double = False
    for step in _SCRIPT_STEP.finditer(text, start, stop):
        token = step.group().lower()
        if token == "<!--":
            escaped = True
        elif token == "-->":
            escaped = double = False
        elif token == "<script" and escaped:
            double = True
        elif token == "</script":
            if not double:
                return step.start()
            double = False
    return stop


def _copy(o: _Open) -> _Open:
    other = _Open(o.name, o.cost)
    other.displaced = o.displaced
    return other


def _nearest(stack: list[_Open], name: str) -> int:
    for index in range(len(stack) - 1, -1, -1):
        if stack[index].name == name:
            return index
    return -1


def _is_letter(text: str, index: int, stop: int) -> bool:
    return index < stop and text[index].isascii() and text[index].isalpha()


# --- the guard inside html5lib ------------------------------------------------------

class GuardedTree(treebuilders.getTreeBuilder("etree")):
    """html5lib's etree builder that refuses to open more than `max_depth` elements at once,
    or to create more than `budget` elements in one parse: the exact check behind the estimate."""

    max_depth = 100
    budget = 10_000

    def reset(self):
        super().reset()
        self.created = 0

    def insertElementNormal(self, token):
        return self._counted(super().insertElementNormal(token))

    def insertElementTable(self, token):
        return self._counted(super().insertElementTable(token))

    def _counted(self, element):
        self.created += 1
        # +2: the fragment's own root, and a void element (or the p that `</p>` implies)
        # that is popped as soon as it is pushed.
        if len(self.openElements) > self.max_depth + 2:
            raise Refused(f"markup nests deeper than {self.max_depth} elements")
        if self.created > self.budget:
            raise Refused(f"markup makes more than {self.budget} elements")
        return element
