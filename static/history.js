// The history view: a slider through the open document's revisions, each character in its
// author's colour (replayed here from GET /api/documents/{id}/history), the changes between two
// revisions in words, and a restore of the revision shown (POST …/restore, editors only).

import { cpLength, cpSlice } from './ot.js';
import { api, clock, colorFor, errorText, h, htmlPiece } from './ui.js';
import { EARLIER, Timeline, wordDiff } from './timeline.js';

const PAGE = 1000;           // ops per history request (the endpoint's most)
const MAX_REVISIONS = 5000;  // replayed at most: older text is "earlier"
const BLOCKS = new Set(['p', 'div', 'li', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'blockquote', 'pre', 'ul', 'ol']);

/** The document at `start` and every stored op after it, as a Timeline. */
async function loadTimeline(docId, headers) {
  const path = `/api/documents/${encodeURIComponent(docId)}`;
  const now = await api('GET', path, undefined, headers);
  if (!now.ok) throw new Error(errorText(now));
  const start = Math.max(0, now.json.revision - MAX_REVISIONS);
  let content = '';
  if (start > 0) {
    const old = await api('GET', `${path}?revision=${start}`, undefined, headers);
    if (!old.ok) throw new Error(errorText(old));
    content = old.json.content;
  }
  const entries = [];
  for (let since = start; ;) {
    const reply = await api('GET', `${path}/history?since=${since}&limit=${PAGE}`, undefined, headers);
    if (!reply.ok) throw new Error(errorText(reply));
    entries.push(...reply.json.ops);
    if (reply.json.next_since === null || !reply.json.ops.length) break;
    since = reply.json.next_since;
  }
  return { format: now.json.format, timeline: new Timeline(start, content, entries) };
}

/** The text a reader sees in sanitized HTML, a line per block (parsed inert, never shown). */
export function visibleText(html) {
  const template = document.createElement('template');
  template.innerHTML = html;
  let text = '';
  const walk = (node) => {
    for (const child of node.childNodes) {
      if (child.nodeType === Node.TEXT_NODE) text += child.data;
      else if (child.localName === 'br') text += '\n';
      else walk(child);
      if (BLOCKS.has(child.localName) && !text.endsWith('\n')) text += '\n';
    }
  };
  walk(template.content);
  return text.trimEnd();
}

/** A span of text in its author's colour. */
function byline(text, author) {
  const span = h('span', { class: author === EARLIER ? 'by earlier' : 'by', title: author || 'before the history shown' },
    text);
  if (author !== EARLIER) span.style.setProperty('--user', colorFor(author));
  return span;
}

/** Wrap every text node under root in spans of its authors: `units` is the author of each text unit. */
function colourText(root, units) {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const nodes = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) nodes.push(node);
  let at = 0;
  for (const node of nodes) {
    const parts = [];
    for (let i = 0; i < node.data.length;) {
      const who = units[at + i];
      let j = i + 1;
      while (j < node.data.length && units[at + j] === who) j += 1;
      parts.push(byline(node.data.slice(i, j), who === undefined ? EARLIER : who));
      i = j;
    }
    at += node.data.length;
    node.replaceWith(...parts);
  }
}

/** The author of each UTF-16 unit of text an HTML document shows, from the author of each code point. */
function textAuthors(html, authors) {
  const perCodePoint = authors.flat();
  const units = [];
  let cp = 0;
  for (let i = 0; i < html.length;) {
    const [next, n] = htmlPiece(html, i);
    for (let k = 0; k < n; k += 1) units.push(perCodePoint[cp]);
    cp += cpLength(html.slice(i, next));
    i = next;
  }
  return units;
}

export class HistoryPanel {
  /** root: the panel; documentId() the open document; headers() the session to ask with. */
  constructor(root, { documentId, headers, role = () => null, restored = () => {} }) {
    this.root = root;
    this.documentId = documentId;
    this.headers = headers;
    this.role = role;
    this.restored = restored;
    const q = (selector) => root.querySelector(selector);
    this.els = {
      title: q('.history-doc'), slider: q('.history-slider'), at: q('.history-at'), authors: q('.history-authors'),
      view: q('.history-view'), restore: q('.history-restore'), note: q('.history-note'), compare: q('.history-compare'),
      diff: q('.history-diff'), summary: q('.history-summary'),
    };
    this.timeline = null;
    this.format = 'html';
    this.revision = null;
    this.loading = null;
    this.els.slider.addEventListener('input', () => this.show(Number(this.els.slider.value)));
    this.els.restore.addEventListener('click', () => this.restore());
    q('.history-reload').addEventListener('click', () => this.load());
    q('.history-close').addEventListener('click', () => this.close());
    this.els.compare.addEventListener('submit', (event) => {
      event.preventDefault();
      this.compare(Number(this.els.compare.from.value), Number(this.els.compare.to.value));
    });
  }

  get isOpen() {
    return !this.root.hidden;
  }

  open() {
    this.root.hidden = false;
    this.root.scrollIntoView({ block: 'nearest' });
    return this.load();
  }

  close() {
    this.root.hidden = true;
  }

  /** Fetch the history again and show its latest revision. */
  load() {
    this.loading = this.fetchTimeline();
    return this.loading;
  }

  async fetchTimeline() {
    const docId = this.documentId();
    this.els.title.textContent = docId;
    this.note('Loading the history…');
    try {
      const { format, timeline } = await loadTimeline(docId, this.headers());
      if (docId !== this.documentId()) return;  // another document was opened meanwhile
      this.timeline = timeline;
      this.format = format;
    } catch (err) {
      this.note(`Could not load the history: ${err.message}`, true);
      return;
    }
    const { slider, compare } = this.els;
    slider.min = compare.from.min = compare.to.min = String(this.timeline.start);
    slider.max = compare.from.max = compare.to.max = String(this.timeline.latest);
    this.note('');
    this.els.diff.replaceChildren();
    this.els.summary.textContent = '';
    this.show(this.timeline.latest);
  }

  /** Show the document at `revision`, each character in its author's colour. */
  show(revision) {
    const { timeline, els } = this;
    this.revision = revision;
    els.slider.value = String(revision);
    const { content, authors } = timeline.at(revision);
    const entry = timeline.entry(revision);
    const what = entry ? `by ${entry.user_id} · ${clock(new Date(entry.time))}`
      : revision === 0 ? 'the empty document' : 'where the history shown starts';
    els.at.textContent = `Revision ${revision} of ${timeline.latest} · ${what}`;
    els.view.dataset.format = this.format;
    if (this.format === 'text') {
      let at = 0;
      els.view.replaceChildren(...authors.runs.map(([n, who]) => byline(cpSlice(content, at, (at += n)), who)));
    } else {
      els.view.innerHTML = content;  // a revision of the server's sanitized document
      colourText(els.view, textAuthors(content, authors));
    }
    this.renderAuthors(authors);
    const viewer = this.role() === 'viewer';  // the server would refuse: say so before anyone tries
    els.restore.disabled = viewer || revision === timeline.latest;
    els.restore.textContent = `Restore revision ${revision}`;
    if (viewer) this.note('View only: restoring a revision needs the editor role, and you are a viewer here.', true);
    els.compare.from.value = String(revision);
    els.compare.to.value = String(timeline.latest);
  }

  renderAuthors(authors) {
    const chips = [...authors.counts()].filter(([, n]) => n > 0).map(([who, n]) => {
      const chip = byline(`${who || 'earlier'} · ${n} character${n === 1 ? '' : 's'}`, who);
      chip.classList.add('who');
      return chip;
    });
    this.els.authors.replaceChildren(...(chips.length ? chips : [h('span', { class: 'muted' }, 'Empty.')]));
  }

  /** The words that changed between two revisions. */
  compare(from, to) {
    const { timeline, els } = this;
    if (!timeline) return;
    const bad = [from, to].find((r) => !(r >= timeline.start && r <= timeline.latest));
    if (bad !== undefined) {
      els.summary.textContent = `Revisions go from ${timeline.start} to ${timeline.latest}.`;
      return;
    }
    const text = (r) => (this.format === 'text' ? timeline.at(r).content : visibleText(timeline.at(r).content));
    const parts = wordDiff(text(from), text(to));
    els.diff.replaceChildren(...parts.map(([kind, words]) => (kind === 'same' ? words : h(kind, {}, words))));
    const count = (kind) => parts.filter(([k]) => k === kind).reduce((n, [, w]) => n + (w.match(/\S+/g) || []).length, 0);
    const added = count('ins'), removed = count('del');
    els.summary.textContent = added || removed
      ? `From revision ${from} to ${to}: ${added} word${added === 1 ? '' : 's'} added, ${removed} removed.`
      : `No change in the text from revision ${from} to ${to}.`;
  }

  /** Write the revision shown as the newest one (the server refuses unless we are an editor). */
  async restore() {
    const revision = this.revision;
    const docId = this.documentId();
    this.els.restore.disabled = true;
    const reply = await api('POST', `/api/documents/${encodeURIComponent(docId)}/restore`, { revision },
      this.headers());
    if (!reply.ok) {
      this.els.restore.disabled = false;
      this.note(`The server refused the restore: ${errorText(reply)}`, true);
      return;
    }
    await this.load();
    this.note(`Revision ${revision} restored as revision ${reply.json.revision}.`);
    this.restored(reply.json);
  }

  note(text, bad = false) {
    this.els.note.textContent = text;
    this.els.note.classList.toggle('bad', bad);
    this.els.note.setAttribute('role', bad ? 'alert' : 'status');
  }

  /** What tests and the console can read. */
  get state() {
    return { open: this.isOpen, revision: this.revision, latest: this.timeline && this.timeline.latest,
      format: this.format, text: this.els.view.textContent };
  }
}
