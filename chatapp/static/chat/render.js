/*
 * Model output to safe DOM: marked, then DOMPurify, never raw HTML.
 *
 * A streaming answer is rendered in linear time: the text is cut into
 * top-level Markdown blocks, every block followed by a later one is settled
 * and rendered once, and only the last, growing block is rendered again on
 * each frame. A settled block can no longer change: a later line cannot turn
 * a block into something else once another block has begun after it.
 *
 * The last block is shown as if it were finished: an open code fence, code
 * span or `**` is closed before parsing, so half-written Markdown (and an
 * answer stopped half way) never shows its raw markers.
 */
import { escapeHtml } from './dom.js';

function createMarkdown() {
  const { marked, DOMPurify } = window;
  if (!marked?.Marked || typeof DOMPurify !== 'function') return null;
  const parser = new marked.Marked({
    gfm: true,
    breaks: true,
    renderer: {
      // Raw HTML in an answer is shown as text: a model writes *about*
      // HTML far more often than it means to lay out our page with it.
      html: ({ text }) => escapeHtml(text),
      // Images become plain links: loading a model-chosen URL would leak the
      // conversation to that host (and the CSP would refuse it anyway).
      image: ({ href, text }) =>
        `<a href="${escapeHtml(href ?? '')}">${escapeHtml(text || href || 'image')}</a>`,
    },
  });
  // A private instance, so these hooks never leak into anyone else's use.
  const purifier = DOMPurify(window);
  purifier.addHook('afterSanitizeAttributes', (node) => {
    if (node.nodeName === 'A' && node.hasAttribute('href')) {
      node.setAttribute('target', '_blank');
      node.setAttribute('rel', 'noopener noreferrer');
    }
  });
  purifier.setConfig({
    USE_PROFILES: { html: true },
    FORBID_TAGS: ['style', 'img', 'picture', 'video', 'audio', 'source', 'form', 'button', 'select', 'textarea'],
    // style would break the CSP; id/name could clobber our own DOM lookups.
    FORBID_ATTR: ['style', 'id', 'name'],
    // Nodes straight from the sanitiser's own parse: no second parse here.
    RETURN_DOM_FRAGMENT: true,
  });
  return {
    lex: (text) => parser.lexer(text),
    /** Sanitised DOM nodes for some tokens (inert until inserted). */
    nodes: (tokens) => [...purifier.sanitize(parser.parser(tokens)).childNodes],
  };
}

// Every construct once, so parsing code and regular expressions are compiled
// before the first answer streams, not during it.
const WARM_UP = '# h\n\np **b** *i* `c` [l](https://example.com)\n\n- a\n- b\n\n1. c\n\n'
  + '> q\n\n```js\nx\n```\n\n| a | b |\n| - | - |\n| 1 | 2 |\n\n---\n';

const FENCE = /^ {0,3}(`{3,}|~{3,})/;
const URL_LIKE = /\S+:\/\/\S*/g;

/** The `**` (or `***`) runs left open, outside code spans and URLs. */
function openStrong(segments) {
  const stack = [];
  segments.forEach((segment, index) => {
    const atEnd = index === segments.length - 1;
    const text = segment.replace(URL_LIKE, (url) => ' '.repeat(url.length));
    for (const match of text.matchAll(/\*{2,3}/g)) {
      const end = match.index + match[0].length;
      const before = text[match.index - 1] ?? ' ';
      // A run at the very end of the text may still open something.
      const after = end === text.length && atEnd ? 'x' : (text[end] ?? ' ');
      if (before === '*' || after === '*') continue;
      const canOpen = !/\s/.test(after);
      const canClose = !/\s/.test(before) && end < text.length;
      if (canClose && stack.length > 0) stack.pop();
      else if (canOpen) stack.push({ run: match[0], last: end === text.length && atEnd });
    }
  });
  return stack;
}

/** Close an open fence, code span or `**` at the end of one block's source. */
export function closeDangling(source) {
  let fence = null;
  for (const line of source.split('\n')) {
    const match = FENCE.exec(line);
    if (!match) continue;
    if (!fence) fence = match[1];
    else if (match[1][0] === fence[0] && match[1].length >= fence.length && /^ {0,3}[`~]+\s*$/.test(line)) fence = null;
  }
  if (fence) {
    // A closing fence half written ("``") is not code: leave it out.
    const lines = source.replace(/\s+$/, '').split('\n');
    const partial = new RegExp(`^ {0,3}\\${fence[0]}+$`);
    if (lines.length > 1 && partial.test(lines.at(-1))) lines.pop();
    return `${lines.join('\n')}\n${fence}`;
  }

  const trailing = /\s*$/.exec(source)[0];
  const original = source.slice(0, source.length - trailing.length);
  let body = original;
  // Code spans: a backtick run opens one until a run of the same length.
  const outside = [];
  let open = null;
  let openAt = 0;
  let from = 0;
  for (const match of body.matchAll(/`+/g)) {
    if (open === null) {
      outside.push(body.slice(from, match.index));
      open = match[0];
      openAt = match.index;
    } else if (match[0] === open) {
      open = null;
      from = match.index + match[0].length;
    }
  }
  if (open === null) outside.push(body.slice(from));
  const strong = openStrong(outside);
  if (open !== null) {
    // A run with nothing after it yet is dropped; otherwise the span closes.
    body = openAt + open.length === body.length ? body.slice(0, openAt).trimEnd() : body + open;
  }
  // Half of a closing `**` already here ("**bold*"): wait for the other half.
  if (open === null && strong.length > 0 && /[^*\s]\*$/.test(body)) body = body.slice(0, -1);
  for (const { run, last } of strong.reverse()) {
    body = last && open === null ? body.slice(0, -run.length).trimEnd() : body + run;
  }
  // A lone `*` at the very end is most likely half of a `**` still coming.
  if (open === null) body = body.replace(/(^|\s)\*$/, '$1').trimEnd();
  return body === original ? source : body + trailing;
}

const markdown = createMarkdown();

/** Lex `text` with its last block closed (see closeDangling). */
function lexClosed(text) {
  const tokens = markdown.lex(text);
  let last = tokens.length - 1;
  while (last >= 0 && tokens[last].type === 'space') last -= 1;
  if (last < 0) return tokens;
  const head = tokens.slice(0, last);
  const cut = head.reduce((sum, token) => sum + token.raw.length, 0);
  if (text.slice(0, cut) !== head.map((t) => t.raw).join('')) return tokens;
  const tail = text.slice(cut);
  const closed = closeDangling(tail);
  return closed === tail ? tokens : [...head, ...markdown.lex(closed)];
}
if (markdown) {
  const warm = () => markdown.nodes(markdown.lex(WARM_UP));
  if (typeof requestIdleCallback === 'function') requestIdleCallback(warm, { timeout: 2000 });
  else setTimeout(warm, 0);
}

/**
 * Render a whole text into `target` at once (history, finished answers).
 * `decorate(container, settled)` dresses the inserted nodes.
 */
export function renderMarkdown(text, target, decorate = () => {}) {
  if (!markdown) {
    // Without the vendored libraries the answers still show, as plain text.
    target.textContent = text;
    target.classList.add('is-plain');
    return;
  }
  const nodes = markdown.nodes(lexClosed(text));
  target.replaceChildren(...nodes);
  decorate(target, true);
}

// At most this much new text is rendered in one frame, so a burst (a resume
// replaying many events at once) is spread over frames instead of blocking.
const MAX_CHARS_PER_FRAME = 4000;

/**
 * Render a growing text into `target`, each settled block once.
 * `decorate(container, settled)` dresses newly inserted nodes: settled ones
 * for good (highlighting, tools), the growing tail only lightly.
 */
export class StreamRenderer {
  constructor(target, decorate = () => {}) {
    this.target = target;
    this.decorate = decorate;
    this.settled = 0; // characters of the text rendered for good
    this.tail = []; // nodes of the growing last block
  }

  /** Render what fits in one frame; true once all of `text` is on screen. */
  update(text) {
    if (!markdown) {
      this.target.textContent = text;
      this.target.classList.add('is-plain');
      return true;
    }
    let end = Math.min(text.length, this.settled + MAX_CHARS_PER_FRAME);
    let { rest, tokens, last, cut } = this.split(text, end);
    // One block longer than the window: nothing in it can settle, so take
    // the rest whole (else the view would never catch up with the text).
    if (last <= 0 && end < text.length) {
      end = text.length;
      ({ rest, tokens, last, cut } = this.split(text, end));
    }
    for (const node of this.tail) node.remove();
    if (last > 0) {
      this.insert(markdown.nodes(tokens.slice(0, last)), true);
      this.settled += cut;
    }
    const tailSource = rest.slice(last > 0 ? cut : 0);
    const closed = closeDangling(tailSource);
    const tailTokens = closed === tailSource ? tokens.slice(Math.max(last, 0)) : markdown.lex(closed);
    this.tail = this.insert(markdown.nodes(tailTokens), false);
    return end === text.length;
  }

  /** Lex the unsettled text up to `end`; `last` blocks (`cut` characters) can settle. */
  split(text, end) {
    const rest = text.slice(this.settled, end);
    const tokens = markdown.lex(rest);
    let last = tokens.length - 1;
    while (last > 0 && tokens[last].type === 'space') last -= 1;
    let cut = 0;
    for (let i = 0; i < last; i += 1) cut += tokens[i].raw.length;
    // marked's raws spell the source exactly; if one day they do not, render
    // everything as tail rather than settle the wrong characters.
    if (last > 0 && rest.slice(0, cut) !== tokens.slice(0, last).map((t) => t.raw).join('')) last = 0;
    return { rest, tokens, last, cut };
  }

  insert(nodes, settled) {
    const holder = document.createElement('div');
    holder.append(...nodes);
    this.decorate(holder, settled);
    const placed = [...holder.childNodes];
    this.target.append(...placed);
    return placed;
  }
}
