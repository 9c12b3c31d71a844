"""The HTML policy for html documents and the plain-text check for text documents.

Sanitizing is idempotent: ``clean_html(clean_html(x).html).html`` equals
``clean_html(x).html`` for both engines, or clients would fight the server forever.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from dataclasses import dataclass
from html import escape
from xml.etree import ElementTree

import bleach
import nh3
from bleach import html5lib_shim

from . import nesting

ENGINES = ("bleach", "nh3")

TAGS = frozenset(
    "p br div span b strong i em u s ul ol li blockquote code pre h1 h2 h3 a".split()
)
ATTRIBUTES = {"a": frozenset({"href", "title"})}
PROTOCOLS = frozenset({"http", "https", "mailto"})

# Elements whose content a browser never shows as text: they go with everything inside.
HIDDEN_TAGS = frozenset(
    "script style template iframe noscript noembed noframes title".split()
)

# Blink stops nesting at 512 open elements; a document needs far fewer (nested lists and
# quotes in real documents stay under 20, a pasted web page under 40), and the parsers'
# cost grows with tokens times depth: 100 keeps a worst-case message cheap.
MAX_DEPTH = 100
# Formatting tags a parser may re-open after misnested closes, in bytes: beyond the input's
# own size (and a little for short inputs) the markup is an amplification attempt.
_MIN_REOPENED = 4096

# Every unstable input found so far settles after one extra pass; an input still
# changing after this many is shown as plain text instead.
_MAX_PASSES = 4

# Cc (C0, DEL, C1) minus tab and newline; CR is turned into LF before this check.
# DEL and C1 are refused too: the HTML parser flags all of them as errors, they are
# invisible, and in practice they are mojibake rather than anything a user typed.
_REFUSED = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")

_DANGEROUS_TAGS = frozenset(
    "script style iframe frame frameset object embed applet base meta link form "
    "portal isindex".split()
)
# Content that the browser takes as text but a careless reader might take as markup.
_RAW_TEXT_TAGS = frozenset(
    "textarea title xmp noscript noembed noframes iframe plaintext".split()
)
_URL_ATTRS = frozenset(
    "href src action formaction data background poster codebase cite dynsrc lowsrc "
    "srcset ping longdesc usemap classid archive icon manifest profile base "
    "values to from by".split()
)
_BAD_SCHEMES = frozenset({"javascript", "vbscript", "data"})
_SCHEME = re.compile(r"([a-z][a-z0-9+.\-]*):", re.IGNORECASE)
_URL_SPACE = "".join(map(chr, range(0x21)))
_MAX_REMOVED = 20
_MAX_DESCRIPTION = 200
_START_TAG = html5lib_shim.constants.tokenTypes["StartTag"]

_HIDDEN_START = re.compile(
    r"<(?:%s)(?=[\s/>]|$)" % "|".join(sorted(HIDDEN_TAGS)), re.IGNORECASE
)
# Both engines write attributes as ` name="value"`, with `"` escaped inside values.
_FINISH = re.compile(r'<a((?: [^\s="]+="[^"]*")+)>|<pre>\n')
# Characters normalize() refuses or rewrites can come back from numeric references,
# and html5ever drops one leading U+FEFF per parse: write them all as references.
_CHAR_REFS = {
    c: "&#x%X;" % c
    for c in [*range(0x09), *range(0x0B, 0x20), *range(0x7F, 0xA0), 0xFEFF]
}

# Hot-path limits for edit_is_inert: how far back it looks, how much it inspects.
_WINDOW = 2048
_MAX_EDIT = 4096
_UNSAFE_INSERT = re.compile("[<>&\xa0\ufeff\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


class UnsafeText(ValueError):
    """Input holds characters we refuse (control characters, lone surrogates)."""


class TooComplex(UnsafeText):
    """Markup nests too deeply, or would make a parser do too much: refused before parsing."""


@dataclass(frozen=True)
class Cleaned:
    """A sanitized fragment and the dangerous things that were removed from it."""

    html: str
    removed: tuple[str, ...]
    span: tuple[int, int] | None = None  # the span of a document that html replaces; None: all of it

    @property
    def dangerous(self) -> bool:
        """True when something dangerous was removed."""
        return bool(self.removed)


# The last string found to be printable ASCII (U+0020-U+007E only). An edit's insert is checked by
# normalize and again by the markup fast path (_plain), as the same object: the second check is an identity
# test instead of a walk of each character. Held here, so its identity cannot pass to another string.
_printable: list = [None]


def _printable_ascii(text: str) -> bool:
    if text is _printable[0]:
        return True
    if text.isascii() and text.isprintable():  # a C loop, where a pattern's search costs several times more
        _printable[0] = text
        return True
    return False


def normalize(text: str) -> str:
    """Turn CRLF and lone CR into LF; refuse other control characters."""
    if _printable_ascii(text):  # nothing to turn or refuse
        return text
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    bad = _REFUSED.search(text)
    if bad:
        char = bad.group()
        raise UnsafeText(
            f"refused character U+{ord(char):04X} ({_char_name(char)}) "
            f"at code point {bad.start()}"
        )
    return text


def check_text(text: str) -> str:
    """Check a text document's content: normalized, never HTML-escaped."""
    return normalize(text)


def clean_html(html: str, engine: str = "bleach") -> Cleaned:
    """Sanitize an HTML fragment to the allowlist; the result is a fixpoint."""
    sanitize = _engine(engine)
    text = normalize(html)
    check_nesting(text)
    try:
        out = _settle(sanitize, text)
        # Unchanged input removed nothing; that is the common case, so skip the scan. Nor can
        # text without a single tag or comment (only `<` and `&` to escape) hold a danger.
        removed = () if out == text or not nesting.has_markup(text) else _find_dangers(text)
    except nesting.Refused as exc:
        raise TooComplex(str(exc)) from None
    if out != text:
        check_nesting(out)  # exact here: engine output closes every element it opens
    return Cleaned(out, removed)


def clean_part(part: str, engine: str, length: int) -> Cleaned | None:
    """What clean_html makes of `part` inside a whole document of `length` code points, or None when
    that cannot be known from the part alone (then clean the whole).

    `part` is the span top_level_span() found, after the edit: the rest of the document is clean and
    parses the same whatever the span holds, as long as the span leaves the parser where it found it
    (nesting.balanced), before sanitizing and after every pass that is sanitized again, and does not
    start with what a parser treats apart at the start of its input.
    """
    sanitize = _engine(engine)
    # A parser drops a U+FEFF that starts its input: in the whole document, this one does not.
    if part.startswith("\ufeff") or not nesting.balanced(part) or _REFUSED.search(part):
        return None
    try:
        check_nesting(part, length)
        # As _settle, checked before each pass that sanitizes an output again; unsettled, the whole would
        # be shown as text.
        out = _passes(sanitize, part, again_if=nesting.balanced)
        if out is None:
            return None
        if out != part:
            check_nesting(out, length)
        removed = () if out == part or not nesting.has_markup(part) else _find_dangers(part)
    except (nesting.Refused, TooComplex):
        return None  # the whole decides: its budgets are larger
    return Cleaned(out, removed)


def clean_edit(content: str, span: tuple[int, int] | None, engine: str = "bleach") -> Cleaned:
    """Sanitize an edited document: only `span` (top_level_span() after the edit) when that is known to
    give what the whole would, else the whole."""
    if span is not None:
        part = clean_part(content[span[0]:span[1]], engine, len(content))
        if part is not None:
            return Cleaned(part.html, part.removed, span)
    return clean_html(content, engine)


def top_level_span(content: str, start: int, end: int) -> tuple[int, int] | None:
    """The smallest span of clean `content` around [start, end) that begins right after a top-level
    element (or at 0) and ends right before a top-level start tag (or at the end); None when the
    content does not read as clean markup.

    In clean content `<` only opens a tag, and <br> is the only void element, so the depth at any
    point is counted in C; the walk out to depth 0 costs the span's own length.
    """
    if not 0 <= start <= end <= len(content):
        return None
    inside = content.rfind("<", 0, start)
    if inside > content.rfind(">", 0, start):
        start = inside  # in the middle of a tag: from its start
    inside = content.rfind("<", 0, end)
    if end and inside > content.rfind(">", 0, end):
        end = content.find(">", end) + 1  # to its end
        if end == 0:
            return None
    depth = _depth(content, 0, start)
    end_depth = depth + _depth(content, start, end)
    while depth or (start and content[start - 1] != ">"):
        tag = content.rfind("<", 0, start)
        if tag < 0:
            if depth:
                return None
            start = 0
            break
        depth += 1 if content.startswith("</", tag) else 0 if content.startswith("<br>", tag) else -1
        start = tag
        if depth < 0:
            return None
    depth, size = end_depth, len(content)
    while depth or not (end == size or (content.startswith("<", end) and not content.startswith("</", end))):
        tag = content.find("<", end)
        if tag != end:  # text
            if tag < 0 and depth:
                return None  # an element left open at the end: not clean
            end = size if tag < 0 else tag
            continue
        end = content.find(">", tag) + 1
        if end == 0:
            return None
        depth += -1 if content.startswith("</", tag) else 0 if content.startswith("<br>", tag) else 1
        if depth < 0:
            return None
    return start, end


def check_nesting(text: str, length: int | None = None) -> None:
    """Refuse markup nesting deeper than MAX_DEPTH, before any parser sees it (text being part of a
    document of `length` code points, when it is only a part).

    The estimate is linear and errs on the deep side, so a parser never builds a tree this
    deep from markup that passes; html5lib's tree builder is guarded as well (GuardedTree).
    """
    limit = _max_reopened(len(text) if length is None else length)
    found = nesting.measure(text, MAX_DEPTH, limit)
    if found.depth > MAX_DEPTH:
        raise TooComplex(f"markup nests deeper than {MAX_DEPTH} elements")
    if found.ambiguous:
        raise TooComplex(f"markup refused: {found.ambiguous}")
    if found.reopened > limit:
        raise TooComplex("misnested formatting tags would be re-opened too many times")


def edit_is_inert(content: str, position: int, delete_count: int, insert: str) -> bool:
    """True only if applying the edit to clean content leaves it clean.

    ``content`` must already be a fixpoint of :func:`clean_html`. In such content
    ``<`` and ``>`` only delimit tags and ``&`` only starts a character reference,
    so plain text typed into (or deleted from) one text node, away from entities
    and the first line of a ``<pre>``, can neither change under sanitizing nor
    become markup. Only a bounded window before ``position`` is inspected.
    """
    end = position + delete_count
    if position < 0 or delete_count < 0 or end > len(content):
        return False
    if delete_count > _MAX_EDIT or len(insert) > _MAX_EDIT:
        return False
    if not (_plain(insert) and _plain(content[position:end])):
        return False
    start = _text_node_start(content, position)
    return start is not None and _safe_in_text(content, start, position)


# --- settling on a fixpoint -------------------------------------------------------


def _engine(name: str):
    try:
        return _SANITIZERS[name]
    except KeyError:
        raise ValueError(f"unknown engine {name!r}, expected one of {ENGINES}") from None


def _max_reopened(length: int) -> int:
    return max(_MIN_REOPENED, length)


def _depth(content: str, start: int, end: int) -> int:
    """How many elements clean content opens between start and end, less those it closes."""
    return (content.count("<", start, end) - 2 * content.count("</", start, end)
            - content.count("<br>", start, end))


def _budget(text: str) -> int:
    """Elements html5lib may create for text: tags, implied parents and a few re-opened."""
    return 3 * text.count("<") + 256


def _guarded(parser, text: str):
    """The parser with its tree-builder guard set for one parse of text."""
    parser.tree.max_depth, parser.tree.budget = MAX_DEPTH, _budget(text)
    return parser


def _settle(sanitize, text: str) -> str:
    """Sanitize until the output no longer changes, or fall back to plain text."""
    out = _passes(sanitize, text)
    return out if out is not None else _as_text(sanitize, text)


def _passes(sanitize, text: str, again_if=None) -> str | None:
    """Sanitize until the output no longer changes; None if it still changes after _MAX_PASSES more
    passes, or (with `again_if`) when an output that needs another pass fails that check."""
    out = sanitize(text)
    if out == text:
        return out
    for _ in range(_MAX_PASSES):
        if again_if is not None and not again_if(out):
            return None
        again = sanitize(out)
        if again == out:
            return out
        out = again
    return None


def _as_text(sanitize, text: str) -> str:
    """Show the input as text: escaped text has no markup left to disagree about."""
    return sanitize(escape(text, quote=False))


def _finish(out: str) -> str:
    """Put an engine's output in the one form that parses back to itself."""
    return _FINISH.sub(_finish_match, out.translate(_CHAR_REFS))


def _finish_match(match: re.Match) -> str:
    """Escape angle brackets in attribute values; keep a pre's leading newline."""
    attrs = match.group(1)
    if attrs is None:
        # The parser eats one newline after <pre>, so a text starting with a
        # newline needs a second one to survive the next parse.
        return "<pre>\n\n"
    # With `<` and `>` only ever delimiting tags, the edit fast path can find
    # text nodes by looking nearby.
    return "<a" + attrs.replace("<", "&lt;").replace(">", "&gt;") + ">"


# --- the engines ------------------------------------------------------------------


class _QuoteFilter(html5lib_shim.Filter):
    """Replace raw `"` in attribute values with &quot;.

    bleach switches to single quotes for a value holding `"` and then escapes
    its `&` once more on every pass, so such values never settle.
    """

    def __iter__(self):
        for token in super().__iter__():
            if token["type"] in ("StartTag", "EmptyTag") and token.get("data"):
                token["data"] = {
                    key: value.replace('"', "&quot;")
                    for key, value in token["data"].items()
                }
            yield token


_per_thread = threading.local()


def _bleach_cleaner() -> bleach.Cleaner:
    """One cleaner per thread: bleach's parser keeps state while it works."""
    cleaner = getattr(_per_thread, "cleaner", None)
    if cleaner is None:
        cleaner = _per_thread.cleaner = bleach.Cleaner(
            tags=TAGS,
            attributes={tag: sorted(names) for tag, names in ATTRIBUTES.items()},
            protocols=PROTOCOLS,
            strip=True,
            strip_comments=True,
            filters=[_QuoteFilter],
        )
        # The same parser bleach builds, on the guarded tree builder.
        cleaner.parser = html5lib_shim.BleachHTMLParser(
            tags=cleaner.tags, strip=cleaner.strip, consume_entities=False,
            namespaceHTMLElements=False, tree=nesting.GuardedTree,
        )
    return cleaner


def _bleach(text: str) -> str:
    """One bleach pass, after dropping hidden elements with their content."""
    # bleach strips a disallowed tag but keeps what is inside, script source included.
    if _HIDDEN_START.search(text):
        text = _drop_hidden(text)
    cleaner = _bleach_cleaner()
    _guarded(cleaner.parser, text)
    return _finish(cleaner.clean(text))


_nh3_cleaner = nh3.Cleaner(
    tags=set(TAGS),
    # "*" empty: ammonia otherwise allows lang and title on every tag.
    attributes={"*": set(), **{tag: set(names) for tag, names in ATTRIBUTES.items()}},
    url_schemes=set(PROTOCOLS),
    strip_comments=True,
    link_rel=None,
    clean_content_tags=set(HIDDEN_TAGS),
)


def _nh3(text: str) -> str:
    """One nh3 pass."""
    return _finish(_nh3_cleaner.clean(text))


_SANITIZERS = {"bleach": _bleach, "nh3": _nh3}


# --- reading the input as a browser would ----------------------------------------


class _RecordingTokenizer(html5lib_shim.HTMLTokenizer):
    """A tokenizer that keeps every start tag, even those the tree builder ignores."""

    def emitCurrentToken(self):
        token = self.currentToken
        super().emitCurrentToken()
        if token["type"] == _START_TAG:
            self.parser.start_tags.append((token["name"], dict(token["data"])))


class _Parser(html5lib_shim.HTMLParser):
    """html5lib's parser, scripting on, recording start tags as it goes.

    Browsers differ from html5lib on where some tags may go (an <img> in a
    <select>, a <body> inside a fragment); the tags are dangerous wherever they land.
    """

    def __init__(self, text: str):
        super().__init__(tree=nesting.GuardedTree, namespaceHTMLElements=False)
        _guarded(self, text)
        self.start_tags: list[tuple[str, dict]] = []

    def _parse(self, stream, innerHTML=False, container="div", scripting=False, **kw):
        # html5lib's own _parse with our tokenizer, as bleach's parser does it.
        # Scripting is always on, as in the clients: <noscript> holds raw text.
        self.innerHTMLMode = innerHTML
        self.container = container
        self.scripting = True
        self.tokenizer = _RecordingTokenizer(stream, parser=self, **kw)
        self.reset()
        try:
            self.mainLoop()
        except html5lib_shim.ReparseException:
            self.reset()
            self.mainLoop()


def _drop_hidden(text: str) -> str:
    """Remove hidden elements and their content, then serialize what is left."""
    root = _Parser(text).parseFragment(text)
    for parent in list(root.iter()):
        for child in list(parent):
            if _name(child) in HIDDEN_TAGS:
                _remove(parent, child)
    serializer = html5lib_shim.HTMLSerializer(
        quote_attr_values="always", omit_optional_tags=False, escape_lt_in_attrs=True
    )
    return serializer.render(html5lib_shim.getTreeWalker("etree")(root))


def _remove(parent: ElementTree.Element, child: ElementTree.Element) -> None:
    """Remove a child element, keeping the text that follows it."""
    tail = child.tail or ""
    index = list(parent).index(child)
    if index:
        before = parent[index - 1]
        before.tail = (before.tail or "") + tail
    else:
        parent.text = (parent.text or "") + tail
    parent.remove(child)


def _name(element: ElementTree.Element) -> str:
    """An element's local name, or "" for a comment."""
    tag = element.tag
    return tag.rpartition("}")[2].lower() if isinstance(tag, str) else ""


def _find_dangers(text: str) -> tuple[str, ...]:
    """Describe the dangerous things in a fragment, as a browser would parse it."""
    found: list[str] = []
    # A tag cut off by the end of input is dropped by browsers, but it still
    # shows what was attempted: close it before looking.
    _scan(text + ">", "", found, depth=0)
    unique = dict.fromkeys(d[:_MAX_DESCRIPTION] for d in found)
    return tuple(unique)[:_MAX_REMOVED]


def _scan(text: str, where: str, found: list[str], depth: int) -> None:
    """Append descriptions of dangerous tags and attributes in text."""
    parser = _Parser(text)
    root = parser.parseFragment(text)
    for name, attrs in parser.start_tags:
        if name in _DANGEROUS_TAGS:
            found.append(f"<{name}>{where}")
        for key, value in attrs.items():
            found.extend(_attr_dangers(key.rpartition(":")[2], value, where))
    if depth > 0:
        return
    # Markup hidden in a comment or in raw text is inert, but it is an attempt.
    for element in root.iter():
        name = _name(element)
        hidden = element.text or ""
        if "<" in hidden and (not name or name in _RAW_TEXT_TAGS):
            inside = f" inside <{name}>" if name else " inside a comment"
            _scan(hidden, inside, found, depth + 1)


# A style attribute is dropped either way; only one that could load or run something is an attack.
# Plain ones (Chromium writes <span style="font-size: ..."> when lines merge) are ordinary editing.
_ACTIVE_STYLE = re.compile(r"expression|url\s*\(|behavior|binding|javascript|@import|\\", re.IGNORECASE)


def _attr_dangers(name: str, value: str, where: str) -> list[str]:
    """Describe what is dangerous about one attribute, if anything."""
    if name.startswith("on"):
        return [f"{name} attribute{where}"]
    if name == "srcdoc" or (name == "style" and _ACTIVE_STYLE.search(value)):
        return [f"{name} attribute{where}"]
    if name in _URL_ATTRS:
        scheme = _scheme(value)
        if scheme in _BAD_SCHEMES:
            return [f"{scheme}: URL in {name}{where}"]
    return []


def _scheme(url: str) -> str:
    """The scheme a browser would read from an attribute value, lowercased."""
    # The URL parser drops tabs and newlines anywhere, and C0/space at the ends.
    url = url.translate({9: None, 10: None, 13: None}).lstrip(_URL_SPACE)
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else ""


# --- edit fast path ---------------------------------------------------------------


def _plain(text: str) -> bool:
    """True if text holds no character that markup, entities or engines touch."""
    if _printable_ascii(text):
        return "<" not in text and ">" not in text and "&" not in text
    if _UNSAFE_INSERT.search(text):
        return False
    return text.isascii() or all(unicodedata.category(c) != "Cn" for c in text)


def _text_node_start(content: str, position: int) -> int | None:
    """Where the text node holding position starts, or None if unsure."""
    low = position - _WINDOW if position > _WINDOW else 0
    lt = content.rfind("<", low, position)
    gt = content.rfind(">", low, position)
    if gt > lt:
        return gt + 1
    if lt < 0 and low == 0:
        return 0
    return None


def _safe_in_text(content: str, start: int, position: int) -> bool:
    """True unless position is inside an entity or the first line of a <pre>."""
    amp = content.rfind("&", start, position)
    if amp >= 0 and content.find(";", amp, position) < 0:
        return False
    if start >= 5 and content.startswith("<pre>", start - 5):
        return content[start:position].strip("\n") != ""
    return True


def _char_name(char: str) -> str:
    """A readable name for a refused character."""
    if "\ud800" <= char <= "\udfff":
        return "lone surrogate"
    return unicodedata.name(char, "control character")
