// Text operations over Unicode code points: a port of ot.js's TextOperation.
//
// An operation walks the whole document once: a positive number keeps that many code
// points, a negative number deletes that many, a string inserts itself. Lengths count
// code points, as the server does; JS strings are UTF-16, so every length and slice here
// goes through the string iterator (an emoji is one unit, not two).

/** The number of code points in s. */
export function cpLength(s) {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) i++;
    }
    n++;
  }
  return n;
}

/** The UTF-16 index of code point `cp` in s (s.length past the end). */
export function cpToUtf16(s, cp) {
  let i = 0;
  for (let n = 0; n < cp && i < s.length; n++) {
    const c = s.charCodeAt(i);
    i += c >= 0xd800 && c <= 0xdbff && i + 1 < s.length ? 2 : 1;
  }
  return i;
}

/** The code point index of UTF-16 index `u` in s. */
export function utf16ToCp(s, u) {
  return cpLength(s.slice(0, u));
}

/** s sliced by code point indexes. */
export function cpSlice(s, start, end) {
  const a = cpToUtf16(s, start);
  return end === undefined ? s.slice(a) : s.slice(a, a + cpToUtf16(s.slice(a), end - start));
}

const isRetain = (c) => typeof c === 'number' && c > 0;
const isDelete = (c) => typeof c === 'number' && c < 0;
const isInsert = (c) => typeof c === 'string';

export class TextOperation {
  constructor() {
    this.ops = [];
    this.baseLength = 0;
    this.targetLength = 0;
  }

  retain(n) {
    if (typeof n !== 'number' || n < 0) throw new Error('retain expects a non-negative integer');
    if (n === 0) return this;
    this.baseLength += n;
    this.targetLength += n;
    const last = this.ops.length - 1;
    if (isRetain(this.ops[last])) this.ops[last] += n;
    else this.ops.push(n);
    return this;
  }

  insert(s) {
    if (typeof s !== 'string') throw new Error('insert expects a string');
    if (s === '') return this;
    this.targetLength += cpLength(s);
    const ops = this.ops;
    const last = ops.length - 1;
    if (isInsert(ops[last])) {
      ops[last] += s;
    } else if (isDelete(ops[last])) {
      // Insert-then-delete equals delete-then-insert; the insert always goes first.
      if (isInsert(ops[last - 1])) ops[last - 1] += s;
      else ops.splice(last, 0, s);
    } else {
      ops.push(s);
    }
    return this;
  }

  delete(n) {
    if (typeof n === 'string') n = cpLength(n);
    n = Math.abs(n);
    if (n === 0) return this;
    this.baseLength += n;
    const last = this.ops.length - 1;
    if (isDelete(this.ops[last])) this.ops[last] -= n;
    else this.ops.push(-n);
    return this;
  }

  isNoop() {
    return this.ops.length === 0 || (this.ops.length === 1 && isRetain(this.ops[0]));
  }

  apply(doc) {
    if (cpLength(doc) !== this.baseLength) {
      throw new Error(`operation expects a document of length ${this.baseLength}, got ${cpLength(doc)}`);
    }
    const parts = [];
    let index = 0; // UTF-16 index into doc
    for (const c of this.ops) {
      if (isInsert(c)) {
        parts.push(c);
      } else {
        const end = index + cpToUtf16(doc.slice(index), Math.abs(c));
        if (c > 0) parts.push(doc.slice(index, end));
        index = end;
      }
    }
    return parts.join('');
  }

  /** The operation that undoes this one, given the document this one applies to. */
  invert(doc) {
    const inverse = new TextOperation();
    let index = 0;
    for (const c of this.ops) {
      if (isInsert(c)) {
        inverse.delete(cpLength(c));
      } else {
        const end = index + cpToUtf16(doc.slice(index), Math.abs(c));
        if (c > 0) inverse.retain(c);
        else inverse.insert(doc.slice(index, end));
        index = end;
      }
    }
    return inverse;
  }

  /** One operation with the effect of this one followed by `other`. */
  compose(other) {
    if (this.targetLength !== other.baseLength) {
      throw new Error('compose: the first operation\'s target length must equal the second\'s base length');
    }
    const out = new TextOperation();
    const ops1 = this.ops, ops2 = other.ops;
    let i1 = 0, i2 = 0;
    let op1 = ops1[i1++], op2 = ops2[i2++];
    for (;;) {
      if (op1 === undefined && op2 === undefined) break;
      if (isDelete(op1)) { out.delete(op1); op1 = ops1[i1++]; continue; }
      if (isInsert(op2)) { out.insert(op2); op2 = ops2[i2++]; continue; }
      if (op1 === undefined || op2 === undefined) throw new Error('compose: operations do not line up');
      if (isRetain(op1) && isRetain(op2)) {
        if (op1 > op2) { out.retain(op2); op1 -= op2; op2 = ops2[i2++]; }
        else if (op1 === op2) { out.retain(op1); op1 = ops1[i1++]; op2 = ops2[i2++]; }
        else { out.retain(op1); op2 -= op1; op1 = ops1[i1++]; }
      } else if (isInsert(op1) && isDelete(op2)) {
        const n = cpLength(op1);
        if (n > -op2) { op1 = cpSlice(op1, -op2); op2 = ops2[i2++]; }
        else if (n === -op2) { op1 = ops1[i1++]; op2 = ops2[i2++]; }
        else { op2 += n; op1 = ops1[i1++]; }
      } else if (isInsert(op1) && isRetain(op2)) {
        const n = cpLength(op1);
        if (n > op2) { out.insert(cpSlice(op1, 0, op2)); op1 = cpSlice(op1, op2); op2 = ops2[i2++]; }
        else if (n === op2) { out.insert(op1); op1 = ops1[i1++]; op2 = ops2[i2++]; }
        else { out.insert(op1); op2 -= n; op1 = ops1[i1++]; }
      } else if (isRetain(op1) && isDelete(op2)) {
        if (op1 > -op2) { out.delete(op2); op1 += op2; op2 = ops2[i2++]; }
        else if (op1 === -op2) { out.delete(op2); op1 = ops1[i1++]; op2 = ops2[i2++]; }
        else { out.delete(op1); op2 += op1; op1 = ops1[i1++]; }
      } else {
        throw new Error('compose: operations do not line up');
      }
    }
    return out;
  }

  /**
   * [a', b'] for concurrent a and b, so that a.compose(b') equals b.compose(a').
   * Ties go to a: when both insert at one position, a's text lands first, as on the server.
   */
  static transform(a, b) {
    if (a.baseLength !== b.baseLength) throw new Error('transform: base lengths differ');
    const a2 = new TextOperation(), b2 = new TextOperation();
    const ops1 = a.ops, ops2 = b.ops;
    let i1 = 0, i2 = 0;
    let op1 = ops1[i1++], op2 = ops2[i2++];
    for (;;) {
      if (op1 === undefined && op2 === undefined) break;
      if (isInsert(op1)) { a2.insert(op1); b2.retain(cpLength(op1)); op1 = ops1[i1++]; continue; }
      if (isInsert(op2)) { a2.retain(cpLength(op2)); b2.insert(op2); op2 = ops2[i2++]; continue; }
      if (op1 === undefined || op2 === undefined) throw new Error('transform: operations do not line up');
      let n;
      if (isRetain(op1) && isRetain(op2)) {
        if (op1 > op2) { n = op2; op1 -= op2; op2 = ops2[i2++]; }
        else if (op1 === op2) { n = op2; op1 = ops1[i1++]; op2 = ops2[i2++]; }
        else { n = op1; op2 -= op1; op1 = ops1[i1++]; }
        a2.retain(n);
        b2.retain(n);
      } else if (isDelete(op1) && isDelete(op2)) {
        if (-op1 > -op2) { op1 -= op2; op2 = ops2[i2++]; }
        else if (op1 === op2) { op1 = ops1[i1++]; op2 = ops2[i2++]; }
        else { op2 -= op1; op1 = ops1[i1++]; }
      } else if (isDelete(op1) && isRetain(op2)) {
        if (-op1 > op2) { n = op2; op1 += op2; op2 = ops2[i2++]; }
        else if (-op1 === op2) { n = op2; op1 = ops1[i1++]; op2 = ops2[i2++]; }
        else { n = -op1; op2 += op1; op1 = ops1[i1++]; }
        a2.delete(n);
      } else if (isRetain(op1) && isDelete(op2)) {
        if (op1 > -op2) { n = -op2; op1 += op2; op2 = ops2[i2++]; }
        else if (op1 === -op2) { n = op1; op1 = ops1[i1++]; op2 = ops2[i2++]; }
        else { n = op1; op2 += op1; op1 = ops1[i1++]; }
        b2.delete(n);
      } else {
        throw new Error('transform: operations do not line up');
      }
    }
    return [a2, b2];
  }

  /** The ot.js wire form, e.g. [5, "abc", -2]. */
  toJSON() {
    return this.ops.slice();
  }

  static fromJSON(ops) {
    if (!Array.isArray(ops)) throw new Error('an operation is a list');
    const op = new TextOperation();
    for (const c of ops) {
      if (isInsert(c)) op.insert(c);
      else if (isRetain(c)) op.retain(c);
      else if (isDelete(c)) op.delete(c);
      else throw new Error(`bad operation component ${JSON.stringify(c)}`);
    }
    return op;
  }
}

/** The op as sequential change_delta parts: each position counts in the result of the parts before. */
export function toDelta(op) {
  const parts = [];
  let pos = 0;
  for (const c of op.ops) {
    if (isInsert(c)) {
      parts.push({ position: pos, insert: c });
      pos += cpLength(c);
    } else if (c > 0) {
      pos += c;
    } else {
      parts.push({ position: pos, delete: -c });
    }
  }
  return parts;
}

/** The smallest single-span operation turning `before` into `after` (common prefix and suffix kept). */
export function diff(before, after, caret = null) {
  const a = Array.from(before), b = Array.from(after);
  const limit = Math.min(a.length, b.length);
  let prefix = 0;
  while (prefix < limit && a[prefix] === b[prefix]) prefix++;
  let suffix = 0;
  while (suffix < limit - prefix && a[a.length - 1 - suffix] === b[b.length - 1 - suffix]) suffix++;
  if (caret !== null) {
    // Typing "a" after an "a" (or deleting one of two) reads the same either side: the caret, where the
    // edit left it (code points of `after`), says which. The longest prefix puts the change rightmost; slide
    // a lone insert or delete left, to an equal edit, until it ends at the caret. Which side matters once
    // someone else types there too.
    const inserted = b.length - prefix - suffix, deleted = a.length - prefix - suffix;
    if (inserted > 0 && deleted === 0) {
      while (prefix > caret - inserted && prefix > 0 && a[prefix - 1] === b[prefix + inserted - 1]) {
        prefix--; suffix++;
      }
    } else if (deleted > 0 && inserted === 0) {
      while (prefix > caret && prefix > 0 && a[prefix - 1] === a[prefix + deleted - 1]) { prefix--; suffix++; }
    }
  }
  return new TextOperation()
    .retain(prefix)
    .delete(a.length - prefix - suffix)
    .insert(b.slice(prefix, b.length - suffix).join(''))
    .retain(suffix);
}

/** [start, end) of what a single-span op touches, in its base document, or null for a no-op. */
export function spanOf(op) {
  if (op.isNoop()) return null;
  const ops = op.ops;
  const start = isRetain(ops[0]) ? ops[0] : 0;
  const end = op.baseLength - (ops.length > 1 && isRetain(ops[ops.length - 1]) ? ops[ops.length - 1] : 0);
  return [start, end];
}

/**
 * Where a cursor at `position` (before op) lands after op. Text inserted exactly at the
 * cursor pushes it right, unless `own`: then the cursor stays left of it, which keeps a
 * typist's words whole when someone else types at the same spot.
 */
export function transformCursor(position, op, own = false) {
  let moved = position, ahead = position;
  for (const c of op.ops) {
    if (isInsert(c)) {
      if (ahead > 0 || !own) moved += cpLength(c);
    } else if (c > 0) {
      ahead -= c;
    } else {
      moved -= Math.min(Math.max(ahead, 0), -c);
      ahead += c;
    }
    if (ahead < 0) break;
  }
  return Math.max(0, moved);
}

/**
 * Split op into [head, tail] with head.compose(tail) equal to op, where head has at most
 * `maxParts` components and inserts at most `maxInsert` code points (tail may be a no-op).
 * `cut(text, at)` may move a cut inside an inserted text earlier (to a code point index > 0).
 */
export function splitOp(op, maxParts, maxInsert, cut = (text, at) => at) {
  const head = new TextOperation();
  let consumed = 0, parts = 0, budget = maxInsert, i = 0;
  for (; i < op.ops.length; i++) {
    const c = op.ops[i];
    if (parts >= maxParts || budget <= 0) break;
    if (isInsert(c)) {
      const n = cpLength(c);
      if (n > budget) {
        const at = Math.max(1, Math.min(budget, cut(c, budget)));
        head.insert(cpSlice(c, 0, at));
        const rest = new TextOperation().retain(head.targetLength).insert(cpSlice(c, at));
        return finishSplit(op, head, consumed, rest, i + 1);
      }
      head.insert(c);
      budget -= n;
    } else if (c > 0) {
      head.retain(c);
      consumed += c;
    } else {
      head.delete(-c);
      consumed -= c;
    }
    parts++;
  }
  if (i >= op.ops.length) return [op, new TextOperation().retain(op.targetLength)];
  return finishSplit(op, head, consumed, new TextOperation().retain(head.targetLength), i);
}

function finishSplit(op, head, consumed, tail, from) {
  head.retain(op.baseLength - consumed);
  for (const c of op.ops.slice(from)) {
    if (isInsert(c)) tail.insert(c);
    else if (c > 0) tail.retain(c);
    else tail.delete(-c);
  }
  return [head, tail];
}

/**
 * The client side of ot.js's protocol as mcprt speaks it: at most one edit in flight
 * (`outstanding`), later local edits composed into `buffer`, and the server's revisions
 * applied strictly in order, whether they come live, as acks, or from the stored history.
 *
 * Hooks: send(op, baseRevision) -> message id; canSend() -> whether a message can go now;
 * split(op) -> [head, tail] to keep messages small; changed(before, op, full): a server op
 * (or a reset, with full) changed the local document; notice(text): worth a log line.
 */
export class OTClient {
  constructor(hooks) {
    this.hooks = {
      canSend: () => true, split: (op) => [op, new TextOperation().retain(op.targetLength)],
      changed: () => {}, notice: () => {}, ...hooks,
    };
    this.corrections = 0;
    this.lastCorrection = null;
    this.reset('', -1);
  }

  /** Start from the server's content at `revision`, forgetting anything unsent. */
  reset(content, revision) {
    this.revision = revision;  // the last server revision applied here
    this.content = content;    // the local document: the server's plus local edits not yet acknowledged
    this.server = content;     // the server's content at `revision`
    this.outstanding = null;   // {op, id, sentAt}: the edit in flight
    this.buffer = null;        // local edits made since, composed
    this.queue = new Map();    // revision -> event that came before its predecessors
  }

  get pending() {
    return Boolean(this.outstanding || this.buffer);
  }

  get synchronized() {
    return !this.pending && this.queue.size === 0;
  }

  /** The newest revision the server has announced (queued or applied). */
  get announced() {
    return Math.max(this.revision, ...this.queue.keys());
  }

  /** A local edit: apply it, then send it or keep it for later. */
  edit(op) {
    if (op.isNoop()) return;
    this.content = op.apply(this.content);
    if (!this.pending && this.hooks.canSend()) this.send(op);
    else this.buffer = this.buffer ? this.buffer.compose(op) : op;
  }

  /** Send the buffer when nothing is in flight. */
  flush() {
    if (!this.outstanding && this.buffer && this.hooks.canSend()) {
      const buffered = this.buffer;
      this.buffer = null;
      this.send(buffered);
    }
  }

  send(op) {
    const [head, tail] = this.hooks.split(op);
    if (!tail.isNoop()) this.buffer = this.buffer ? tail.compose(this.buffer) : tail;
    if (head.isNoop()) { // edits that cancelled out (typed, then deleted): send only what follows
      const rest = this.buffer;
      this.buffer = null;
      if (rest && !rest.isNoop()) this.send(rest);
      return;
    }
    const id = this.hooks.send(head, this.revision);
    this.outstanding = { op: head, id, sentAt: performance.now() };
  }

  /** One server revision: {kind: 'remote' | 'ack' | 'history', op, id?, correction?, content?}. */
  receive(revision, event) {
    if (revision <= this.revision) return; // already applied (seen live and in the history)
    this.queue.set(revision, event);
    while (this.queue.has(this.revision + 1)) {
      const next = this.revision + 1;
      const current = this.queue.get(next);
      this.queue.delete(next);
      this.apply(next, current);
    }
  }

  apply(revision, event) {
    const ours = this.outstanding && event.kind !== 'remote' && event.id === this.outstanding.id;
    if (ours && event.kind === 'ack') {
      // Lean mode sends no content: the server's document is its previous one through the acked op.
      const content = typeof event.content === 'string' ? event.content : event.op.apply(this.server);
      this.acknowledge(revision, event.correction, content);
    } else if (ours) {
      // Our edit, found in the history after a reconnect: the ack that never came.
      const after = event.op.apply(this.server);
      const mine = this.outstanding.op.apply(this.server);
      this.acknowledge(revision, mine === after ? null : diff(mine, after), after);
    } else {
      this.applyServer(revision, event.op, event.content);
    }
    if (typeof event.length === 'number' && cpLength(this.server) !== event.length) {
      this.hooks.notice(`the server's document at rev ${revision} has ${event.length} characters, ours ${
        cpLength(this.server)}: out of step`);
    }
    this.checkConverged();
  }

  acknowledge(revision, correction, content) {
    this.outstanding = null;
    this.revision = revision;
    this.server = content;
    if (correction && !correction.isNoop()) {
      // What the server's sanitizer changed after our edit: a server op concurrent with the buffer.
      let op = correction;
      if (this.buffer) [this.buffer, op] = TextOperation.transform(this.buffer, op);
      this.corrections += 1;
      this.lastCorrection = correction;
      this.applyLocal(op);
    }
  }

  applyServer(revision, op, content) {
    let mine = op;
    if (this.outstanding) [this.outstanding.op, mine] = TextOperation.transform(this.outstanding.op, mine);
    if (this.buffer) [this.buffer, mine] = TextOperation.transform(this.buffer, mine);
    this.server = op.apply(this.server);
    if (typeof content === 'string' && content !== this.server) {
      this.hooks.notice(`the server's content at rev ${revision} differs from its ops; taking the content`);
      this.server = content;
    }
    this.revision = revision;
    this.applyLocal(mine);
  }

  applyLocal(op) {
    const before = this.content;
    this.content = op.apply(before);
    this.hooks.changed(before, op, false);
  }

  checkConverged() {
    if (!this.pending && this.content !== this.server) {
      this.hooks.notice('the local document differs from the server\'s; taking the server\'s');
      this.takeServer();
    }
  }

  takeServer() {
    const before = this.content;
    this.content = this.server;
    this.hooks.changed(before, diff(before, this.content), false);
  }

  /** Take the server's content and revision (nothing local may be pending). */
  adopt(content, revision) {
    const before = this.content;
    this.reset(content, revision);
    this.hooks.changed(before, before === content ? null : diff(before, content), true);
  }

  /** Forget unacknowledged local edits and show the server's content; true if there were any. */
  dropPending() {
    if (!this.pending) return false;
    this.outstanding = null;
    this.buffer = null;
    this.takeServer();
    return true;
  }

  /** After catching up: an edit still outstanding never reached the server, so send it again. */
  requeue() {
    if (!this.outstanding) return false;
    const { op } = this.outstanding;
    this.outstanding = null;
    this.buffer = this.buffer ? op.compose(this.buffer) : op;
    return true;
  }
}

/**
 * Undo and redo of one client's own edits, as ot.js's UndoManager: each stack holds inverse operations
 * against the current document; a remote operation (or a server correction) transforms both stacks,
 * so that undo never touches what someone else wrote, and undo after a remote edit still undoes my
 * last change. Edits within `pause` ms of each other form one step, and a step ends after a word
 * (inserted text ending in whitespace).
 */
export class UndoManager {
  constructor(maxSteps = 200, pause = 1000) {
    this.maxSteps = maxSteps;
    this.pause = pause;
    this.clear();
  }

  clear() {
    this.undoStack = [];
    this.redoStack = [];
    this.lastAt = -Infinity;
    this.sealed = true;
  }

  get canUndo() { return this.undoStack.length > 0; }

  get canRedo() { return this.redoStack.length > 0; }

  /** A local edit `op` made on `before` (typing, not an undo or a redo): its inverse is a step. */
  record(op, before, now = performance.now()) {
    const inverse = op.invert(before);
    if (!this.sealed && now - this.lastAt < this.pause && this.undoStack.length) {
      this.undoStack.push(inverse.compose(this.undoStack.pop()));
    } else {
      this.undoStack.push(inverse);
      if (this.undoStack.length > this.maxSteps) this.undoStack.shift();
    }
    this.redoStack = [];
    this.lastAt = now;
    this.sealed = op.ops.some((part) => typeof part === 'string' && /\s$/.test(part));
  }

  /** The operation that undoes the last step (its inverse goes to the redo stack), or null. */
  undo(content) { return this.move(this.undoStack, this.redoStack, content); }

  /** The operation that redoes the last undone step, or null. */
  redo(content) { return this.move(this.redoStack, this.undoStack, content); }

  move(from, to, content) {
    const op = from.pop();
    if (!op) return null;
    to.push(op.invert(content));
    this.sealed = true;
    return op;
  }

  /** Someone else's operation reached the document: both stacks move over it. */
  transform(op) {
    this.undoStack = transformStack(this.undoStack, op);
    this.redoStack = transformStack(this.redoStack, op);
  }
}

function transformStack(stack, op) {
  const moved = [];
  for (let i = stack.length - 1; i >= 0; i -= 1) {
    const [mine, theirs] = TextOperation.transform(stack[i], op);
    if (!mine.isNoop()) moved.push(mine);
    op = theirs;
  }
  return moved.reverse();
}
