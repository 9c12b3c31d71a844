// The mcprt demo: two editors, each its own user, session and WebSocket, on one document.
//
// Each editor is an ot.js-style client: one edit in flight at a time (outstanding), later
// local edits composed into a buffer, remote edits transformed over both before they are
// applied. The server is the authority; every revision it announces is applied in order.
// Everything that came from the network is shown with textContent, except the document's
// own HTML, which the server has sanitized.

import {
  OTClient, TextOperation, UndoManager, diff, toDelta, transformCursor, splitOp, spanOf, cpLength, cpToUtf16,
  utf16ToCp,
} from './ot.js';
import {
  api, clip, clock, colorFor, domPoint, errorText, h, htmlIndexOfText, selectUnits, selectionUnits,
  textUnitsBefore,
} from './ui.js';
import { HistoryPanel } from './history.js';

const HEARTBEAT_MS = 5000;
const HEARTBEAT_TIMEOUT_MS = 15000;
const ACK_TIMEOUT_MS = 10000;
const GAP_WAIT_MS = 1500;
const CURSOR_THROTTLE_MS = 150;
const LEAN = 'mcprt.ops.v1';  // the server's lean mode: ops and lengths, never the content, after the join
const MAX_PARTS = 150;      // change_delta holds at most 200 parts
const MAX_INSERT = 2000;    // code points per message, well inside the 10 KB message limit
const LOG_LIMIT = 300;
const DOCUMENT_ID = /^[A-Za-z0-9._-]{1,128}$/;
const BLOCKS = /^(p|h[1-6]|li|ul|ol|blockquote|pre|div)$/;  // a line inside one of these is already a block

const CLOSE_REASONS = {
  1000: 'closed', 1001: 'server going away', 1006: 'connection lost', 1008: 'closed for abuse',
  1011: 'server error', 4000: 'invalid session', 4001: 'no credential', 4003: 'credentials disagree',
  4004: 'bad document id', 4008: 'too many connections', 4010: 'session invalidated',
  4011: 'session expired', 4500: 'server error',
};
// Codes after which reconnecting cannot help: the session or the request has to change.
const FINAL_CODES = new Set([1008, 4000, 4001, 4003, 4004, 4008, 4010, 4011]);

const XSS_SAMPLE = '<img src=x onerror=alert(1)><script>alert(2)</script><a href="javascript:alert(3)">x</a>';

// ---------------------------------------------------------------- small helpers

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function fromNow(iso) {
  if (!iso) return '';
  let seconds = Math.round((Date.parse(iso) - Date.now()) / 1000);
  const past = seconds < 0;
  seconds = Math.abs(seconds);
  const hrs = Math.floor(seconds / 3600), mins = Math.floor((seconds % 3600) / 60);
  const span = hrs ? `${hrs} h ${mins} min` : mins ? `${mins} min` : `${seconds} s`;
  return past ? `${span} ago` : `in ${span}`;
}

function newId(prefix) {
  const random = crypto.getRandomValues(new Uint32Array(2));
  return `${prefix}-${Date.now().toString(36)}-${random[0].toString(36)}${random[1].toString(36)}`;
}

// Document endpoints answer only to an Active session (or the operator's token).
function sessionHeaders(session) {
  return session && session.state === 'Active' ? { 'X-Session-ID': session.session_id } : {};
}

function activeEditor() {
  return editors.find((e) => e.session && e.session.state === 'Active') || null;
}

function anySessionHeaders() {
  const editor = activeEditor();
  return sessionHeaders(editor && editor.session);
}

/**
 * Where to cut a long HTML insert so that each piece is whole markup: not inside a tag
 * or a character reference (the server sanitizes every intermediate revision).
 */
function htmlCut(text, at) {
  const head = text.slice(0, cpToUtf16(text, at));
  const tag = head.lastIndexOf('<'), ref = head.lastIndexOf('&');
  let cut = head.length;
  if (tag > head.lastIndexOf('>')) cut = Math.min(cut, tag);
  if (ref > head.lastIndexOf(';')) cut = Math.min(cut, ref);
  return cut > 0 ? utf16ToCp(text, cut) : at;
}

/** A short, human description of an op: +"text"@pos and −n@pos parts. */
function describeOp(op) {
  const parts = toDelta(op).map((p) => (p.insert !== undefined
    ? `+${JSON.stringify(clip(p.insert, 24))}@${p.position}` : `−${p.delete}@${p.position}`));
  return parts.length > 3 ? `${parts.slice(0, 3).join(' ')} …(${parts.length} parts)` : parts.join(' ') || 'no change';
}


/**
 * Chrome makes a list inside the <p> it was asked to turn into one; HTML cannot hold that (the
 * sanitizer would split the paragraph and correct us), so the list takes the paragraph's place.
 */
function unnestLists(root) {
  const selection = document.getSelection();
  const range = selection.rangeCount ? selection.getRangeAt(0) : null;
  const kept = range && [range.startContainer, range.startOffset, range.endContainer, range.endOffset];
  let changed = false;
  for (const list of root.querySelectorAll('p > ul, p > ol')) {
    const p = list.parentNode;
    const empty = (n) => n === list || n.localName === 'br' || (n.nodeType === Node.TEXT_NODE && !n.data.trim());
    if ([...p.childNodes].every(empty)) {
      p.replaceWith(list);
      changed = true;
    }
  }
  if (changed && kept) selection.setBaseAndExtent(...kept);  // the caret's own nodes moved with the list
}

// ---------------------------------------------------------------- one editor

class Editor {
  constructor(index, card, userName) {
    this.index = index;
    this.label = `Editor ${index + 1}`;
    this.card = card;
    const q = (selector) => card.querySelector(selector);
    this.els = {
      sideName: q('.side-name'), chip: q('.user-chip'), status: q('.status'), latency: q('.latency'),
      online: q('.online'), sessionForm: q('.session-row'), userName: q('.user-name'),
      activateNow: q('.activate-now'), activate: q('.btn-activate'), invalidate: q('.btn-invalidate'),
      sessionInfo: q('.session-info'), toolbar: q('.toolbar'), linkBox: q('.link-box'), linkUrl: q('.link-url'),
      formatBadge: q('.format-badge'), wrap: q('.editor-wrap'), rich: q('.rich'), plain: q('.plain'),
      carets: q('.carets'), mirror: q('.plain-mirror'), presence: q('.presence'), sync: q('.sync'), log: q('.log'), logCount: q('.log-count'),
      showHeartbeats: q('.show-heartbeats'), tokenField: q('.token-field'), token: q('.user-token'),
      roleBadge: q('.role-badge'), undo: q('.btn-undo'), redo: q('.btn-redo'),
    };
    this.els.sideName.textContent = this.label;
    this.els.userName.value = userName;
    this.card.dataset.side = String(index + 1);

    this.session = null;
    this.docId = null;
    this.format = 'html';
    this.ws = null;
    this.wsGen = 0;
    this.wantOnline = true;
    this.joined = false;
    this.statusKind = 'idle';
    this.reconnectAttempt = 0;
    this.reconnectTimer = null;
    this.heartbeatTimer = null;
    this.heartbeats = new Map();
    this.latency = null;
    this.peers = new Map();
    this.logEntries = 0;
    this.role = 'editor';     // the document_state's role; a viewer's editor is read-only
    this.blocked = false;     // no session to be had yet (rate limited): read-only too
    this.inCommand = false;   // a toolbar command is changing the editor: its input events wait
    this.history = new UndoManager();  // this editor's own steps: undo never touches a collaborator's text

    this.client = new OTClient({
      send: (op, base) => this.sendEdit(op, base),
      canSend: () => this.canSend(),
      split: (op) => splitOp(op, MAX_PARTS, MAX_INSERT, this.format === 'html' ? htmlCut : undefined),
      changed: (before, op, full) => {
        if (full) this.history.clear();            // a new document: nothing of ours to undo
        else if (op) this.history.transform(op);   // someone else's edit: my undo steps move over it
        if (op) this.shiftCursors(op);
        this.render(before, op, full);
      },
      notice: (text) => this.log('error', 'client', text),
    });
    this.gapTimer = null;
    this.syncing = false;     // catching up after a reconnect or a conflict: nothing is sent
    this.syncToken = null;
    this.shown = '';          // the editor's innerHTML as the browser serializes it
    this.hold = false;        // a raw insert is on its way to the sanitizer: do not render it
    this.holdWaiters = [];
    this.cursorTimer = null;
    this.lastCursorSent = null;

    this.closed = null;
    this.bind();
    this.renderSession();
    this.renderStatus('idle', 'idle');
    this.renderSync();
  }

  /** The local document (the OT client's). */
  get content() {
    return this.client.content;
  }

  get revision() {
    return this.client.revision;
  }

  // -------------------------------------------------------------- wiring the card

  bind() {
    const { els } = this;
    els.sessionForm.addEventListener('submit', (event) => {
      event.preventDefault();
      this.createSession(els.userName.value.trim(), els.activateNow.checked, els.token.value.trim());
    });
    els.activate.addEventListener('click', () => this.activate());
    els.invalidate.addEventListener('click', () => this.invalidate());
    els.online.addEventListener('change', () => (els.online.checked ? this.goOnline() : this.goOffline()));
    els.showHeartbeats.addEventListener('change', () => {
      els.log.classList.toggle('show-hb', els.showHeartbeats.checked);
    });

    els.rich.addEventListener('input', (event) => { if (!event.isComposing) this.onRichInput(); });
    els.rich.addEventListener('compositionend', () => this.onRichInput());
    // Pasted or dropped HTML brings styles and tags the server would strip (and log): take its text.
    els.rich.addEventListener('paste', (event) => {
      event.preventDefault();
      const text = event.clipboardData ? event.clipboardData.getData('text/plain') : '';
      if (text) document.execCommand('insertText', false, text);
    });
    els.rich.addEventListener('drop', (event) => event.preventDefault());
    els.rich.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) this.paragraphOnEnter();
    });
    els.rich.addEventListener('scroll', () => this.drawCarets());
    els.plain.addEventListener('scroll', () => this.drawCarets());
    els.plain.addEventListener('input', (event) => { if (!event.isComposing) this.onPlainInput(); });
    els.plain.addEventListener('compositionend', () => this.onPlainInput());
    for (const target of [els.rich, els.plain]) {
      for (const type of ['keyup', 'mouseup', 'focus']) target.addEventListener(type, () => this.scheduleCursor());
      // The page has one browser undo stack for both editors: ours replaces it.
      target.addEventListener('keydown', (event) => {
        if (!(event.ctrlKey || event.metaKey) || event.altKey) return;
        const key = event.key.toLowerCase();
        if (key !== 'z' && key !== 'y') return;
        event.preventDefault();
        this.undoStep(key === 'y' || event.shiftKey);
      });
      target.addEventListener('beforeinput', (event) => {
        if (event.inputType !== 'historyUndo' && event.inputType !== 'historyRedo') return;
        event.preventDefault();
        this.undoStep(event.inputType === 'historyRedo');
      });
    }
    els.undo.addEventListener('click', () => this.undoStep(false));
    els.redo.addEventListener('click', () => this.undoStep(true));
    document.addEventListener('selectionchange', () => {
      if (document.activeElement === els.rich || document.activeElement === els.plain) this.scheduleCursor();
    });

    for (const button of els.toolbar.querySelectorAll('button')) {
      button.addEventListener('mousedown', (event) => event.preventDefault()); // keep the selection
    }
    for (const button of els.toolbar.querySelectorAll('[data-cmd]')) {
      button.addEventListener('click', () => this.command(button.dataset.cmd, button.dataset.value || null));
    }
    els.toolbar.querySelector('.btn-link').addEventListener('click', () => this.openLinkBox());
    els.toolbar.querySelector('.btn-link-ok').addEventListener('click', () => this.applyLink());
    els.linkUrl.addEventListener('keydown', (event) => {
      if (event.key === 'Enter') { event.preventDefault(); this.applyLink(); }
      if (event.key === 'Escape') { els.linkBox.hidden = true; els.rich.focus(); }
    });
    window.addEventListener('resize', () => this.drawCarets());
  }

  command(name, value = null) {
    if (this.format !== 'html' || this.hold || this.readOnly) return;
    const { rich } = this.els;
    rich.focus();
    const before = selectionUnits(rich);
    this.inCommand = true;  // one edit for the command and the clean-up after it
    try {
      document.execCommand(name, false, value);
      unnestLists(rich);
    } finally {
      this.inCommand = false;
    }
    // Chrome puts a collapsed caret at the start of a line it turns into a list: put it back.
    const after = selectionUnits(rich);
    if (before && before[0] === before[1] && (!after || after[0] !== before[0])) {
      selectUnits(rich, before[0], before[0]);
    }
    this.onRichInput();
  }

  /**
   * Enter splits paragraphs: a line still bare in the editor (the first one typed) becomes a <p>
   * first, so the browser's split (a <p> too, see main) makes two paragraphs, never a text and a <div>.
   */
  paragraphOnEnter() {
    if (this.format !== 'html' || this.hold || this.readOnly) return;
    const { rich } = this.els;
    const selection = document.getSelection();
    if (!selection.rangeCount || !rich.contains(selection.anchorNode)) return;
    for (let node = selection.anchorNode; node && node !== rich; node = node.parentNode) {
      if (node.nodeType === Node.ELEMENT_NODE && BLOCKS.test(node.localName)) return;
    }
    document.execCommand('formatBlock', false, 'p');
  }

  openLinkBox() {
    if (this.format !== 'html') return;
    const selection = document.getSelection();
    this.savedRange = selection.rangeCount && this.els.rich.contains(selection.anchorNode)
      ? selection.getRangeAt(0).cloneRange() : null;
    this.els.linkBox.hidden = false;
    this.els.linkUrl.classList.remove('invalid');
    this.els.linkUrl.focus();
  }

  applyLink() {
    const url = this.els.linkUrl.value.trim();
    if (!/^(https?:\/\/|mailto:)\S+$/i.test(url)) {
      this.els.linkUrl.classList.add('invalid');
      this.els.linkUrl.title = 'http://, https:// or mailto: only (the server drops anything else)';
      return;
    }
    this.els.linkBox.hidden = true;
    this.els.rich.focus();
    if (this.savedRange) {
      const selection = document.getSelection();
      selection.removeAllRanges();
      selection.addRange(this.savedRange);
    }
    if (document.getSelection().isCollapsed) document.execCommand('insertText', false, url);
    else document.execCommand('createLink', false, url);
  }

  // -------------------------------------------------------------- status, log

  renderStatus(kind, text) {
    this.statusKind = kind;
    this.statusText = text;
    this.els.status.dataset.status = kind;
    this.els.status.textContent = text;
    if (PAD) renderPadStatus(kind);
  }

  renderSync() {
    const { client } = this;
    const parts = [`rev ${client.revision < 0 ? '–' : client.revision}`];
    if (this.syncing) parts.push('catching up…');
    if (client.outstanding) parts.push('1 edit in flight');
    if (client.buffer) parts.push(this.isLive() ? 'more queued' : 'changes queued until online');
    if (!client.pending && client.revision >= 0) parts.push(this.isLive() ? 'in sync' : 'not connected');
    if (client.corrections) parts.push(`${client.corrections} corrected by the server`);
    this.els.sync.textContent = parts.join(' · ');
    this.renderUndo();
    this.card.classList.toggle('pending', client.pending);
  }

  renderUndo() {
    if (!this.els.undo) return;
    this.els.undo.disabled = this.readOnly || !this.history.canUndo;
    this.els.redo.disabled = this.readOnly || !this.history.canRedo;
  }

  log(direction, type, text, extraClass = '') {
    const { log } = this.els;
    const item = h('li', { class: `dir-${direction} ${extraClass}`.trim() },
      h('time', {}, clock()), h('span', { class: 'arrow' }, { out: '→', in: '←', info: '•', error: '!' }[direction]),
      h('span', { class: 'type' }, type), h('span', { class: 'text' }, text));
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 24;
    log.append(item);
    while (log.childElementCount > LOG_LIMIT) log.firstElementChild.remove();
    if (atBottom) log.scrollTop = log.scrollHeight;
    this.logEntries += 1;
    this.els.logCount.textContent = `(${this.logEntries})`;
  }

  info(text) { this.log('info', 'client', text); }

  // -------------------------------------------------------------- sessions

  /** A session for `userId`, or (under --auth jwt) for the user a token names. */
  async createSession(userId, activate = true, token = '') {
    if (!userId && !token) {
      this.info(demo.auth === 'jwt' ? 'this server needs a JWT from its identity provider for a session'
        : 'a session needs a user name');
      return;
    }
    const body = { client_info: `mcprt demo, ${this.label.toLowerCase()}`, activate };
    if (userId) body.user_id = userId;
    const reply = await api('POST', '/api/sessions', body, token ? { Authorization: `Bearer ${token}` } : {});
    if (!reply.ok) {
      this.info(`could not create a session: ${errorText(reply)}`);
      if (reply.status === 429) {
        this.sessionRefused(reply.retryAfter || 60, () => this.createSession(userId, activate, token));
      }
      return;
    }
    this.setBlocked(false);
    this.session = reply.json;
    this.els.userName.value = this.session.user_id;
    this.info(`new ${this.session.state.toLowerCase()} session for ${this.session.user_id}`);
    this.renderSession();
    if (this.session.state === 'Active') this.connect();
    else this.disconnect('no-session', 'waiting for activation');
  }

  /** Too many sessions from this address: nothing to edit with until the server says to try again. */
  sessionRefused(seconds, retry) {
    this.setBlocked(true);
    this.renderStatus('no-session', 'no session: rate limited');
    retryLater(this, seconds, retry);
  }

  setBlocked(blocked) {
    this.blocked = blocked;
    this.applyRole();
  }

  async activate() {
    if (!this.session) return;
    const reply = await api('POST', `/api/sessions/${encodeURIComponent(this.session.session_id)}/activate`);
    if (!reply.ok) {
      this.info(`activate failed: ${errorText(reply)}`);
      return this.refreshSession();
    }
    this.session = reply.json;
    this.renderSession();
    this.connect();
  }

  async invalidate() {
    if (!this.session) return;
    const reply = await api('DELETE', `/api/sessions/${encodeURIComponent(this.session.session_id)}`);
    if (!reply.ok) this.info(`invalidate failed: ${errorText(reply)}`);
    else this.session = reply.json;
    this.renderSession();
  }

  async refreshSession() {
    if (!this.session) return;
    const reply = await api('GET', `/api/sessions/${encodeURIComponent(this.session.session_id)}`);
    if (reply.ok) this.session = reply.json;
    this.renderSession();
  }

  renderSession() {
    const { els, session } = this;
    const name = session ? session.user_id : els.userName.value;
    els.chip.textContent = name;
    els.chip.style.setProperty('--user', colorFor(name));
    this.card.style.setProperty('--user', colorFor(name));
    if (!session) {
      els.sessionInfo.textContent = 'No session yet.';
      return;
    }
    const bits = [session.state];
    if (session.state === 'Active') bits.push(`expires ${fromNow(session.expires_at)} (${clock(new Date(session.expires_at))})`);
    if (session.state === 'Pending') bits.push('activate it to connect');
    if (session.end_reason) bits.push(`reason: ${session.end_reason}`);
    if (session.state === 'Expired' || session.state === 'Invalidated') bits.push('create a new session to edit again');
    bits.push(`peer ${clip(session.peer_id, 9)}`, `session ${session.session_id.slice(0, 8)}…`);
    els.sessionInfo.textContent = bits.join(' · ');
    this.renderPresence();
    els.sessionInfo.dataset.state = session.state;
    els.activate.disabled = session.state !== 'Pending';
    els.invalidate.disabled = !['Pending', 'Active'].includes(session.state);
  }

  // -------------------------------------------------------------- the socket

  isLive() {
    return Boolean(this.ws && this.ws.readyState === WebSocket.OPEN && this.joined);
  }

  canSend() {
    return this.isLive() && !this.syncing;
  }

  socketUrl() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const query = new URLSearchParams({
      session_id: this.session.session_id, document_id: this.docId, client_type: 'web',
    });
    return `${scheme}//${location.host}/ws?${query}`;
  }

  /** Close the current socket on purpose (its events are ignored from now on). */
  dropSocket(reason) {
    this.wsGen += 1;
    this.joined = false;
    this.syncing = false;
    this.syncToken = null;
    clearTimeout(this.reconnectTimer);
    clearInterval(this.heartbeatTimer);
    this.heartbeats.clear();
    this.forgetConnection();
    const ws = this.ws;
    this.ws = null;
    if (ws && ws.readyState !== WebSocket.CLOSED) {
      // Resolved once the server has finished with this socket: it answers our close frame
      // only after everything we sent before it, so a rejoin sees all of it applied.
      this.closed = new Promise((resolve) => {
        ws.addEventListener('close', resolve);
        setTimeout(resolve, 3000);
      });
      if (ws.readyState === WebSocket.CONNECTING) ws.addEventListener('open', () => ws.close(1000, reason));
      else if (ws.readyState === WebSocket.OPEN) ws.close(1000, reason);
    }
  }

  disconnect(kind, text) {
    this.dropSocket(text);
    this.renderStatus(kind, text);
    this.renderSync();
  }

  async connect() {
    this.dropSocket('reconnecting');
    const gen = this.wsGen;
    if (!this.docId) return;
    if (!this.session || this.session.state !== 'Active') {
      this.renderStatus('no-session', this.session ? `session ${this.session.state.toLowerCase()}` : 'no session');
      return;
    }
    if (!this.wantOnline) {
      this.renderStatus('offline', 'offline');
      return;
    }
    if (this.client.outstanding && this.closed) {
      this.renderStatus('connecting', 'connecting');
      await this.closed;
      if (gen !== this.wsGen) return;
    }
    const ws = new WebSocket(this.socketUrl(), [LEAN]);  // acks and broadcasts without the whole document
    this.ws = ws;
    this.renderStatus(this.reconnectAttempt ? 'reconnecting' : 'connecting',
      this.reconnectAttempt ? `reconnecting (attempt ${this.reconnectAttempt})` : 'connecting');
    this.info(`connecting to ${this.docId}`);
    ws.addEventListener('open', () => {
      if (gen !== this.wsGen) return;
      this.renderStatus('connecting', 'joining…');
      this.heartbeatTimer = setInterval(() => this.tick(), HEARTBEAT_MS);
      this.tick();
    });
    ws.addEventListener('message', (event) => {
      if (gen === this.wsGen) this.receive(event.data);
    });
    ws.addEventListener('close', (event) => {
      if (gen === this.wsGen) this.onClose(event);
    });
  }

  onClose(event) {
    const { code } = event;
    const why = CLOSE_REASONS[code] || 'closed';
    this.joined = false;
    this.syncing = false;
    this.syncToken = null;
    this.ws = null;
    clearInterval(this.heartbeatTimer);
    this.heartbeats.clear();
    this.forgetConnection();
    this.log('error', 'close', `${code} ${why}${event.reason ? ` (${event.reason})` : ''}`);
    if (FINAL_CODES.has(code)) {
      this.renderStatus('closed', `closed ${code} · ${why}`);
      this.refreshSession();
    } else {
      this.scheduleReconnect(code, why);
    }
    this.renderSync();
    this.drawCarets();
  }

  /** What we knew only through the socket: who is here, and the latency. */
  forgetConnection() {
    this.peers.clear();
    this.latency = null;
    this.els.latency.textContent = '';
    this.renderPresence();
  }

  scheduleReconnect(code, why) {
    const base = Math.min(15000, 500 * 2 ** this.reconnectAttempt);
    const delay = Math.round(base * (0.8 + 0.4 * Math.random()));
    this.reconnectAttempt += 1;
    this.renderStatus('reconnecting',
      `${code} ${why} · retry in ${(delay / 1000).toFixed(1)} s (attempt ${this.reconnectAttempt})`);
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
  }

  /** Reconnect at once (a fresh join sorts out whatever confused us). */
  restartSocket(reason) {
    this.info(`${reason}; reconnecting`);
    this.connect();
  }

  goOffline() {
    this.wantOnline = false;
    this.els.online.checked = false;
    this.card.querySelector('.switch-label').textContent = 'offline';  // the label says the state
    this.card.classList.add('offline');
    this.disconnect('offline', 'offline');
    this.info('offline: edits are kept and sent when you go online');
  }

  goOnline() {
    this.wantOnline = true;
    this.els.online.checked = true;
    this.card.querySelector('.switch-label').textContent = 'online';
    this.card.classList.remove('offline');
    this.reconnectAttempt = 0;
    this.connect();
  }

  send(type, payload, id = newId(`e${this.index + 1}`)) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return null;
    const message = { id, type, payload, timestamp: new Date().toISOString() };
    this.ws.send(JSON.stringify(message));
    this.log('out', type, summarize(type, payload, this), type === 'heartbeat' ? 'hb' : '');
    return id;
  }

  tick() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    const now = performance.now();
    // Timers in background tabs may run once a minute, so judge by unanswered heartbeats only.
    if ([...this.heartbeats.values()].some((sent) => now - sent > HEARTBEAT_TIMEOUT_MS)) {
      this.restartSocket('no reply to a heartbeat for 15 s');
      return;
    }
    const { outstanding } = this.client;
    if (outstanding && this.canSend() && now - outstanding.sentAt > ACK_TIMEOUT_MS) {
      this.restartSocket('an edit was not acknowledged within 10 s');
      return;
    }
    const id = this.send('heartbeat', {});
    if (id) this.heartbeats.set(id, now);
  }

  receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      this.log('error', 'invalid', clip(data, 80));
      return;
    }
    const { type, payload = {} } = message;
    this.log(type === 'error' ? 'error' : 'in', type, summarize(type, payload, this, message),
      type === 'heartbeat_ack' ? 'hb' : '');
    const handler = this.handlers[type];
    if (handler) handler.call(this, payload, message);
  }

  // -------------------------------------------------------------- message handlers

  get handlers() {
    return {
      document_state: this.onDocumentState,
      realtime_edit: (p) => this.serverEvent(p.revision, {
        kind: 'remote', op: TextOperation.fromJSON(p.op), content: p.content, length: p.length, user: p.user_id,
      }),
      edit_ack: (p, m) => this.serverEvent(p.revision, {
        kind: 'ack', id: m.id, op: TextOperation.fromJSON(p.op), length: p.length,
        correction: p.correction ? TextOperation.fromJSON(p.correction) : null, content: p.content,
      }),
      sync_response: (p) => {
        for (const entry of p.ops) {  // our own edit among them is the ack that never came
          this.serverEvent(entry.revision, { kind: 'history', op: TextOperation.fromJSON(entry.op),
                                             id: entry.message_id });
        }
      },
      permissions: (p) => {
        this.setRole(p.role);
        this.info(`your role on ${p.document_id} is now ${p.role}`);
      },
      heartbeat_ack: (p, m) => {
        const sent = this.heartbeats.get(m.id);
        if (sent === undefined) return;
        this.heartbeats.delete(m.id);
        this.latency = performance.now() - sent;
        this.els.latency.textContent = `${this.latency.toFixed(0)} ms`;
      },
      presence: (p) => {
        const peer = this.peer(p);
        if (p.cursor) this.placeCursor(peer, p.cursor);
        peer.state = p.state;
        this.renderPresence();
      },
      session_connected: (p) => {
        const peer = this.peer(p);
        peer.connections = p.connection_count;
        this.renderPresence();
      },
      session_disconnected: (p) => {
        const peer = this.peers.get(p.peer_id);
        if (peer) {
          peer.connections -= 1;
          if (peer.connections <= 0) this.peers.delete(p.peer_id);
        }
        this.renderPresence();
      },
      error: this.onError,
    };
  }

  peer(p) {
    if (this.session && p.peer_id === this.session.peer_id) return { connections: 0 }; // our own other tabs
    let peer = this.peers.get(p.peer_id);
    if (!peer) {
      peer = { user: p.user_id, connections: 1, cursor: null, end: null };
      this.peers.set(p.peer_id, peer);
    }
    return peer;
  }

  onDocumentState(p) {
    this.joined = true;
    this.reconnectAttempt = 0;
    this.setFormat(p.format);
    this.setRole(p.role || 'editor');
    this.peers.clear();
    const mine = this.session && this.session.peer_id;
    for (const participant of p.participants || []) {
      if (participant.peer_id === mine) continue;
      const peer = { user: participant.user_id, connections: participant.connections, cursor: null, end: null };
      if (participant.cursor) this.placeCursor(peer, participant.cursor, p.content);
      this.peers.set(participant.peer_id, peer);
    }
    this.renderStatus('connected', 'connected');
    const { client } = this;
    if (client.pending && client.revision >= 0 && p.revision >= client.revision) {
      client.queue.clear();
      this.reconcile(p.revision, 'rejoined with local changes');
    } else {
      this.dropPending('they were made before the document was loaded, or the server lost revisions');
      client.adopt(p.content, p.revision);
    }
    this.renderPresence();
    this.afterServer();
  }

  onError(p, message) {
    const { client } = this;
    if (!client.outstanding || message.id !== client.outstanding.id) return;
    if (p.code === 'CONFLICT') {
      // The edit was refused unapplied: catch up, then send it again.
      const target = Math.max(client.announced, (p.details && p.details.revision) || 0);
      this.reconcile(target, 'the edit was based on a revision the server no longer keeps');
    } else {
      this.dropPending(`the server refused the edit (${p.code})`);
      this.send('sync_request', { since_revision: client.revision });
    }
  }

  // -------------------------------------------------------------- edits to and from the server

  /** Send one edit (the OT client's hook); returns its message id. */
  sendEdit(op, base) {
    const delta = toDelta(op);
    const kinds = new Set(delta.map((part) => (part.insert !== undefined ? 'insert' : 'delete')));
    return this.send('realtime_edit', {
      base_revision: base, change_delta: delta, operation: kinds.size > 1 ? 'replace' : [...kinds][0],
    });
  }

  /** A local edit, not yet in the OT client; typing (not an undo or a redo) is an undo step. */
  localEdit(op, typed = true) {
    if (op.isNoop()) return;
    if (typed) this.history.record(op, this.content);
    this.shiftCursors(op);
    this.client.edit(op);
    this.renderSync();
  }

  /** Undo (or redo) this editor's last step, wherever collaborators' edits moved it. */
  undoStep(redo = false) {
    if (this.readOnly || this.hold) return;
    const op = redo ? this.history.redo(this.content) : this.history.undo(this.content);
    if (!op) return;
    const before = this.content;
    this.localEdit(op, false);
    this.render(before, op, false);
  }

  /** One server revision, in whatever order it came. */
  serverEvent(revision, event) {
    try {
      this.client.receive(revision, event);
    } catch (err) {
      this.log('error', 'client', `could not apply revision ${revision}: ${err.message}`);
      this.dropPending('the local state could not take a server edit');
      this.restartSocket('resynchronizing');
      return;
    }
    this.afterServer();
  }

  afterServer() {
    const { client } = this;
    clearTimeout(this.gapTimer);
    this.gapTimer = client.queue.size ? setTimeout(() => this.fillGap(), GAP_WAIT_MS) : null;
    if (this.hold && !client.pending) this.releaseHold();
    client.flush();
    if (!client.pending) this.scheduleCursor(); // cursors wait for a quiet moment
    this.renderSync();
  }

  fillGap() {
    const { client } = this;
    if (!client.queue.size || client.queue.has(client.revision + 1) || !this.isLive() || this.syncing) return;
    if (!client.pending) this.send('sync_request', { since_revision: client.revision });
    else this.reconcile(client.announced, 'revisions arrived out of order');
  }

  dropPending(reason) {
    if (!this.client.dropPending()) return;
    this.log('error', 'client', `local changes dropped: ${reason}`);
    if (this.hold) this.releaseHold();
  }

  /** Catch up through the stored history after a reconnect (or a conflict), then resend. */
  async reconcile(target, why) {
    const { client } = this;
    const token = {};
    this.syncToken = token;
    this.syncing = true;
    this.renderStatus('syncing', 'catching up');
    this.renderSync();
    this.info(`catching up from rev ${client.revision} to ${target}: ${why}`);
    const deadline = performance.now() + 8000;
    try {
      while (client.revision < target) {
        const path = `/api/documents/${encodeURIComponent(this.docId)}/history?since=${client.revision}&limit=1000`;
        const reply = await api('GET', path, undefined, sessionHeaders(this.session));
        if (token !== this.syncToken) return;
        if (!reply.ok) throw new Error(errorText(reply));
        for (const entry of reply.json.ops) {
          client.receive(entry.revision, { kind: 'history', op: TextOperation.fromJSON(entry.op), id: entry.message_id });
        }
        if (client.revision >= target) break;
        // The socket announced revisions whose writes may not be committed yet.
        if (performance.now() > deadline) throw new Error(`the history stops before revision ${target}`);
        await sleep(reply.json.ops.length ? 0 : 100);
        if (token !== this.syncToken) return;
      }
    } catch (err) {
      if (token !== this.syncToken) return;
      this.syncing = false;
      this.dropPending(`could not catch up (${err.message})`);
      this.restartSocket('starting over from the server\'s state');
      return;
    }
    this.syncToken = null;
    this.syncing = false;
    if (this.isLive()) this.renderStatus('connected', 'connected');
    // Not in the history, so the server never applied it; it is based on the latest revision now.
    if (client.requeue()) this.info('resending the edit that was in flight');
    this.afterServer();
  }

  // -------------------------------------------------------------- local input

  onRichInput() {
    if (this.hold || this.inCommand || this.format !== 'html') return;
    if (this.readOnly) {  // never sent: a viewer's edit would only be refused
      this.render(this.content, null, true);
      return;
    }
    const { rich } = this.els;
    // Browsers add style attributes while editing; the server would strip them and log it.
    for (const node of rich.querySelectorAll('[style]')) node.removeAttribute('style');
    const now = rich.innerHTML;
    if (now === this.shown) return;
    // Where the caret is says which side of an equal neighbour a keystroke went (see diff).
    const selection = selectionUnits(rich);
    const caret = selection ? utf16ToCp(now, htmlIndexOfText(now, selection[1])) : null;
    const edit = diff(this.shown, now, caret);
    let op = edit;
    if (this.shown !== this.content) {
      // The browser writes some things its own way (e.g. U+00A0 as &nbsp;): send the edit
      // alone, in the document's terms, unless it touches what the browser rewrote.
      const rewrite = diff(this.content, this.shown);
      const a = spanOf(edit), b = spanOf(rewrite.invert(this.content));
      op = a && b && a[0] <= b[1] && b[0] <= a[1]
        ? diff(this.content, now, caret)
        : TextOperation.transform(edit, rewrite.invert(this.content))[0];
    }
    this.shown = now;
    this.localEdit(op);
    this.drawCarets();
  }

  onPlainInput() {
    if (this.format !== 'text') return;
    if (this.readOnly) {
      this.render(this.content, null);
      return;
    }
    const { plain } = this.els;
    const now = plain.value;
    if (now !== this.content) this.localEdit(diff(this.content, now, utf16ToCp(now, plain.selectionEnd)));
  }

  // -------------------------------------------------------------- rendering

  setFormat(format) {
    this.format = format === 'text' ? 'text' : 'html';
    const rich = this.format === 'html';
    this.els.rich.hidden = !rich;
    this.els.plain.hidden = rich;
    this.els.formatBadge.textContent = rich ? 'rich text' : 'plain text';
    this.applyRole();
  }

  /** The role the server gave this socket: a viewer reads and follows, and cannot type. */
  setRole(role) {
    this.role = role;
    this.applyRole();
  }

  get readOnly() {
    return this.role === 'viewer' || this.blocked;
  }

  applyRole() {
    const { els } = this;
    const rich = this.format === 'html';
    els.rich.contentEditable = this.hold || this.readOnly ? 'false' : 'true';
    els.plain.readOnly = this.readOnly;
    for (const button of els.toolbar.querySelectorAll('button[data-cmd], .btn-link')) {
      button.disabled = !rich || this.readOnly;
    }
    this.renderUndo();
    if (!rich || this.readOnly) els.linkBox.hidden = true;
    els.roleBadge.hidden = this.role === 'editor';
    els.roleBadge.textContent = this.readOnly ? 'view only' : this.role;
    els.roleBadge.dataset.role = this.role;
    this.card.classList.toggle('read-only', this.readOnly);
  }

  /** Show `content`, moving the caret over `op` (the change from `before`), never stealing focus. */
  render(before, op, full = false) {
    if (this.format === 'text') this.renderPlain(before, op);
    else if (!this.hold) this.renderRich(before, op, full);
    this.drawCarets();
    this.renderSync();
  }

  renderPlain(before, op) {
    const { plain } = this.els;
    const focused = document.activeElement === plain;
    const value = plain.value;
    const start = utf16ToCp(value, plain.selectionStart), end = utf16ToCp(value, plain.selectionEnd);
    plain.value = this.content;
    if (focused && op && op.baseLength === cpLength(value)) {
      const s = transformCursor(Math.min(start, op.baseLength), op, true);
      const e = transformCursor(Math.min(end, op.baseLength), op, true);
      plain.setSelectionRange(cpToUtf16(this.content, s), cpToUtf16(this.content, e));
    }
  }

  renderRich(before, op, full) {
    const { rich } = this.els;
    if (!full && rich.innerHTML === this.content) {
      this.shown = this.content;
      return;
    }
    const selection = selectionUnits(rich);
    rich.innerHTML = this.content; // sanitized by the server, or typed here
    this.shown = rich.innerHTML;
    if (!selection || !op || op.baseLength !== cpLength(before)) return;
    const move = (units) => {
      const at = utf16ToCp(before, htmlIndexOfText(before, units));
      const moved = transformCursor(Math.min(at, op.baseLength), op, true);
      return textUnitsBefore(this.content, cpToUtf16(this.content, moved));
    };
    selectUnits(rich, move(selection[0]), move(selection[1]));
  }

  releaseHold() {
    this.hold = false;
    this.applyRole();
    this.render(this.content, null, true);
    const waiters = this.holdWaiters;
    this.holdWaiters = [];
    for (const resolve of waiters) resolve();
  }

  /**
   * Insert raw HTML at the end through the normal edit path, without ever rendering it:
   * the view waits for the server's sanitized version (the ack's correction).
   */
  insertUnrendered(html) {
    if (this.format !== 'html' || !this.canSend()) return Promise.reject(new Error('editor 1 is not connected'));
    this.hold = true;
    this.els.rich.contentEditable = 'false';
    this.client.lastCorrection = null;
    const done = new Promise((resolve) => this.holdWaiters.push(resolve));
    this.localEdit(new TextOperation().retain(cpLength(this.content)).insert(html));
    return done;
  }

  // -------------------------------------------------------------- cursors and presence

  shiftCursors(op) {
    for (const peer of this.peers.values()) {
      if (peer.cursor !== null && peer.cursor <= op.baseLength) peer.cursor = transformCursor(peer.cursor, op);
      if (peer.end !== null && peer.end <= op.baseLength) peer.end = transformCursor(peer.end, op);
    }
  }

  /** The caret as a document position (code points of the content). */
  caretPosition() {
    if (this.format === 'text') {
      const { plain } = this.els;
      if (document.activeElement !== plain) return null;
      return [utf16ToCp(plain.value, plain.selectionStart), utf16ToCp(plain.value, plain.selectionEnd)];
    }
    const selection = selectionUnits(this.els.rich);
    if (!selection) return null;
    const at = (units) => utf16ToCp(this.content, htmlIndexOfText(this.content, units));
    return [at(selection[0]), at(selection[1])];
  }

  scheduleCursor() {
    if (this.cursorTimer) return;
    this.cursorTimer = setTimeout(() => {
      this.cursorTimer = null;
      this.sendCursor();
    }, CURSOR_THROTTLE_MS);
  }

  sendCursor() {
    // Only when in sync: then positions are in the server's terms at our revision.
    if (!this.canSend() || this.client.pending || this.hold) return;
    const caret = this.caretPosition();
    if (!caret) return;
    const length = cpLength(this.content);
    const [position, end] = caret.map((n) => Math.min(n, length));
    const key = `${this.revision}:${position}:${end}`;
    if (key === this.lastCursorSent) return;
    this.lastCursorSent = key;
    this.send('cursor_update', end !== position ? { position, selection_end: end } : { position });
  }

  renderPresence() {
    const { presence } = this.els;
    presence.replaceChildren();
    const you = this.session ? this.session.user_id : '';
    presence.append(h('span', { class: 'muted' }, 'Here: '),
      h('span', { class: 'who me' }, `${you} (you)`));
    for (const peer of this.peers.values()) {
      // A name in its colour, as on the caret; where they are is shown in the text itself.
      const selecting = peer.end !== null && peer.end !== peer.cursor;
      const chip = h('span', { class: 'who', title: selecting ? `${peer.user} has text selected` : peer.user },
        peer.user);
      chip.style.setProperty('--user', colorFor(peer.user));
      presence.append(' ', chip);
    }
    this.drawCarets();
    if (PAD) renderPadPeople(this);
  }

  /** A peer's cursor from a presence entry, within `content` (ours unless given). */
  placeCursor(peer, cursor, content = this.content) {
    const length = cpLength(content);
    peer.cursor = Math.min(cursor.position, length);
    peer.end = cursor.selection_end === null || cursor.selection_end === undefined
      ? null : Math.min(cursor.selection_end, length);
  }

  /** The element whose text nodes show the document, and the UTF-16 offset there of a document position. */
  textSurface() {
    if (this.format === 'html') {
      return [this.els.rich, (position) => textUnitsBefore(this.content, cpToUtf16(this.content, position))];
    }
    // A textarea has no text nodes to measure: a hidden copy with the same box and font lays the text out.
    const { plain, mirror } = this.els;
    mirror.textContent = `${this.content}\u200b`;  // a last empty line still has a place
    mirror.style.width = `${plain.clientWidth + 2 * plain.clientLeft}px`;
    return [mirror, (position) => cpToUtf16(this.content, position)];
  }

  /** Other people's carets and selections, in their colours, over whichever editor shows the document. */
  drawCarets() {
    const { carets, wrap, rich, plain } = this.els;
    carets.replaceChildren();
    if (this.hold || !this.joined) return;
    const [surface, unitsOf] = this.textSurface();
    const field = this.format === 'html' ? rich : plain;
    const box = field.getBoundingClientRect();
    const origin = wrap.getBoundingClientRect();
    const scroll = field === plain ? plain.scrollTop : 0;  // the copy does not scroll with the textarea
    const place = (el, rect, width) => {
      const top = rect.top - scroll;
      if (top < box.top - 2 || top > box.bottom - 8) return false;  // scrolled out of view
      el.style.left = `${rect.left - origin.left}px`;
      el.style.top = `${top - origin.top}px`;
      el.style.height = `${rect.height || 18}px`;
      if (width !== undefined) el.style.width = `${width}px`;
      carets.append(el);
      return true;
    };
    const length = cpLength(this.content);
    for (const peer of this.peers.values()) {
      if (peer.cursor === null) continue;
      const colour = colorFor(peer.user);
      const at = Math.min(peer.cursor, length), end = peer.end === null ? at : Math.min(peer.end, length);
      if (end !== at) {
        for (const rect of this.rangeAt(surface, unitsOf(Math.min(at, end)), unitsOf(Math.max(at, end))).getClientRects()) {
          const mark = h('span', { class: 'remote-selection' });
          mark.style.setProperty('--user', colour);
          if (rect.width) place(mark, rect, rect.width);
        }
      }
      const caret = h('span', { class: 'caret' }, h('span', { class: 'caret-label' }, peer.user));
      caret.style.setProperty('--user', colour);
      place(caret, this.caretRect(surface, unitsOf(end)));
    }
  }

  /** A Range over text units [start, end) of root. */
  rangeAt(root, start, end) {
    const range = document.createRange();
    range.setStart(...domPoint(root, start));
    range.setEnd(...domPoint(root, end));
    return range;
  }

  /** Where a caret after `units` text units of root stands (the start of root when it is empty). */
  caretRect(root, units) {
    const range = this.rangeAt(root, units, units);
    const rect = range.getClientRects()[0] || range.getBoundingClientRect();
    if (rect && (rect.height || root.textContent)) return rect;
    const box = root.getBoundingClientRect(), style = getComputedStyle(root);
    return { left: box.left + parseFloat(style.paddingLeft), top: box.top + parseFloat(style.paddingTop), height: 18 };
  }

  // -------------------------------------------------------------- documents

  openDocument(docId) {
    if (this.client.pending) this.info(`leaving ${this.docId} with unsent changes; they are dropped`);
    this.dropSocket('switching documents');
    this.docId = docId;
    this.client.reset('', -1);
    this.history.clear();
    this.client.corrections = 0;
    this.peers.clear();
    this.shown = '';
    this.els.rich.replaceChildren();
    this.els.plain.value = '';
    this.renderPresence();
    this.connect();
  }

  /** What tests and the console can read. */
  get state() {
    return {
      index: this.index, user: this.session && this.session.user_id, session: this.session && this.session.state,
      document: this.docId, format: this.format, status: this.statusKind, statusText: this.statusText,
      online: this.wantOnline, joined: this.joined, revision: this.revision, content: this.content,
      synchronized: this.isLive() && !this.syncing && this.client.synchronized,
      pending: this.client.pending, syncing: this.syncing, latency: this.latency,
      text: this.format === 'text' ? this.els.plain.value : this.els.rich.textContent,
      peers: [...this.peers.values()].map((p) => ({ user: p.user, cursor: p.cursor, end: p.end })),
      corrections: this.client.corrections, role: this.role,
      canUndo: this.history.canUndo, canRedo: this.history.canRedo,
    };
  }
}

/** One line for the message log. */
function summarize(type, p, editor, message = {}) {
  switch (type) {
    case 'realtime_edit':
      if (p.op) return `${p.user_id} · rev ${p.revision} · ${describeOp(TextOperation.fromJSON(p.op))}`;
      return `on rev ${p.base_revision} · ${p.change_delta.map((d) => (d.insert !== undefined
        ? `+${JSON.stringify(clip(d.insert, 24))}@${d.position}` : `−${d.delete}@${d.position}`)).join(' ')}`;
    case 'edit_ack':
      return `rev ${p.revision}${p.correction ? ' · corrected by the sanitizer' : ''}`;
    case 'document_state':
      return `${p.document_id} · ${p.format} · rev ${p.revision} · ${cpLength(p.content)} chars · ${
        (p.participants || []).length} here`;
    case 'sync_request':
      return `since rev ${p.since_revision}`;
    case 'sync_response':
      return `${p.ops.length} ops · up to rev ${p.revision}`;
    case 'cursor_update':
      return `at ${p.position}${p.selection_end !== undefined ? `–${p.selection_end}` : ''}`;
    case 'presence':
      return `${p.user_id} ${p.state}${p.cursor ? ` at ${p.cursor.position}` : ''}`;
    case 'session_connected':
      return `${p.user_id} joined (${p.connection_count} connection${p.connection_count === 1 ? '' : 's'})`;
    case 'session_disconnected':
      return `${p.user_id} left (${p.reason})`;
    case 'heartbeat':
      return '';
    case 'heartbeat_ack': {
      const sent = editor.heartbeats.get(message.id);
      return sent === undefined ? '' : `${(performance.now() - sent).toFixed(0)} ms`;
    }
    case 'error':
      return `${p.code}: ${p.message}`;
    default:
      return clip(JSON.stringify(p), 80);
  }
}

// ---------------------------------------------------------------- the page

const params = new URLSearchParams(location.search);
// /p/<document>: the pad, one editor for people; / is the developer view.
const PAD = location.pathname.startsWith('/p/') ? decodeURIComponent(location.pathname.slice(3)) : null;
const editors = [];
const demo = {
  editors,
  auth: 'open',  // the server's --auth, from /health
  api,
  get ready() {
    return editors.length === (PAD ? 1 : 2) && editors.every((e) => e.joined && e.revision >= 0);
  },
  get states() {
    return editors.map((e) => e.state);
  },
  openDocument,
  history: null,
};
window.mcprtDemo = demo;

async function openDocument(docId, format) {
  const note = document.getElementById('doc-note');
  if (!DOCUMENT_ID.test(docId)) {
    note.textContent = 'A document id is 1–128 letters, digits, dots, dashes or underscores.';
    return false;
  }
  if (format === 'text') {
    const reply = await api('POST', '/api/documents', { document_id: docId, format: 'text' }, anySessionHeaders());
    if (reply.status === 201) note.textContent = `Created plain-text document ${docId}.`;
    else if (reply.status === 409) note.textContent = `${docId} already exists; it keeps the format it was created with.`;
    else {
      note.textContent = `Could not create ${docId}: ${errorText(reply)}`;
      return false;
    }
  } else {
    note.textContent = '';
  }
  document.getElementById('doc-id').value = docId;
  document.querySelector('#api-panel [data-api="document"]').document_id.value = docId;  // asks about what is open
  const query = new URLSearchParams(location.search);
  query.set('doc', docId);
  if (!PAD) history.replaceState(null, '', `${location.pathname}?${query}`);  // a pad's link stays as shared
  for (const editor of editors) editor.openDocument(docId);
  if (demo.history.isOpen) demo.history.load();
  return true;
}

/** The history view of the open document, asked for with the first active editor's session. */
function setUpHistory() {
  demo.history = new HistoryPanel(document.getElementById('history-panel'), {
    documentId: () => (editors[0] && editors[0].docId) || document.getElementById('doc-id').value,
    headers: anySessionHeaders,
    role: () => (activeEditor() ? activeEditor().role : null),
  });
  for (const button of document.querySelectorAll('.history-open')) {
    button.addEventListener('click', () => (demo.history.isOpen ? demo.history.close() : demo.history.open()));
  }
}

function setUpHealth() {
  const box = document.getElementById('health');
  const text = document.getElementById('health-text');
  const check = async () => {
    const reply = await api('GET', '/health');
    const healthy = reply.ok && reply.json && reply.json.status === 'healthy';
    box.dataset.state = healthy ? 'ok' : 'bad';
    text.textContent = healthy ? `healthy · v${reply.json.version}` : `unhealthy (${reply.status || 'no reply'})`;
    return reply;
  };
  setInterval(check, 30000);
  return check();
}

function setUpApiPanel() {
  const panel = document.getElementById('api-panel');
  const status = panel.querySelector('.api-status');
  const body = panel.querySelector('.api-body');
  const show = (method, path, reply) => {
    status.replaceChildren(
      h('span', { class: `code ${reply.ok ? 'ok' : 'bad'}` }, reply.status || 'network error'),
      ` ${reply.statusText} · ${method} ${path} · ${reply.ms.toFixed(0)} ms`);
    body.textContent = reply.json === null ? '' : JSON.stringify(reply.json, null, 2);
  };
  const run = async (method, path, payload, headers) => show(method, path, await api(method, path, payload, headers));

  panel.querySelector('[data-api="create-session"]').addEventListener('submit', (event) => {
    event.preventDefault();
    const form = event.target;
    run('POST', '/api/sessions', { user_id: form.user_id.value.trim(), activate: form.activate.checked });
  });
  const sessionForm = panel.querySelector('[data-api="session"]');
  for (const button of sessionForm.querySelectorAll('[data-fill]')) {
    button.addEventListener('click', () => {
      const editor = editors[Number(button.dataset.fill)];
      if (editor.session) sessionForm.session_id.value = editor.session.session_id;
    });
  }
  sessionForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const method = event.submitter ? event.submitter.dataset.method : 'GET';
    const id = encodeURIComponent(sessionForm.session_id.value.trim());
    await run(method, `/api/sessions/${id}${method === 'POST' ? '/activate' : ''}`);
    for (const editor of editors) {
      if (editor.session && encodeURIComponent(editor.session.session_id) === id) editor.refreshSession();
    }
  });
  panel.querySelector('[data-api="document"]').addEventListener('submit', (event) => {
    event.preventDefault();
    const form = event.target;
    const id = encodeURIComponent(form.document_id.value.trim());
    if (event.submitter && event.submitter.dataset.what === 'history') {
      run('GET', `/api/documents/${id}/history?since=${Number(form.since.value) || 0}&limit=${Number(form.limit.value) || 20}`,
        undefined, anySessionHeaders());
    } else {
      run('GET', `/api/documents/${id}`, undefined, anySessionHeaders());
    }
  });
  panel.querySelector('[data-api="health"]').addEventListener('submit', (event) => {
    event.preventDefault();
    run('GET', '/health');
  });
}

function setUpSecurityPanel() {
  const sample = document.getElementById('xss-sample');
  sample.value = XSS_SAMPLE;
  const checks = document.getElementById('xss-checks');
  const stored = document.getElementById('xss-stored');
  document.getElementById('xss-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const editor = editors[0];
    checks.replaceChildren(h('li', { class: 'wait' }, 'Sent; waiting for the server\'s sanitized version…'));
    try {
      await editor.insertUnrendered(sample.value);
    } catch (err) {
      checks.replaceChildren(h('li', { class: 'bad' }, err.message));
      return;
    }
    const roots = editors.map((e) => e.els.rich);
    const all = roots.flatMap((root) => [...root.querySelectorAll('*')]);
    const results = [
      ['the server corrected the edit', editor.client.lastCorrection !== null],
      ['no <script> elements in either editor', !all.some((node) => node.localName === 'script')],
      ['no on* event-handler attributes', !all.some((node) => [...node.attributes].some((a) => a.name.startsWith('on')))],
      ['no javascript: links', !all.some((node) => /^\s*javascript:/i.test(node.getAttribute('href') || ''))],
      ['no <img>, <iframe> or <object>', !all.some((node) => ['img', 'iframe', 'object', 'embed'].includes(node.localName))],
    ];
    checks.replaceChildren(...results.map(([label, ok]) => h('li', { class: ok ? 'ok' : 'bad' }, label)));
    stored.textContent = `The document now ends with:\n${editor.content.slice(-300)}`;
  });

  document.getElementById('events-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const token = document.getElementById('admin-token').value.trim();
    const statusLine = document.getElementById('events-status');
    const tbody = document.querySelector('#events-table tbody');
    if (!token) {
      statusLine.textContent = 'The admin token is the server\'s --admin-token.';
      return;
    }
    const reply = await api('GET', '/api/events?kind=security&limit=20', undefined, { Authorization: `Bearer ${token}` });
    if (!reply.ok) {
      statusLine.textContent = errorText(reply);
      tbody.replaceChildren();
      return;
    }
    const { events } = reply.json;
    statusLine.textContent = `${events.length} security event${events.length === 1 ? '' : 's'}, newest first`;
    tbody.replaceChildren(...events.map((e) => h('tr', { class: `sev-${e.severity}` },
      h('td', { class: 'nowrap' }, clock(new Date(e.time))), h('td', {}, e.type),
      h('td', {}, h('span', { class: 'severity' }, e.severity)), h('td', {}, e.user_id || '–'),
      h('td', {}, e.document_id || '–'),
      h('td', { class: 'details', title: JSON.stringify(e.details) }, clip(JSON.stringify(e.details), 140)))));
  });
}

// ---------------------------------------------------------------- when the server says "later"

// Editors waiting for a session the server refused (429), and when its Retry-After ends.
const retry = { waiting: new Map(), until: 0, timer: null };

/** Say when a refused session can be had, count down to it, and try again then (or at a click). */
function retryLater(editor, seconds, again) {
  retry.waiting.set(editor, again);
  retry.until = Math.max(retry.until, Date.now() + seconds * 1000);
  const banner = document.getElementById('banner');
  if (!banner.querySelector('.retry-now')) {
    const button = h('button', { type: 'button', class: 'retry-now' }, 'Try now');
    button.addEventListener('click', retryNow);
    banner.replaceChildren(h('span', { class: 'retry-text' }), ' ', button);
  }
  banner.hidden = false;
  clearInterval(retry.timer);
  retry.timer = setInterval(renderRetry, 1000);
  renderRetry();
}

function renderRetry() {
  const left = Math.ceil((retry.until - Date.now()) / 1000);
  if (left <= 0) {
    retryNow();
    return;
  }
  document.querySelector('#banner .retry-text').textContent = `Too many new sessions from this address: the server `
    + `asks to wait. Editing starts by itself in ${left} s (at ${clock(new Date(retry.until))}).`;
}

function retryNow() {
  clearInterval(retry.timer);
  const waiting = [...retry.waiting.values()];
  retry.waiting.clear();
  retry.until = 0;
  const banner = document.getElementById('banner');
  banner.hidden = true;
  banner.replaceChildren();
  for (const again of waiting) again();
}

// ---------------------------------------------------------------- the pad

/** Who is here: "N people here" and a circle of initials per person, in their colour. */
function renderPadPeople(editor) {
  const me = editor.session ? editor.session.user_id : null;
  const names = [...new Set([me, ...[...editor.peers.values()].map((p) => p.user)].filter(Boolean))];
  document.getElementById('pad-people').textContent = `${names.length} ${names.length === 1 ? 'person' : 'people'} here`;
  document.getElementById('pad-avatars').replaceChildren(...names.map((name) => {
    const initials = name.split(/[\s._-]+/).filter(Boolean).slice(0, 2).map((w) => [...w][0].toUpperCase()).join('');
    const avatar = h('span', { class: 'avatar', title: name === me ? `${name} (you)` : name }, initials || '?');
    avatar.style.setProperty('--user', colorFor(name));
    return avatar;
  }));
}

/** The socket's state in plain words: a banner while it is away, and the badge that follows it. */
function renderPadStatus(kind) {
  const banner = document.getElementById('banner');
  const words = { reconnecting: 'Connection lost. Reconnecting…', closed: 'Disconnected from the server.',
    offline: 'You are offline; your changes wait until you are back.', connecting: 'Connecting…' }[kind];
  if (!retry.waiting.size) {  // the retry banner says more than "no session"
    banner.hidden = !words || kind === 'connecting';
    banner.textContent = words || '';
  }
  const box = document.getElementById('health');
  box.dataset.state = kind === 'connected' ? 'ok' : 'bad';
  document.getElementById('health-text').textContent = kind === 'connected' ? 'connected' : words || kind;
}

async function padName() {
  const remembered = localStorage.getItem('mcprt.name');
  if (remembered) return remembered;
  const form = document.getElementById('pad-name');
  form.hidden = false;
  form.name.value = `guest-${Math.random().toString(36).slice(2, 6)}`;
  form.name.select();
  const name = await new Promise((resolve) => form.addEventListener('submit', (event) => {
    event.preventDefault();
    resolve(form.name.value.trim());
  }));
  form.hidden = true;
  localStorage.setItem('mcprt.name', name);
  return name;
}

async function pad(section, template) {
  document.body.classList.add('pad');
  document.title = `${PAD} · mcprt`;
  document.getElementById('pad-bar').hidden = false;
  document.getElementById('pad-dev').href = `/?doc=${encodeURIComponent(PAD)}`;
  document.getElementById('pad-share').addEventListener('click', async () => {
    const note = document.getElementById('pad-shared');
    try {
      await navigator.clipboard.writeText(location.href);
      note.textContent = 'link copied';
    } catch {
      note.textContent = location.href;  // no clipboard here: the link to copy by hand
    }
  });
  const name = await padName();
  const card = template.content.firstElementChild.cloneNode(true);
  section.append(card);
  const editor = new Editor(0, card, name);
  editor.els.sideName.textContent = PAD;
  editors.push(editor);
  await editor.createSession(name, true);
  const format = params.get('format') === 'text' ? 'text' : 'html';
  await openDocument(PAD, format);
}

async function main() {
  document.execCommand('defaultParagraphSeparator', false, 'p');  // Enter makes paragraphs, not Chrome's <div>s
  const section = document.querySelector('.editors');
  const template = document.getElementById('editor-template');
  setUpHistory();
  if (PAD) {
    await pad(section, template);
    return;
  }
  const users = (params.get('users') || 'alice,bob').split(',').map((u) => u.trim()).filter(Boolean);
  for (let i = 0; i < 2; i++) {
    const card = template.content.firstElementChild.cloneNode(true);
    section.append(card);
    editors.push(new Editor(i, card, users[i] || `user${i + 1}`));
  }
  const health = await setUpHealth();
  if (health.json && health.json.auth === 'jwt') {  // sessions come from the identity provider's tokens
    demo.auth = 'jwt';
    for (const editor of editors) {
      editor.els.tokenField.hidden = false;
      editor.els.userName.value = '';
      editor.els.userName.placeholder = 'from the token';
    }
  }
  setUpApiPanel();
  setUpSecurityPanel();
  document.getElementById('doc-form').addEventListener('submit', (event) => {
    event.preventDefault();
    openDocument(document.getElementById('doc-id').value.trim(), document.getElementById('doc-format').value);
  });
  setInterval(() => editors.forEach((e) => e.renderSession()), 30000);

  const docId = params.get('doc') || 'default';
  const format = params.get('format') === 'text' ? 'text' : 'html';
  document.getElementById('doc-format').value = format;
  if (demo.auth === 'open') await Promise.all(editors.map((e) => e.createSession(e.els.userName.value.trim(), true)));
  else for (const editor of editors) editor.info('this server runs --auth jwt: paste a JWT and press New session');
  await openDocument(docId, format);
}

main();
