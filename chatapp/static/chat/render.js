/*
 * Model output to safe DOM: marked, then DOMPurify, never raw HTML.
 *
 * A streaming answer is rendered in linear time: the text is cut into
 * top-level Markdown blocks, every block followed by a later one is settled
 * and rendered once, and only the last, growing block is rendered again on
 * each frame. A settled block can no longer change: a later line cannot turn
 * a block into something else once another block has begun after it.
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

const markdown = createMarkdown();
if (markdown) {
  const warm = () => markdown.nodes(markdown.lex(WARM_UP));
  if (typeof requestIdleCallback === 'function') requestIdleCallback(warm, { timeout: 2000 });
  else setTimeout(warm, 0);
}

/** Render a whole text into `target` at once (history, finished answers). */
export function renderMarkdown(text, target, decorate = () => {}) {
  if (!markdown) {
    // Without the vendored libraries the answers still show, as plain text.
    target.textContent = text;
    target.classList.add('is-plain');
    return;
  }
  const nodes = markdown.nodes(markdown.lex(text));
  target.replaceChildren(...nodes);
  decorate(target);
}

// At most this much new text is rendered in one frame, so a burst (a resume
// replaying many events at once) is spread over frames instead of blocking.
const MAX_CHARS_PER_FRAME = 4000;

/**
 * Render a growing text into `target`, each settled block once.
 * `decorate(container)` dresses newly inserted nodes (code block bars).
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
    const end = Math.min(text.length, this.settled + MAX_CHARS_PER_FRAME);
    const rest = text.slice(this.settled, end);
    const tokens = markdown.lex(rest);
    let last = tokens.length - 1;
    while (last > 0 && tokens[last].type === 'space') last -= 1;
    let cut = 0;
    for (let i = 0; i < last; i += 1) cut += tokens[i].raw.length;
    // marked's raws spell the source exactly; if one day they do not, render
    // everything as tail rather than settle the wrong characters.
    if (last > 0 && rest.slice(0, cut) !== tokens.slice(0, last).map((t) => t.raw).join('')) last = 0;
    for (const node of this.tail) node.remove();
    if (last > 0) {
      this.insert(markdown.nodes(tokens.slice(0, last)));
      this.settled += cut;
    }
    this.tail = this.insert(markdown.nodes(tokens.slice(Math.max(last, 0))));
    return end === text.length;
  }

  insert(nodes) {
    const holder = document.createElement('div');
    holder.append(...nodes);
    this.decorate(holder);
    const placed = [...holder.childNodes];
    this.target.append(...placed);
    return placed;
  }
}
