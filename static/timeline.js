// A document's past, rebuilt in the browser from its stored ops: the content at every revision,
// who wrote each character of it, and a word diff between two revisions. Nothing here touches
// the page or the network.

import { TextOperation, cpLength } from './ot.js';

const CHECKPOINT = 50;     // a copy of the content and its authors every N revisions
const DIFF_CELLS = 4e6;    // the word diff's table at most; beyond, one changed span
export const EARLIER = ''; // the author of text older than the first replayed revision

/** Who wrote each code point of a document: runs of [length, author], moved through ops. */
export class Authors {
  constructor(runs = []) {
    this.runs = runs;
  }

  static of(length, author) {
    return new Authors(length ? [[length, author]] : []);
  }

  copy() {
    return new Authors(this.runs.map((run) => run.slice()));
  }

  /** The authors after `op`, whose inserts are `author`'s. */
  apply(op, author) {
    const out = [];
    const push = (n, who) => {
      const last = out[out.length - 1];
      if (last && last[1] === who) last[0] += n;
      else if (n) out.push([n, who]);
    };
    let i = 0, left = this.runs.length ? this.runs[0][0] : 0;
    const take = (n, keep) => {
      while (n > 0) {
        if (i >= this.runs.length) throw new Error('authors: the op is longer than the document');
        const k = Math.min(n, left);
        if (keep) push(k, this.runs[i][1]);
        n -= k;
        left -= k;
        if (!left) left = ++i < this.runs.length ? this.runs[i][0] : 0;
      }
    };
    for (const c of op.ops) {
      if (typeof c === 'string') push(cpLength(c), author);
      else take(Math.abs(c), c > 0);
    }
    return new Authors(out);
  }

  /** One author per code point (for documents of a reasonable size). */
  flat() {
    return this.runs.flatMap(([n, who]) => Array(n).fill(who));
  }

  /** {author: code points} */
  counts() {
    const counts = new Map();
    for (const [n, who] of this.runs) counts.set(who, (counts.get(who) || 0) + n);
    return counts;
  }
}

/**
 * Revisions `start`..latest of one document: `content` is the document at `start`, `entries`
 * the stored ops after it ({revision, op, user_id, time}), oldest first.
 */
export class Timeline {
  constructor(start, content, entries) {
    this.start = start;
    this.entries = new Map(entries.map((e) => [e.revision, { ...e, op: TextOperation.fromJSON(e.op) }]));
    this.latest = entries.length ? entries[entries.length - 1].revision : start;
    this.checkpoints = new Map([[start, { content, authors: Authors.of(cpLength(content), EARLIER) }]]);
    let state = this.checkpoints.get(start);
    for (let revision = start + 1; revision <= this.latest; revision += 1) {
      state = this.step(state, revision);
      if (revision % CHECKPOINT === 0) this.checkpoints.set(revision, state);
    }
  }

  step(state, revision) {
    const entry = this.entries.get(revision);
    if (!entry) throw new Error(`the history has no revision ${revision}`);
    return { content: entry.op.apply(state.content), authors: state.authors.apply(entry.op, entry.user_id) };
  }

  /** {content, authors} at `revision` (from the nearest checkpoint before it). */
  at(revision) {
    let from = revision - (revision % CHECKPOINT);
    while (!this.checkpoints.has(from)) from = Math.max(this.start, from - CHECKPOINT);
    let state = this.checkpoints.get(from);
    for (let r = from + 1; r <= revision; r += 1) state = this.step(state, r);
    return state;
  }

  /** Who made `revision`, and when. */
  entry(revision) {
    return this.entries.get(revision) || null;
  }
}

/** Words and the spaces between them. */
function tokens(text) {
  return text.match(/\s+|[^\s]+/g) || [];
}

/** [kind, text] parts turning `before` into `after`: 'same', 'del' or 'ins', by words. */
export function wordDiff(before, after) {
  const a = tokens(before), b = tokens(after);
  let head = 0;
  while (head < a.length && head < b.length && a[head] === b[head]) head += 1;
  let tail = 0;
  while (tail < a.length - head && tail < b.length - head && a[a.length - 1 - tail] === b[b.length - 1 - tail]) tail += 1;
  const midA = a.slice(head, a.length - tail), midB = b.slice(head, b.length - tail);
  const middle = midA.length * midB.length > DIFF_CELLS
    ? [['del', midA.join('')], ['ins', midB.join('')]]
    : lcsParts(midA, midB);
  const parts = [['same', a.slice(0, head).join('')], ...middle, ['same', a.slice(a.length - tail).join('')]];
  const merged = [];
  for (const [kind, text] of parts) {
    if (!text) continue;
    const last = merged[merged.length - 1];
    if (last && last[0] === kind) last[1] += text;
    else merged.push([kind, text]);
  }
  return merged;
}

/** The longest-common-subsequence diff of two token lists. */
function lcsParts(a, b) {
  const width = b.length + 1;
  const table = new Uint32Array((a.length + 1) * width);
  for (let i = a.length - 1; i >= 0; i -= 1) {
    for (let j = b.length - 1; j >= 0; j -= 1) {
      table[i * width + j] = a[i] === b[j] ? table[(i + 1) * width + j + 1] + 1
        : Math.max(table[(i + 1) * width + j], table[i * width + j + 1]);
    }
  }
  const parts = [];
  let i = 0, j = 0;
  while (i < a.length || j < b.length) {
    if (i < a.length && j < b.length && a[i] === b[j]) {
      parts.push(['same', a[i]]);
      i += 1;
      j += 1;
    } else if (i < a.length && (j === b.length || table[(i + 1) * width + j] >= table[i * width + j + 1])) {
      parts.push(['del', a[i++]]);  // what went comes before what came, as people read a change
    } else {
      parts.push(['ins', b[j++]]);
    }
  }
  return parts;
}
