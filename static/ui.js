// Small helpers the demo's modules share: elements built from text, fetch + JSON, each user's
// colour, and the offsets of the text a browser shows for sanitized HTML.

/** An element with text children only: nothing here is ever parsed as HTML. */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') node.className = value;
    else if (key === 'title') node.title = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function clip(text, n = 40) {
  const s = String(text);
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

export function clock(date = new Date()) {
  return date.toLocaleTimeString([], { hour12: false });
}

/** fetch + JSON, never throwing: {ok, status, statusText, json, ms, retryAfter (seconds, or 0)}. */
export async function api(method, path, body, headers = {}) {
  const started = performance.now();
  const init = { method, headers: { Accept: 'application/json', ...headers } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  try {
    const response = await fetch(path, init);
    const text = await response.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch { json = text; }
    return { ok: response.ok, status: response.status, statusText: response.statusText, json,
      ms: performance.now() - started, retryAfter: Number(response.headers.get('Retry-After')) || 0 };
  } catch (err) {
    return { ok: false, status: 0, statusText: String(err.message || err), json: null,
      ms: performance.now() - started };
  }
}

export function errorText(reply) {
  const error = reply.json && reply.json.error;
  return error ? `${error.code}: ${error.message}` : `${reply.status} ${reply.statusText}`;
}

// ---------------------------------------------------------------- HTML text offsets
//
// In sanitized HTML '<' and '>' only delimit tags and '&' only starts a character
// reference, so a plain scan tells which characters a browser shows as text. Offsets
// here are UTF-16 units, the way textContent and Range.toString() count.

export function referenceUnits(reference) {
  const match = /^&#(x[0-9a-f]+|[0-9]+);$/i.exec(reference);
  if (!match) return 1;
  const code = match[1][0].toLowerCase() === 'x' ? parseInt(match[1].slice(1), 16) : parseInt(match[1], 10);
  return code > 0xffff ? 2 : 1;
}

/** [next index, text units] of the piece of html starting at i. */
export function htmlPiece(html, i) {
  const ch = html[i];
  if (ch === '<') {
    const end = html.indexOf('>', i);
    return [end < 0 ? html.length : end + 1, 0];
  }
  if (ch === '&') {
    const end = html.indexOf(';', i);
    if (end > i && end - i <= 32) return [end + 1, referenceUnits(html.slice(i, end + 1))];
  }
  return [i + 1, 1];
}

/** Text units shown before html index `index`. */
export function textUnitsBefore(html, index) {
  let units = 0;
  for (let i = 0; i < index && i < html.length;) {
    const [next, n] = htmlPiece(html, i);
    units += n;
    i = next;
  }
  return units;
}

/** The html index right after `units` shown text units (before any tag that follows). */
export function htmlIndexOfText(html, units) {
  let i = 0, seen = 0;
  while (i < html.length && seen < units) {
    const [next, n] = htmlPiece(html, i);
    seen += n;
    i = next;
  }
  return i;
}

/** The selection inside root as [start, end] text units, or null when it is elsewhere. */
export function selectionUnits(root) {
  const selection = document.getSelection();
  if (!selection || !selection.rangeCount) return null;
  const range = selection.getRangeAt(0);
  if (!root.contains(range.startContainer) || !root.contains(range.endContainer)) return null;
  const before = document.createRange();
  before.selectNodeContents(root);
  before.setEnd(range.startContainer, range.startOffset);
  const start = before.toString().length;
  before.setEnd(range.endContainer, range.endOffset);
  return [start, before.toString().length];
}

/** The DOM point [node, offset] after `units` text units of root. */
export function domPoint(root, units) {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  let left = units, last = null;
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (left <= node.data.length) return [node, left];
    left -= node.data.length;
    last = node;
  }
  return last ? [last, last.data.length] : [root, root.childNodes.length];
}

export function selectUnits(root, start, end) {
  const range = document.createRange();
  range.setStart(...domPoint(root, start));
  range.setEnd(...domPoint(root, end));
  const selection = document.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
}

export const USER_COLORS = ['#4f46e5', '#0d9488', '#c2410c', '#be185d', '#15803d', '#7c3aed'];

export function colorFor(name) {
  let hash = 0;
  for (const ch of String(name)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return USER_COLORS[hash % USER_COLORS.length];
}
