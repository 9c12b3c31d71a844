"""The browser demo in Debian's Chromium: two editors in sync, concurrent typing, XSS, reconnects, a clean
console in every test."""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from pathlib import Path

import pytest
import pytest_asyncio

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's Chromium (/usr/bin/chromium) is not installed; the browser tests drive it",
                allow_module_level=True)

from playwright.async_api import async_playwright  # noqa: E402

from conftest import ADMIN  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.asyncio]

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
# The demo tabs the running test opened: each must end with a clean console and no dialog.
OPENED: list["Demo"] = []

XSS = '<img src=x onerror=alert(1)><script>alert(2)</script><a href="javascript:alert(3)">x</a>'


@pytest.fixture(autouse=True)
def clean_console():
    """Every test, not only the last: the pages it opened logged no error and showed no dialog."""
    OPENED.clear()
    yield
    for demo in OPENED:
        demo.assert_clean()


@pytest_asyncio.fixture
async def browser():
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


class Demo:
    """One tab of the demo page, with its console, errors and dialogs recorded."""

    def __init__(self, page):
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self._error(f"pageerror: {exc}"))
        page.on("dialog", self._dialog)

    def _console(self, message) -> None:
        if message.type == "error":
            self._error(f"console: {message.text}")

    def _error(self, text: str) -> None:
        self.errors.append(text)

    def _dialog(self, dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        asyncio.ensure_future(dialog.dismiss())

    @classmethod
    async def open(cls, browser, harness, doc: str = "default", users: str = "alice,bob", **query) -> "Demo":
        page = await browser.new_page(viewport={"width": 1400, "height": 1000})
        demo = cls(page)
        OPENED.append(demo)
        params = "&".join(f"{k}={v}" for k, v in {"doc": doc, "users": users, **query}.items())
        await page.goto(f"{harness.base}/?{params}")
        await page.wait_for_function("() => window.mcprtDemo && window.mcprtDemo.ready", timeout=10_000)
        return demo

    def card(self, side: int):
        return self.page.locator(f'.editor-card[data-side="{side}"]')

    def rich(self, side: int):
        return self.card(side).locator(".rich")

    async def states(self) -> list[dict]:
        return await self.page.evaluate("() => window.mcprtDemo.states")

    async def type_at_end(self, side: int, text: str, area: str = ".rich") -> None:
        await self.card(side).locator(area).click()
        await self.page.keyboard.press("Control+End")
        await self.page.keyboard.type(text)

    def assert_clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.dialogs == [], self.dialogs


async def until(check, timeout: float = 10.0, what: str = "condition"):
    """Poll an async check until it returns something truthy."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


async def converged(harness, demos: list[Demo], doc: str = "default", timeout: float = 15.0) -> str:
    """Wait until every editor on every page is in sync and equal to the server's content; return it."""

    async def check():
        states = [s for demo in demos for s in await demo.states()]
        if not all(s["synchronized"] for s in states):
            return None
        if len({(s["content"], s["revision"]) for s in states}) != 1:
            return None
        reply = await harness.fetch("GET", f"/api/documents/{doc}", admin=True)
        body = reply.json
        if body["content"] == states[0]["content"] and body["revision"] == states[0]["revision"]:
            return body["content"]
        return None

    return await until(check, timeout, "the editors and the server to converge")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_two_editors_sync_both_ways(start, browser, both_databases):
    harness = await start(db=both_databases)  # the demo on either store
    demo = await Demo.open(browser, harness)
    await demo.type_at_end(1, "Hello from alice.")
    await converged(harness, [demo])  # bob appends to alice's whole sentence, not to part of it
    await demo.type_at_end(2, " Bob here.")
    content = await converged(harness, [demo])
    assert content == "Hello from alice. Bob here."
    assert await demo.rich(1).inner_text() == await demo.rich(2).inner_text() == content
    peers = harness.deps.hub.members("default")
    assert len(peers) == 2 and all(peer.lean for peer in peers)  # the demo speaks the lean mode

    # A remote edit before bob's caret (from another tab) moves it along: he keeps typing where he was.
    other = await Demo.open(browser, harness, users="carol,dave")
    await other.rich(1).click()
    await other.page.keyboard.press("Control+Home")
    await other.page.keyboard.type(">> ")
    await converged(harness, [demo, other])
    await demo.page.keyboard.type(" Still here.")
    content = await converged(harness, [demo, other])
    assert content == "&gt;&gt; Hello from alice. Bob here. Still here."
    assert await demo.rich(2).inner_text() == ">> Hello from alice. Bob here. Still here."
    await other.page.close()

    # Formatting from the toolbar travels as HTML; the other side shows the presence of alice.
    await demo.rich(1).click()
    await demo.page.keyboard.press("Control+a")
    await demo.card(1).locator('[data-cmd="bold"]').click()
    content = await converged(harness, [demo])
    assert content.startswith("<b>") and "Still here." in content
    assert await demo.rich(2).locator("b").count() == 1
    await until(lambda: demo.card(2).locator(".presence").inner_text(), what="presence")
    presence = await demo.card(2).locator(".presence").inner_text()
    assert "alice" in presence and "bob (you)" in presence
    demo.assert_clean()
    other.assert_clean()


async def test_plain_text_document_created_from_the_picker(start, browser):
    harness = await start()
    demo = await Demo.open(browser, harness)
    doc = unique("notes")
    await demo.page.fill("#doc-id", doc)
    await demo.page.select_option("#doc-format", "text")
    await demo.page.click("#doc-form button[type=submit]")
    await demo.page.wait_for_function(
        "(doc) => window.mcprtDemo.ready && window.mcprtDemo.states.every(s => s.document === doc && s.format === 'text')",
        arg=doc, timeout=10_000)
    assert (await harness.fetch("GET", f"/api/documents/{doc}", admin=True)).json["format"] == "text"
    assert await demo.rich(1).is_hidden()
    assert await demo.page.input_value('#api-panel [data-api="document"] [name="document_id"]') == doc  # follows

    await demo.type_at_end(1, "<b>not bold</b> & caf\u00e9 \U0001F600", area=".plain")
    await demo.page.keyboard.press("Enter")
    await demo.page.keyboard.type("line two")
    await converged(harness, [demo], doc)  # bob appends to what alice typed, once it has all arrived
    await demo.type_at_end(2, " (bob)", area=".plain")
    content = await converged(harness, [demo], doc)
    assert content == "<b>not bold</b> & caf\u00e9 \U0001F600\nline two (bob)"
    for side in (1, 2):
        assert await demo.card(side).locator(".plain").input_value() == content
    assert await demo.page.locator(".editor-wrap b").count() == 0
    demo.assert_clean()


async def test_concurrent_typing_converges(start, browser):
    harness = await start()
    doc = unique("race")
    first = await Demo.open(browser, harness, doc)
    second = await Demo.open(browser, harness, doc, users="carol,dave")
    await first.type_at_end(1, "Start. ")
    await converged(harness, [first, second], doc)

    words_a = "alice types the quick brown fox "
    words_b = "dave jumps over the lazy dog "
    await first.rich(1).click()
    await first.page.keyboard.press("Control+End")
    await second.rich(2).click()
    await second.page.keyboard.press("Control+End")
    await asyncio.gather(first.page.keyboard.type(words_a), second.page.keyboard.type(words_b))
    await asyncio.gather(first.page.keyboard.type("and more. "), second.page.keyboard.type("the end."))

    content = await converged(harness, [first, second], doc)
    assert content.startswith("Start. ")
    assert words_a + "and more. " in content, content
    assert words_b + "the end." in content, content
    assert len(content) == len("Start. " + words_a + "and more. " + words_b + "the end.")
    first.assert_clean()
    second.assert_clean()


async def test_xss_paste_is_neutralized(start, browser):
    harness = await start()
    demo = await Demo.open(browser, harness)
    await demo.type_at_end(1, "Safe text. ")
    await converged(harness, [demo])
    assert await demo.page.input_value("#xss-sample") == XSS
    await demo.page.click("#xss-form button")
    await demo.page.wait_for_selector("#xss-checks li.ok", timeout=10_000)
    assert await demo.page.locator("#xss-checks li.bad").count() == 0

    content = await converged(harness, [demo])
    assert content.startswith("Safe text. ")
    for bad in ("<script", "onerror", "javascript:", "<img"):
        assert bad not in content.lower(), content
    dom = await demo.page.evaluate("""() => [...document.querySelectorAll('.editor-wrap *')].map(el => ({
        tag: el.localName, attrs: [...el.attributes].map(a => [a.name, a.value])}))""")
    assert not [el for el in dom if el["tag"] in ("script", "img", "iframe")]
    assert not [el for el in dom for name, _ in el["attrs"] if name.startswith("on")]
    assert not [el for el in dom for name, value in el["attrs"]
                if name == "href" and value.strip().lower().startswith("javascript:")]
    await asyncio.sleep(0.3)  # an onerror would have fired by now
    assert demo.dialogs == []

    # The operator's view: the attempt is in the security log, shown as text.
    await harness.settle()
    await demo.page.fill("#admin-token", ADMIN)
    await demo.page.click("#events-form button")
    await demo.page.wait_for_selector("#events-table tbody tr", timeout=5_000)
    assert "xss_attempt" in await demo.page.inner_text("#events-table tbody")
    assert await demo.page.locator("#events-table tbody script").count() == 0
    demo.assert_clean()


async def test_reconnection_catches_up_and_keeps_offline_edits(start, browser):
    harness = await start()
    demo = await Demo.open(browser, harness)
    await demo.type_at_end(1, "Shared start.")
    await converged(harness, [demo])

    # Editor 2 goes offline while editor 1 keeps writing.
    await demo.card(2).locator(".switch").click()
    await until(lambda: demo.page.evaluate("() => window.mcprtDemo.states[1].status === 'offline'"),
                what="editor 2 offline")
    assert await demo.card(2).locator(".switch-label").inner_text() == "offline"  # the label follows the switch
    await demo.type_at_end(1, " Alice while bob is away.")
    await until(lambda: demo.page.evaluate("() => window.mcprtDemo.states[0].synchronized"), what="editor 1 sync")
    assert "away" not in (await demo.states())[1]["content"]

    # Bob writes offline too; nothing is sent until he is back.
    await demo.type_at_end(2, " Bob offline.")
    bob = (await demo.states())[1]
    assert bob["pending"] and "Bob offline." in bob["content"]
    assert "Bob offline." not in (await harness.fetch("GET", "/api/documents/default", admin=True)).json["content"]

    await demo.card(2).locator(".switch").click()
    content = await converged(harness, [demo])
    assert await demo.card(2).locator(".switch-label").inner_text() == "online"
    assert "Alice while bob is away." in content and "Bob offline." in content
    assert content.startswith("Shared start.")

    # Offline while an edit is in flight, so its ack never arrives: found in the history, applied once.
    in_flight = await demo.page.evaluate("""() => {
        const editor = window.mcprtDemo.editors[1];
        editor.els.rich.focus();
        document.execCommand('insertText', false, '!');
        const inFlight = Boolean(editor.client.outstanding);
        editor.goOffline();
        return inFlight;
    }""")
    assert in_flight
    await demo.card(2).locator(".switch").click()
    content = await converged(harness, [demo])
    assert content.count("!") == 1
    demo.assert_clean()


async def test_session_lifecycle_from_the_editor_card(start, browser):
    harness = await start()
    demo = await Demo.open(browser, harness)
    card = demo.card(2)
    await card.locator(".user-name").fill("erin")
    await card.locator(".activate-now").uncheck()
    await card.locator(".btn-create").click()
    await until(lambda: card.locator(".session-info").inner_text(), what="session info")
    await demo.page.wait_for_function("() => window.mcprtDemo.states[1].session === 'Pending'")
    assert (await demo.states())[1]["status"] == "no-session"

    await card.locator(".btn-activate").click()
    await demo.page.wait_for_function("() => window.mcprtDemo.states[1].status === 'connected'")
    assert (await demo.states())[1]["user"] == "erin"

    await card.locator(".btn-invalidate").click()
    await demo.page.wait_for_function("() => window.mcprtDemo.states[1].status === 'closed'")
    assert "4010" in await card.locator(".status").inner_text()
    await until(lambda: demo.page.evaluate("() => window.mcprtDemo.states[1].session === 'Invalidated'"),
                what="session info to say Invalidated")
    assert "Invalidated" in await card.locator(".session-info").inner_text()
    demo.assert_clean()


async def test_panels_screenshot_and_no_console_errors(start, browser, tmp_path, both_databases):
    harness = await start(db=both_databases)
    demo = await Demo.open(browser, harness)
    await demo.type_at_end(1, "Meeting notes")
    await demo.page.keyboard.press("Enter")
    await demo.card(1).locator('[data-cmd="insertUnorderedList"]').click()
    await demo.page.keyboard.type("sessions over REST")
    await demo.page.keyboard.press("Enter")
    await demo.page.keyboard.type("edits over a WebSocket")
    # Editor 2 appends to what it has seen: until editor 1's typing reaches it, its end is mid-word
    # (and the server rightly keeps the insertion there).
    await converged(harness, [demo])
    await demo.type_at_end(2, ", with operational transform")
    content = await converged(harness, [demo])
    assert "<li>sessions over REST</li><li>edits over a WebSocket, with operational transform</li>" in content
    assert await demo.rich(2).locator("li").count() == 2

    panel = demo.page.locator("#api-panel")
    await panel.locator('[data-api="health"] button').click()
    await until(lambda: panel.locator(".api-body").inner_text(), what="the health reply")
    assert '"healthy"' in await panel.locator(".api-body").inner_text()
    assert "200" in await panel.locator(".api-status").inner_text()

    await panel.locator('[data-api="session"] [data-fill="1"]').click()
    await panel.locator('[data-api="session"] [data-method="GET"]').click()
    await demo.page.wait_for_function(
        "() => document.querySelector('#api-panel .api-body').textContent.includes('\"bob\"')")
    await panel.locator('[data-api="document"] [data-what="history"]').click()
    await demo.page.wait_for_function(
        "() => document.querySelector('#api-panel .api-body').textContent.includes('\"ops\"')")

    await demo.page.click("#xss-form button")
    await demo.page.wait_for_selector("#xss-checks li.ok", timeout=10_000)
    await converged(harness, [demo])
    await harness.settle()
    await demo.page.fill("#admin-token", ADMIN)
    await demo.page.click("#events-form button")
    await demo.page.wait_for_selector("#events-table tbody tr", timeout=5_000)

    await demo.page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    demo.assert_clean()


async def test_a_30kb_paste_arrives_whole_in_the_other_editor(start, browser):
    harness = await start()
    demo = await Demo.open(browser, harness)
    words = " ".join(f"word{i}" for i in range(4300))  # about 30 KB: three times the message limit
    assert len(words.encode()) > 30_000
    await demo.rich(1).click()
    await demo.page.keyboard.insert_text(words)
    content = await converged(harness, [demo], timeout=30)
    assert words in content
    assert words in await demo.rich(2).inner_text()
    await harness.settle()
    ops = (await harness.fetch("GET", "/api/documents/default/history?limit=1000", admin=True)).json["ops"]
    assert len(ops) >= 3  # sent as several edits under the 10 KB limit, each acknowledged


async def test_a_viewers_editor_is_read_only_until_it_is_made_an_editor(start, browser):
    """--auth jwt: sessions from tokens pasted in the cards; the owner types, the viewer follows and cannot."""
    import jwt
    secret = "a-deployment-secret-of-at-least-32-characters"
    harness = await start(auth="jwt", jwt_secret=secret)

    def token(user: str) -> str:
        return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, secret, algorithm="HS256")
    doc = unique("plan")
    owner = await harness.fetch("POST", "/api/sessions", {}, headers={"Authorization": f"Bearer {token('alice')}"})
    assert (await harness.fetch("POST", "/api/documents", {"document_id": doc},
                                headers={"X-Session-ID": owner.json["session_id"]})).status == 201
    assert (await harness.fetch("PUT", f"/api/documents/{doc}/members", {"member": "user:bob", "role": "viewer"},
                                admin=True)).status == 200

    demo = await jwt_demo(browser, harness, doc)
    page = demo.page
    for side, user in ((1, "alice"), (2, "bob")):
        await demo.card(side).locator(".user-token").fill(token(user))
        await demo.card(side).locator(".btn-create").click()
    await page.wait_for_function("() => window.mcprtDemo.ready", timeout=10_000)
    assert [s["role"] for s in await demo.states()] == ["owner", "viewer"]
    assert [s["user"] for s in await demo.states()] == ["alice", "bob"]
    assert await demo.rich(2).get_attribute("contenteditable") == "false"
    assert await demo.card(2).locator(".role-badge").inner_text() == "view only"
    assert await demo.card(2).locator('.toolbar button[data-cmd="bold"]').is_disabled()

    await demo.type_at_end(1, "owner text")
    await converged(harness, [demo], doc)
    await demo.rich(2).click(force=True)
    await page.keyboard.type("viewer text")
    content = await converged(harness, [demo], doc)
    assert "owner text" in content and "viewer text" not in content
    assert "viewer text" not in await demo.rich(2).inner_text()

    reply = await harness.fetch("PUT", f"/api/documents/{doc}/members", {"member": "user:bob", "role": "editor"},
                                admin=True)
    assert reply.status == 200
    await page.wait_for_function("() => window.mcprtDemo.states[1].role === 'editor'")
    assert await demo.rich(2).get_attribute("contenteditable") == "true"
    await demo.type_at_end(2, " and bob")
    content = await converged(harness, [demo], doc)
    assert content.count("owner text") == 1 and "and bob" in content
    demo.assert_clean()


async def test_the_browser_client_example_edits_a_document(start, browser):
    harness = await start()
    page = await browser.new_page()
    demo = Demo(page)
    OPENED.append(demo)
    await page.goto(f"{harness.base}/")  # a page of the server's origin
    doc = unique("example")
    code = (Path(__file__).resolve().parent.parent / "examples" / "client.js").read_text()
    seen = await page.evaluate(f"""async () => {{
        {code}
        const seen = [];
        const client = await mcprtJoin({doc!r}, 'carol', (content, type) => seen.push([type, content]));
        client.append('hello from the example');
        await new Promise((resolve) => {{ const t = setInterval(() => {{
            if (seen.some(([type]) => type === 'edit_ack')) {{ clearInterval(t); resolve(); }} }}, 20); }});
        client.close();
        return seen;
    }}""")
    assert seen == [["document_state", ""], ["edit_ack", "hello from the example"]]
    stored = await harness.fetch("GET", f"/api/documents/{doc}", admin=True)
    assert stored.json["content"] == "hello from the example"
    demo.assert_clean()


@pytest.mark.parametrize("fmt", ["html", "text"])
async def test_undo_takes_back_my_words_never_a_collaborators_and_redo_restores_them(start, browser, fmt):
    harness = await start()
    doc = unique(f"undo-{fmt}")
    if fmt == "text":
        await harness.fetch("POST", "/api/documents", {"document_id": doc, "format": "text"}, admin=True)
    demo = await Demo.open(browser, harness, doc=doc)
    area = ".rich" if fmt == "html" else ".plain"
    await demo.type_at_end(1, "alice one ", area)
    await demo.type_at_end(1, "two ", area)
    await converged(harness, [demo], doc)
    await asyncio.sleep(1.1)  # a pause: a new step
    await demo.type_at_end(1, "three ", area)
    await converged(harness, [demo], doc)
    await demo.type_at_end(2, "BOB", area)  # the collaborator's text arrives in alice's editor
    content = await converged(harness, [demo], doc)
    assert "BOB" in content and "three" in content

    await demo.card(1).locator(area).click()
    await demo.page.keyboard.press("Control+z")  # alice's last step only
    content = await converged(harness, [demo], doc)
    assert "three" not in content and "BOB" in content and "alice one two" in content
    await demo.card(1).locator(".btn-undo").click()  # and the step before, by the button
    content = await converged(harness, [demo], doc)
    assert "two" not in content and "BOB" in content and "alice one" in content
    await demo.card(1).locator(area).click()
    await demo.page.keyboard.press("Control+Shift+z")
    await demo.page.keyboard.press("Control+y")
    content = await converged(harness, [demo], doc)
    assert "alice one two three" in content.replace("  ", " ") and content.count("BOB") == 1
    assert (await demo.states())[0]["canRedo"] is False
    demo.assert_clean()


async def test_two_people_on_one_pad_link_get_their_own_names_and_see_each_other(start, browser):
    harness = await start()
    doc = unique("pad")
    pages = []
    for name in ("Ana Lima", "Ben"):
        context = await browser.new_context(viewport={"width": 1000, "height": 800})
        page = await context.new_page()
        demo = Demo(page)
        OPENED.append(demo)
        await page.goto(f"{harness.base}/p/{doc}")
        form = page.locator("#pad-name")
        await form.wait_for(state="visible")
        assert (await form.locator("input").input_value()).startswith("guest-")  # not alice or bob
        await form.locator("input").fill(name)
        await form.locator("button").click()
        await page.wait_for_function("() => window.mcprtDemo.ready", timeout=10_000)
        pages.append(demo)
    ana, ben = pages
    await until(lambda: ana.page.locator("#pad-people").inner_text(), what="people here")
    for demo in pages:
        await demo.page.wait_for_function("() => document.getElementById('pad-people').textContent === '2 people here'")
    assert await ana.page.locator(".avatar").evaluate_all("els => els.map(e => [e.textContent, e.title])") == [
        ["AL", "Ana Lima (you)"], ["B", "Ben"]]
    assert [s["user"] for s in await ben.states()] == ["Ben"]
    assert await ana.page.locator(".panels").is_hidden() and await ana.page.locator(".log-box").is_hidden()
    await ana.type_at_end(1, "hello from Ana")
    await converged(harness, [ana, ben], doc)
    assert "hello from Ana" in (await ben.states())[0]["content"]
    await ben.page.reload()  # the name is remembered: no form
    await ben.page.wait_for_function("() => window.mcprtDemo && window.mcprtDemo.ready", timeout=10_000)
    assert await ben.page.locator("#pad-name").is_hidden() and [s["user"] for s in await ben.states()] == ["Ben"]
    for demo in pages:
        demo.assert_clean()


@pytest.mark.parametrize("width, height", [(390, 844), (320, 640)])
async def test_a_phone_sees_nothing_wider_than_its_screen(start, browser, width, height):
    harness = await start()
    page = await browser.new_page(viewport={"width": width, "height": height})
    demo = Demo(page)
    OPENED.append(demo)
    await page.goto(f"{harness.base}/?doc={unique('phone')}")
    await page.wait_for_function("() => window.mcprtDemo && window.mcprtDemo.ready", timeout=10_000)
    wider = await too_wide(page)
    assert wider == [] and await page.evaluate("document.documentElement.scrollWidth") <= width
    demo.assert_clean()


async def test_the_toolbar_makes_blocks_the_policy_keeps(start, browser):
    harness = await start()
    doc = unique("blocks")
    demo = await Demo.open(browser, harness, doc=doc)
    await demo.type_at_end(1, "Title")
    await demo.card(1).locator('.toolbar button[data-value="h1"]').click()
    content = await converged(harness, [demo], doc)
    assert content == "<h1>Title</h1>"
    await demo.card(1).locator('.toolbar button[data-value="blockquote"]').click()
    content = await converged(harness, [demo], doc)
    assert content.startswith("<blockquote>") and "Title" in content
    await demo.card(1).locator('.toolbar button[data-value="pre"]').click()
    content = await converged(harness, [demo], doc)
    assert "<pre>" in content and "Title" in content
    assert (await demo.states())[0]["corrections"] == 0  # nothing the server had to take out
    demo.assert_clean()


async def history_of(harness, doc: str) -> list[dict]:
    """The document's stored ops, as the history endpoint gives them."""
    await harness.settle()
    return (await harness.fetch("GET", f"/api/documents/{doc}/history?limit=1000", admin=True)).json["ops"]


async def open_history(demo: Demo, latest: int) -> None:
    """Open the history view and wait until it shows revision `latest`."""
    await demo.page.locator(".history-open:visible").click()
    await demo.page.wait_for_function("(latest) => window.mcprtDemo.history.state.latest === latest", arg=latest)


async def slide_to(demo: Demo, revision: int) -> None:
    """Drag the slider back from the newest revision with the keyboard, one revision a step."""
    slider = demo.page.locator(".history-slider")
    await slider.focus()
    await demo.page.keyboard.press("End")
    latest = int(await slider.get_attribute("max"))
    for _ in range(latest - revision):
        await demo.page.keyboard.press("ArrowLeft")
    assert (await demo.page.evaluate("() => window.mcprtDemo.history.state"))["revision"] == revision


async def alice_then_bob(harness, demo: Demo, doc: str) -> tuple[int, int]:
    """Alice writes a sentence, then Bob one: the last revisions of each."""
    await demo.type_at_end(1, "Hello from alice.")
    await converged(harness, [demo], doc)
    await demo.type_at_end(2, " Bob was here.")
    await converged(harness, [demo], doc)
    ops = await history_of(harness, doc)
    alice = max(op["revision"] for op in ops if op["user_id"] == "alice")
    return alice, ops[-1]["revision"]


async def test_the_timeslider_shows_an_earlier_revision_in_its_authors_colours(start, browser):
    harness = await start()
    doc = unique("history")
    demo = await Demo.open(browser, harness, doc=doc)
    alice, latest = await alice_then_bob(harness, demo, doc)
    await open_history(demo, latest)
    panel = demo.page.locator("#history-panel")
    assert await panel.locator(".history-view").inner_text() == "Hello from alice. Bob was here."
    assert await panel.locator('.history-view .by[title="bob"]').all_inner_texts() == [" Bob was here."]

    await slide_to(demo, alice)
    assert await panel.locator(".history-view").inner_text() == "Hello from alice."
    assert (await panel.locator(".history-at").inner_text()).startswith(f"Revision {alice} of {latest} · by alice")
    assert "".join(await panel.locator('.history-view .by[title="alice"]').all_inner_texts()) == "Hello from alice."
    assert await panel.locator('.history-view .by[title="bob"]').count() == 0
    colours = await panel.locator(".history-view .by").evaluate_all(
        "els => [...new Set(els.map(e => e.style.getPropertyValue('--user')))]")
    chip = await demo.card(1).locator(".user-chip").evaluate("e => e.style.getPropertyValue('--user')")
    assert colours == [chip]  # alice's colour, as on her editor card
    assert await panel.locator(".history-authors").inner_text() == "alice · 17 characters"
    assert (await demo.states())[0]["content"] == "Hello from alice. Bob was here."  # the editors stay as they are

    await panel.locator(".history-compare button").click()  # from the revision shown to the newest
    assert await panel.locator(".history-diff ins").all_inner_texts() == [" Bob was here."]
    assert await panel.locator(".history-diff del").count() == 0
    assert "3 words added, 0 removed" in await panel.locator(".history-summary").inner_text()
    demo.assert_clean()


async def test_an_editor_restores_a_revision_from_the_history_view(start, browser):
    harness = await start()
    doc = unique("restore")
    demo = await Demo.open(browser, harness, doc=doc)
    alice, latest = await alice_then_bob(harness, demo, doc)
    await open_history(demo, latest)
    await slide_to(demo, alice)
    await demo.page.locator(".history-restore").click()
    await demo.page.wait_for_function("(latest) => window.mcprtDemo.history.state.latest > latest", arg=latest)
    assert "restored as revision" in await demo.page.locator(".history-note").inner_text()
    content = await converged(harness, [demo], doc)
    assert content == "Hello from alice."
    assert await demo.rich(1).inner_text() == await demo.rich(2).inner_text() == "Hello from alice."
    assert await demo.page.locator(".history-view").inner_text() == "Hello from alice."
    demo.assert_clean()


async def test_a_viewer_is_told_that_restoring_needs_the_editor_role(start, browser):
    import jwt
    secret = "a-deployment-secret-of-at-least-32-characters"
    harness = await start(auth="jwt", jwt_secret=secret)
    doc = unique("viewed")
    owner = (await harness.fetch("POST", "/api/sessions", {"user_id": "alice"}, admin=True)).json
    headers = {"X-Session-ID": owner["session_id"]}
    assert (await harness.fetch("POST", "/api/documents", {"document_id": doc}, headers=headers)).status == 201
    ws = await harness.ws_connect(owner["session_id"], doc)
    for i, word in enumerate(("one ", "two ")):
        await ws.send_msg("realtime_edit", {"base_revision": i, "change_delta": [{"position": 4 * i, "insert": word}]})
        await ws.recv_type("edit_ack")
    assert (await harness.fetch("PUT", f"/api/documents/{doc}/members", {"member": "user:bob", "role": "viewer"},
                                admin=True)).status == 200

    demo = await jwt_demo(browser, harness, doc)
    page = demo.page
    token = jwt.encode({"sub": "bob", "exp": int(time.time()) + 3600}, secret, algorithm="HS256")
    await demo.card(2).locator(".user-token").fill(token)
    await demo.card(2).locator(".btn-create").click()
    await page.wait_for_function("() => window.mcprtDemo.states[1].role === 'viewer'", timeout=10_000)
    await open_history(demo, 2)
    await slide_to(demo, 1)
    assert await page.locator(".history-view").inner_text() == "one "
    assert await page.locator(".history-restore").is_disabled()  # never sent: the server would refuse
    note = page.locator(".history-note")
    assert "needs the editor role" in await note.inner_text() and await note.get_attribute("role") == "alert"
    assert (await harness.fetch("GET", f"/api/documents/{doc}", admin=True)).json["content"] == "one two "
    demo.assert_clean()


async def test_a_remote_selection_is_highlighted_in_its_owners_colour(start, browser):
    harness = await start()
    doc = unique("select")
    demo = await Demo.open(browser, harness, doc=doc)
    await demo.type_at_end(1, "Hello wonderful world")
    await converged(harness, [demo], doc)
    await demo.page.keyboard.press("End")
    for _ in range(len(" world")):
        await demo.page.keyboard.press("ArrowLeft")
    for _ in range(len("wonderful")):
        await demo.page.keyboard.press("Shift+ArrowLeft")
    # the selection grows a character per key press, each reported: wait for the whole word
    await demo.page.wait_for_function("() => window.mcprtDemo.states[1].peers.some("
                                      "p => p.end !== null && Math.abs(p.end - p.cursor) === 'wonderful'.length)")
    marks = demo.card(2).locator(".carets .remote-selection")
    await marks.first.wait_for()
    assert await marks.count() == 1
    word = await demo.rich(2).evaluate("""(root) => {
        const node = root.firstChild, start = node.data.indexOf('wonderful');
        const range = document.createRange();
        range.setStart(node, start);
        range.setEnd(node, start + 'wonderful'.length);
        const r = range.getBoundingClientRect();
        return {left: r.left, width: r.width, top: r.top};
    }""")
    mark = await marks.evaluate("e => { const r = e.getBoundingClientRect(); return {left: r.left, width: r.width, top: r.top}; }")
    assert abs(mark["left"] - word["left"]) < 2 and abs(mark["width"] - word["width"]) < 2 and abs(mark["top"] - word["top"]) < 2
    alice = await demo.card(1).locator(".user-chip").evaluate("e => e.style.getPropertyValue('--user')")
    assert await marks.evaluate("e => e.style.getPropertyValue('--user')") == alice
    assert await demo.card(2).locator(".carets .caret-label").all_inner_texts() == ["alice"]
    chips = demo.card(2).locator(".presence .who:not(.me)")  # a name in a colour, no code-point numbers
    assert await chips.all_inner_texts() == ["alice"]
    assert await chips.evaluate("e => e.style.getPropertyValue('--user')") == alice
    demo.assert_clean()


async def test_a_plain_text_document_shows_a_remote_caret_where_its_owner_types(start, browser):
    harness = await start()
    doc = unique("plain-caret")
    await harness.fetch("POST", "/api/documents", {"document_id": doc, "format": "text"}, admin=True)
    demo = await Demo.open(browser, harness, doc=doc)
    await demo.type_at_end(1, "line one", area=".plain")
    await demo.page.keyboard.press("Enter")
    await demo.page.keyboard.type("line two")
    await converged(harness, [demo], doc)
    caret = demo.card(2).locator(".carets .caret")
    await demo.page.wait_for_function(
        "() => window.mcprtDemo.states[1].peers.some(p => p.cursor === 'line one\\nline two'.length)")
    await caret.wait_for()
    assert await demo.card(2).locator(".carets .caret-label").all_inner_texts() == ["alice"]
    where = await demo.card(2).locator(".plain").evaluate("""(ta) => {
        const style = getComputedStyle(ta), box = ta.getBoundingClientRect();
        const ctx = document.createElement('canvas').getContext('2d');
        ctx.font = `${style.fontSize} ${style.fontFamily}`;
        return {left: box.left + ta.clientLeft + parseFloat(style.paddingLeft) + ctx.measureText('line two').width,
                firstLine: box.top + ta.clientTop + parseFloat(style.paddingTop), line: parseFloat(style.lineHeight)};
    }""")
    box = await caret.evaluate("e => { const r = e.getBoundingClientRect(); return {left: r.left, top: r.top}; }")
    assert abs(box["left"] - where["left"]) < 2, (box, where)
    assert abs(box["top"] - (where["firstLine"] + where["line"])) < where["line"] / 2, (box, where)  # the second line
    demo.assert_clean()


async def test_a_refused_session_says_when_to_retry_and_the_editors_wait(start, browser, clock):
    harness = await start(clock=clock, session_create_limit=2)
    for name in ("early", "bird"):  # this address's two sessions of the minute
        await harness.session(name)
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    demo = Demo(page)
    OPENED.append(demo)
    refusals = []
    page.on("response", lambda r: refusals.append(r) if r.url.endswith("/api/sessions") else None)
    doc = unique("later")
    await page.goto(f"{harness.base}/?doc={doc}")
    banner = page.locator("#banner")
    await banner.locator(".retry-text").wait_for()

    async def both_refused():
        return len(refusals) == 2
    await until(both_refused, what="both editors' requests")
    assert [(r.status, await r.header_value("retry-after")) for r in refusals] == [(429, "60"), (429, "60")]
    wait = re.search(r"Editing starts by itself in (\d+) s \(at ", await banner.inner_text())
    assert wait and 55 <= int(wait.group(1)) <= 60
    for side in (1, 2):  # nothing that looks editable while there is no session
        assert await demo.rich(side).get_attribute("contenteditable") == "false"
        assert await demo.card(side).locator('.toolbar button[data-cmd="bold"]').is_disabled()
    assert [s["status"] for s in await demo.states()] == ["no-session", "no-session"]
    # Chromium logs each refused request itself; nothing else reached the console.
    assert demo.errors == ["console: Failed to load resource: the server responded with a status of 429 "
                           "(Too Many Requests)"] * 2
    demo.errors.clear()

    clock.advance(61)  # the server's window has passed
    await banner.locator(".retry-now").click()
    await page.wait_for_function("() => window.mcprtDemo.ready", timeout=10_000)
    assert await banner.is_hidden()
    assert await demo.rich(1).get_attribute("contenteditable") == "true"
    await demo.type_at_end(1, "at last")
    assert await converged(harness, [demo], doc) == "at last"
    demo.assert_clean()


async def test_enter_makes_paragraphs(start, browser):
    harness = await start()
    doc = unique("paragraphs")
    demo = await Demo.open(browser, harness, doc=doc)
    await demo.type_at_end(1, "First")
    await demo.page.keyboard.press("Enter")
    await demo.page.keyboard.type("Second")
    await demo.page.keyboard.press("Enter")
    await demo.page.keyboard.type("Third")
    content = await converged(harness, [demo], doc)
    assert content == "<p>First</p><p>Second</p><p>Third</p>"
    assert await demo.rich(2).locator("p").all_inner_texts() == ["First", "Second", "Third"]
    await demo.page.keyboard.press("Enter")  # a list from an empty paragraph takes its place, never inside it
    await demo.card(1).locator('[data-cmd="insertUnorderedList"]').click()
    await demo.page.keyboard.type("item")
    content = await converged(harness, [demo], doc)
    assert content == "<p>First</p><p>Second</p><p>Third</p><ul><li>item</li></ul>"
    assert (await demo.states())[0]["corrections"] == 0  # nothing the sanitizer had to mend
    demo.assert_clean()


async def test_a_link_without_an_address_is_not_shown_as_a_link(start, browser):
    harness = await start()
    doc = unique("links")
    demo = await Demo.open(browser, harness, doc=doc)
    ws = await harness.editor("carol", doc)
    html = '<p>see <a href="javascript:alert(1)">bad</a> or <a href="https://example.com/">good</a></p>'
    await ws.send_msg("realtime_edit", {"base_revision": 0, "change_delta": [{"position": 0, "insert": html}]})
    await ws.recv_type("edit_ack")
    content = await converged(harness, [demo], doc)
    assert "<a>bad</a>" in content  # the sanitizer took the href and kept the element
    looks = await demo.rich(1).locator("a").evaluate_all("""els => els.map(a => {
        const s = getComputedStyle(a), p = getComputedStyle(a.parentNode);
        return [a.textContent, s.color === p.color, s.textDecorationLine];
    })""")
    assert looks == [["bad", True, "none"], ["good", False, "underline"]]
    demo.assert_clean()


async def too_wide(page) -> list[str]:
    """The visible elements that reach past the right edge of the viewport (tag.class each)."""
    return await page.evaluate("""() => [...document.querySelectorAll('body *')]
        .filter((e) => e.offsetParent !== null && e.getBoundingClientRect().right > innerWidth + 1)
        .map((e) => `${e.tagName}.${e.className}`)""")


async def jwt_demo(browser, harness, doc: str) -> Demo:
    """The developer view of `doc` on a server under --auth jwt, its cards waiting for tokens."""
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    demo = Demo(page)
    OPENED.append(demo)
    await page.goto(f"{harness.base}/?doc={doc}")
    await page.wait_for_function("() => window.mcprtDemo && window.mcprtDemo.auth === 'jwt'")
    return demo


async def join_pad(browser, harness, doc: str, name: str, width: int = 1100, height: int = 800) -> Demo:
    """A person opening the pad's link in their own browser and giving their name."""
    context = await browser.new_context(viewport={"width": width, "height": height})
    demo = Demo(await context.new_page())
    OPENED.append(demo)
    await demo.page.goto(f"{harness.base}/p/{doc}")
    await demo.page.locator("#pad-name input").fill(name)
    await demo.page.locator("#pad-name button").click()
    await demo.page.wait_for_function("() => window.mcprtDemo.ready", timeout=10_000)
    return demo


async def test_screenshots_of_the_pad_its_history_and_a_phone(start, browser, tmp_path):
    """The README's pictures, from a real session (MCPRT_SCREENSHOTS=docs writes them there); each page's
    console stays clean, the pad's and its history view's included, and the phone sees nothing too wide."""
    shots = Path(os.environ.get("MCPRT_SCREENSHOTS") or tmp_path)
    harness = await start()
    doc = "launch-plan"
    ana = await join_pad(browser, harness, doc, "Ana Lima")
    ben = await join_pad(browser, harness, doc, "Ben")
    await ana.type_at_end(1, "Launch plan")
    await ana.card(1).locator('.toolbar button[data-value="h1"]').click()
    await ana.page.keyboard.press("End")
    await ana.page.keyboard.press("Enter")
    await ana.page.keyboard.type("We ship the editor on Monday. ")
    await ana.page.keyboard.press("Enter")
    await ana.page.keyboard.type("Open questions: pricing, the phone layout.")
    await converged(harness, [ana, ben], doc)
    await ben.type_at_end(1, " Ben: the phone layout is done.")
    await converged(harness, [ana, ben], doc)
    for _ in range(len("Monday. ")):  # Ana's caret where she stopped; Ben selects what he wrote
        await ana.page.keyboard.press("ArrowLeft")
    for _ in range(len(" the phone layout is done.")):
        await ben.page.keyboard.press("Shift+ArrowLeft")
    await ana.page.wait_for_selector(".carets .remote-selection")
    await ana.page.screenshot(path=str(shots / "pad.png"))

    await ana.page.locator("#pad-bar .history-open").click()
    await ana.page.wait_for_function("() => window.mcprtDemo.history.state.latest > 0")
    # A revision in the middle of Ben's typing: Ana's text and part of his, the rest of his still to come
    # (how many revisions his sentence took depends on how his keystrokes met the acks).
    ops = (await harness.fetch("GET", f"/api/documents/{doc}/history?limit=1000", admin=True)).json["ops"]
    bens = [op["revision"] for op in ops if op["user_id"] == "Ben"]
    assert len(bens) >= 2, bens
    await slide_to(ana, bens[len(bens) // 2 - 1])
    await ana.page.locator(".history-compare button").click()
    await ana.page.locator(".history-diff ins").first.wait_for()
    assert await ana.page.locator('.history-view .by[title="Ben"]').count() >= 1
    assert await ana.page.locator('.history-view .by[title="Ana Lima"]').count() >= 1
    await ana.page.screenshot(path=str(shots / "history.png"), full_page=True)

    phone = await join_pad(browser, harness, doc, "Caro", width=390, height=844)
    await phone.page.locator("#pad-bar .history-open").click()
    await phone.page.wait_for_function("() => window.mcprtDemo.history.state.latest > 0")
    wider = await too_wide(phone.page)
    assert wider == [] and await phone.page.evaluate("document.documentElement.scrollWidth") <= 390
    await phone.page.evaluate("() => window.scrollTo(0, 0)")
    await phone.page.screenshot(path=str(shots / "phone.png"))

    developer = await Demo.open(browser, harness, doc=doc)  # the developer view of the same document
    await developer.page.set_viewport_size({"width": 1400, "height": 900})
    await developer.type_at_end(2, " Bob: pricing next week.")
    await converged(harness, [developer, ana, ben], doc)
    await developer.card(1).locator(".rich").click()
    await developer.page.keyboard.press("Control+End")
    await developer.page.wait_for_selector('.editor-card[data-side="2"] .carets .caret-label')
    await developer.page.screenshot(path=str(shots / "demo.png"))
    for name in ("pad", "history", "phone", "demo"):
        assert (shots / f"{name}.png").stat().st_size > 10_000
    developer.assert_clean()
