"""Markup that would freeze the parsers is refused before they run: nesting depth, re-opened formatting."""

import re
import time
from html.parser import HTMLParser

import pytest
from bleach import html5lib_shim
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from chromium_corpus import UNCHANGED
from mcprt import nesting
from mcprt.bench import _rich_text
from mcprt.sanitize import ENGINES, MAX_DEPTH, TooComplex, UnsafeText, clean_html, check_nesting

PROPERTY = settings(max_examples=400, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
engines = pytest.mark.parametrize("engine", ENGINES)
UNBOUNDED = 10**9


def estimate(text: str) -> int:
    return nesting.measure(text, UNBOUNDED, UNBOUNDED).depth


class _Deepest(nesting.GuardedTree):
    """html5lib's tree builder, recording the most elements it ever had open."""

    max_depth = budget = UNBOUNDED

    def reset(self):
        super().reset()
        self.deepest = 0

    def _counted(self, element):
        self.deepest = max(self.deepest, len(self.openElements) - 1)  # without the fragment's root
        return super()._counted(element)


def html5lib_depth(text: str) -> int:
    """How deep html5lib's stack of open elements gets on text (scripting on, as the danger scan)."""
    deepest = 0
    for scripting in (True, False):
        parser = html5lib_shim.HTMLParser(tree=_Deepest, namespaceHTMLElements=False)
        parser.parseFragment(text, scripting=scripting)
        deepest = max(deepest, parser.tree.deepest)
    return deepest


class _Tree(HTMLParser):
    """The stdlib's parser as an independent depth counter for well-formed engine output."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.open, self.deepest = 0, 0

    def handle_starttag(self, tag, attrs):
        if tag != "br":
            self.open += 1
            self.deepest = max(self.deepest, self.open)

    def handle_endtag(self, tag):
        self.open -= 1


def output_depth(html: str) -> int:
    tree = _Tree()
    tree.feed(html)
    tree.close()
    assert tree.open == 0, html  # the engines close every element they open
    return tree.deepest


def _fill(unit, size=10240, head=""):
    """head, then unit(0), unit(1), ... while the whole stays within size characters."""
    parts, total, i = [head], len(head), 0
    while total + len(unit(i)) <= size:
        parts.append(unit(i))
        total += len(unit(i))
        i += 1
    return "".join(parts)


ATTACKS = {
    "nested lists (the report)": "<ul><li>" * 1200,
    "nested bold": "<b>" * 3400,
    "self-closing divs": "<div/>" * 1700,
    "unclosed divs with > in a quoted value": _fill(lambda i: '<div title="a>b">'),
    "end tags hidden in a quoted value": _fill(lambda i: '<div x="a></div>">'),
    "end tag out of scope behind a table": _fill(lambda i: "<div><table><tr><td></div>"),
    "nesting inside a comment": "<!--" + "<ul><li>" * 1200 + "-->",
    "unquoted value holding a quote": '<a b=x"y>' + "<ul><li>" * 1100 + '">',
    "svg title read as markup": '<svg><title><a x="</title><b y=">' + "<ul><li>" * 1100 + '">',
    "escaped script ending late": '<script><!--<script></script><a x="</script>' + "<ul><li>" * 1100 + '">',
    "misnested bold through paragraphs": _fill(lambda i: f"<b a{i}><p>x</b></p>"),
}
AMPLIFIERS = {
    "formatting re-opened in every div": _fill(lambda i: f"<div><b a{i}></div>"),
    "95 displaced bolds, then paragraphs": _fill(
        lambda i: "<p>x</p>", head="<div>" + "".join(f"<b a{i}>" for i in range(95)) + "</div>"),
    "a long link re-opened in every paragraph": _fill(
        lambda i: "<p>y</p>", head='<p><a href="https://e.com/' + "x" * 2000 + '">x<div>'),
}


# --- what is refused ------------------------------------------------------------------


@engines
@pytest.mark.parametrize("name", ATTACKS)
def test_deep_markup_is_refused_before_parsing(engine, name):
    with pytest.raises(TooComplex, match=f"deeper than {MAX_DEPTH}"):
        clean_html(ATTACKS[name], engine)


@engines
@pytest.mark.parametrize("name", AMPLIFIERS)
def test_markup_that_a_parser_would_multiply_is_refused(engine, name):
    with pytest.raises(TooComplex, match="re-opened"):
        clean_html(AMPLIFIERS[name], engine)


def test_refusals_are_unsafe_text():
    assert issubclass(TooComplex, UnsafeText)  # the edit path maps UnsafeText to INVALID_MESSAGE


def test_the_cap_sits_well_under_blinks():
    assert 20 <= MAX_DEPTH <= 128  # Blink caps at 512; documents need far fewer


@engines
def test_nesting_at_the_cap_passes_and_one_more_is_refused(engine):
    assert output_depth(clean_html("<div>" * MAX_DEPTH, engine).html) == MAX_DEPTH
    with pytest.raises(TooComplex):
        clean_html("<div>" * (MAX_DEPTH + 1), engine)


def test_the_guard_refuses_what_the_estimate_might_miss():
    # The tree builder checks the real stack, whatever the estimate said.
    parser = html5lib_shim.HTMLParser(tree=nesting.GuardedTree, namespaceHTMLElements=False)
    parser.tree.max_depth, parser.tree.budget = 10, 10_000
    with pytest.raises(nesting.Refused, match="deeper than 10"):
        parser.parseFragment("<ul><li>" * 6)
    parser.tree.max_depth, parser.tree.budget = 100, 50
    with pytest.raises(nesting.Refused, match="more than 50"):
        parser.parseFragment("<p>x</p>" * 60)


# --- what passes ----------------------------------------------------------------------

ORDINARY = [
    *UNCHANGED,
    _rich_text(102400),
    "<p>one<p>two<p>three" * 300,  # paragraphs without end tags
    "<ul>" + "<li>item" * 500 + "</ul>",  # items without end tags
    "<table><tr><td>a<td>b<tr><td>c</table>" * 200,
    "<dl>" + "<dt>term<dd>definition" * 200 + "</dl>",
    "<ul><li>" * 20 + "deep outline" + "</li></ul>" * 20,
    "<blockquote>" * 30 + "a long mail thread" + "</blockquote>" * 30,
    '<meta charset="utf-8"><b style="font-weight:normal;" id="docs-internal-guid-1"><p dir="ltr">'
    + '<span style="font-size:11pt;">pasted</span></p>' * 300 + "</b>",
    "<!--[if gte mso 9]><xml><o:OfficeDocumentSettings/></xml><![endif]--><p class=MsoNormal>Word<o:p></o:p></p>" * 50,
    '<svg viewBox="0 0 24 24"><title>icon</title><path d="M0 0h24v24H0z"></path></svg>text' * 50,
    "line<br>line<br/>line<img src=a.png><hr>" * 300,
    '<a href="https://e.com/?a>b" title=\'x > y\'>quoted brackets</a>' * 200,
    "<p><b>bold <i>both</b> italic</i></p>" * 100,  # misnested, as old editors wrote it
    "<textarea><b>shown as text</b></textarea><title>t</title><style>p>b{}</style>",
]


@engines
@pytest.mark.parametrize("content", ORDINARY, ids=range(len(ORDINARY)))
def test_ordinary_documents_and_pastes_pass(engine, content):
    check_nesting(content)
    check_nesting(clean_html(content, engine).html)


# --- the estimate errs on the deep side -------------------------------------------------

OPEN = ["div", "p", "li", "ul", "b", "i", "a", "span", "table", "tr", "td", "dd", "dl", "h1", "svg",
        "math", "title", "textarea", "style", "noscript", "select", "option", "font", "nobr", "button",
        "template", "pre", "br", "img", "hr", "desc", "foreignObject", "plaintext", "script"]
ATTRS = ["", " x", ' x="a>b"', " x='</p>'", ' x="</div><b>"', " x=a>", ' x=a"b', "/", ' x="']
PIECES = ["x", " ", "<!--", "-->", "<!-->", "<![CDATA[", "]]>", "<!x>", "<?x>", "</>", "</ x>", "<",
          ">", '"', "'", "&amp;", "<!--<script>"]
tokens = st.one_of(
    st.builds(lambda n, a: f"<{n}{a}>", st.sampled_from(OPEN), st.sampled_from(ATTRS)),
    st.sampled_from(OPEN).map(lambda n: f"</{n}>"),
    st.sampled_from(PIECES),
)
markup = st.lists(tokens, max_size=60).map("".join)


@PROPERTY
@given(text=markup)
@example(text="<b><p>x</b></p>" * 3)
@example(text="<div><b x></div>" * 3)
@example(text='<svg><title><a x="</title><b y=">' + "<div>" * 5)
@example(text="<table><td><div></td>" * 3)
def test_estimate_is_never_below_html5libs_stack(text):
    # +1: a void element (or the p that `</p>` implies) is pushed and popped at once.
    assert estimate(text) + 1 >= html5lib_depth(text)
    assert estimate(text) + 1 >= html5lib_depth(text + ">")  # the danger scan closes a cut-off tag


@PROPERTY
@given(text=markup)
def test_estimate_covers_comment_and_raw_text_content(text):
    # The danger scan parses a comment's or raw-text element's content again on its own.
    assume(not re.search(r"--!?>|</(textarea|noscript)", text, re.IGNORECASE))
    for wrapped in (f"<!--{text}-->", f"<textarea>{text}</textarea>", f"<noscript>{text}</noscript>"):
        assert estimate(wrapped) + 1 >= html5lib_depth(text)


@engines
@PROPERTY
@given(text=markup)
@example(text="<div>" * MAX_DEPTH)
def test_accepted_markup_comes_out_within_the_cap(engine, text):
    try:
        result = clean_html(text, engine)
    except UnsafeText:
        return
    assert output_depth(result.html) <= MAX_DEPTH
    # Each engine's tree is no deeper than the input's estimate (+1: an implied `<p>` from `</p>`).
    assert output_depth(result.html) <= estimate(text) + 1


@engines
@PROPERTY
@given(text=markup)
def test_fast_path_agrees_with_the_full_scan(engine, text):
    try:
        html = clean_html(text, engine).html
    except UnsafeText:
        return
    fast = nesting._balanced_depth(html, UNBOUNDED)
    if fast is not None:
        scan = nesting._Scan(html, UNBOUNDED, UNBOUNDED)
        scan.run(0, len(html), level=0)
        assert fast == scan.depth == output_depth(html)


# --- the attack against the real server -----------------------------------------------


@pytest.mark.asyncio
async def test_nested_markup_attack_leaves_the_server_responsive(app):
    attacker = await app.editor("mallory", "doc-nested")
    bystander = await app.editor("bob", "doc-other")
    before = await app.fetch("GET", "/api/documents/doc-nested")
    started = time.monotonic()
    ids = [await attacker.send_msg("realtime_edit", {"change_delta": {"position": 0, "insert": "<ul><li>" * 1200}})
           for _ in range(4)]
    beat = await bystander.send_msg("heartbeat", {})
    assert (await bystander.recv_type("heartbeat_ack", timeout=30))["id"] == beat
    assert time.monotonic() - started < 2.0  # the four edits took 37 s before the cap
    errors = [await attacker.recv_type("error") for _ in ids]
    assert [e["id"] for e in errors] == ids
    assert {e["payload"]["code"] for e in errors} == {"INVALID_MESSAGE"}
    assert f"deeper than {MAX_DEPTH}" in errors[0]["payload"]["message"]
    await app.settle()
    after = await app.fetch("GET", "/api/documents/doc-nested")
    assert after.json == before.json
    events = await app.events(type="invalid_message")
    assert len(events) == 4 and all(e["user_id"] == "mallory" for e in events)
