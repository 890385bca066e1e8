/*
 * Dress rendered Markdown: code blocks become labelled, focusable regions
 * with a language label, a wrap toggle, a copy button named for their
 * language and syntax highlighting; tables scroll sideways inside a
 * labelled, focusable region. Copy buttons live here too.
 *
 * Highlighting runs once per block, when the block settles (a later block
 * has begun, or the answer is complete), never per token. highlight.js
 * marks tokens with class names only, so its output is CSP-safe.
 */
import { announce, h, icon } from './dom.js';
import { language, t } from './i18n.js';

const hljs = typeof window.hljs?.highlight === 'function' ? window.hljs : null;
hljs?.configure({ ignoreUnescapedHTML: true });
// highlight.js runs in one go (about 8 ms per 1,000 characters of Python on
// a slow machine): a longer block stays plain rather than freeze the page.
const MAX_HIGHLIGHT_CHARS = 8000;
// Grammars compile on first use; do the common ones while the page is idle.
const WARM_LANGUAGES = ['python', 'javascript', 'typescript', 'bash', 'json', 'xml', 'css', 'sql'];

if (hljs && typeof requestIdleCallback === 'function') {
  const warmNext = (deadline) => {
    while (WARM_LANGUAGES.length > 0 && deadline.timeRemaining() > 5) {
      const language = WARM_LANGUAGES.shift();
      if (hljs.getLanguage(language)) hljs.highlight('x = 1', { language, ignoreIllegals: true });
    }
    if (WARM_LANGUAGES.length > 0) requestIdleCallback(warmNext, { timeout: 5000 });
  };
  requestIdleCallback(warmNext, { timeout: 5000 });
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No async clipboard (plain http, or an iframe without clipboard-write):
    // fall back to the old selection-based copy.
  }
  const returnFocus = document.activeElement;
  const proxy = h('textarea', { class: 'clipboard-proxy', readonly: true, 'aria-hidden': 'true', tabindex: '-1' });
  proxy.value = text;
  document.body.append(proxy);
  proxy.select();
  let copied = false;
  try {
    copied = document.execCommand('copy');
  } catch {
    copied = false;
  }
  proxy.remove();
  returnFocus?.focus?.({ preventScroll: true });
  return copied;
}

/** A copy button; `visibleLabel` adds text next to the icon. */
export function copyButton(label, getText, visibleLabel = '') {
  const face = (name, text) => [icon(name), ...(visibleLabel ? [h('span', { text })] : [])];
  const button = h('button', {
    type: 'button',
    class: visibleLabel ? 'btn btn--tiny' : 'btn btn--icon btn--subtle',
    'aria-label': label,
    title: label,
  }, ...face('copy', visibleLabel));
  let timer = 0;
  button.addEventListener('click', async () => {
    const copied = await copyText(getText());
    clearTimeout(timer);
    button.replaceChildren(...face(copied ? 'check' : 'alert', t(copied ? 'copy.done' : 'copy.failed')));
    button.classList.toggle('is-done', copied);
    announce(t(copied ? 'copy.done_announce' : 'copy.failed_announce'));
    timer = setTimeout(() => {
      button.replaceChildren(...face('copy', visibleLabel));
      button.classList.remove('is-done');
    }, 1800);
  });
  return button;
}

/** The language a fence named, as people call it: "Python", "JavaScript". */
function languageName(id) {
  if (!id) return '';
  const known = hljs?.getLanguage(id)?.name;
  if (known) return known.split(',')[0].trim();
  return id;
}

function highlight(code, id) {
  if (!hljs || !id || !hljs.getLanguage(id) || code.classList.contains('hljs')) return;
  const source = code.textContent;
  if (source.length > MAX_HIGHLIGHT_CHARS) return;
  const started = performance.now();
  // highlight.js escapes every character of the source; the only markup in
  // its result is its own <span class="hljs-…">.
  code.innerHTML = hljs.highlight(source, { language: id, ignoreIllegals: true }).value;
  code.classList.add('hljs');
  performance.measure('chatapp:highlight', { start: started, detail: { language: id, chars: source.length } });
}

function wrapToggle(block) {
  const button = h('button', {
    type: 'button',
    class: 'btn btn--tiny',
    'aria-pressed': 'false',
    title: t('code.wrap_title'),
  }, icon('wrap'), h('span', { text: t('code.wrap') }));
  button.addEventListener('click', () => {
    const wrapped = block.classList.toggle('is-wrapped');
    button.setAttribute('aria-pressed', String(wrapped));
  });
  return button;
}

/** Give a code block its bar and region (at once) and its tools (once settled). */
function dressCode(pre, settled) {
  let block = pre.parentElement?.classList.contains('codeblock') ? pre.parentElement : null;
  const code = pre.querySelector('code') ?? pre;
  const id = /(?:^|\s)language-([\w+#.-]+)/.exec(code.className)?.[1]?.toLowerCase() ?? '';
  const name = languageName(id);
  if (!block) {
    // A region that takes keyboard focus: a wide block scrolls by keys.
    pre.setAttribute('tabindex', '0');
    pre.setAttribute('role', 'region');
    pre.setAttribute('aria-label', name ? t('code.label_named', { name }) : t('code.label'));
    const bar = h(
      'div',
      { class: 'codeblock__bar' },
      h('span', { class: 'codeblock__lang', text: id || 'code' }),
      h('span', { class: 'codeblock__tools' }),
    );
    block = h('div', { class: 'codeblock' }, bar);
    pre.replaceWith(block);
    block.append(pre);
  }
  if (!settled || block.dataset.settled) return;
  block.dataset.settled = 'true';
  later(() => {
    highlight(code, id);
    block.querySelector('.codeblock__tools').append(
      wrapToggle(block),
      copyButton(name ? t('code.copy_named', { name }) : t('code.copy'), () => code.textContent, t('code.copy_short')),
    );
  });
}

// Settled blocks are finished off while the page is idle, a few at a time:
// done in the frame that settles them, 50 code blocks in a streaming answer
// halved its frame rate.
const pending = [];
let idleScheduled = false;

function later(task) {
  pending.push(task);
  if (idleScheduled) return;
  idleScheduled = true;
  const run = (deadline) => {
    while (pending.length > 0 && (deadline.didTimeout || deadline.timeRemaining() > 2)) {
      pending.shift()();
      if (deadline.didTimeout) break;
    }
    if (pending.length > 0) requestIdleCallback(run, { timeout: 500 });
    else idleScheduled = false;
  };
  if (typeof requestIdleCallback === 'function') requestIdleCallback(run, { timeout: 500 });
  else setTimeout(() => run({ didTimeout: true, timeRemaining: () => 0 }), 0);
}

function tableLabel(table) {
  const heads = [...table.querySelectorAll('thead th')].map((th) => th.textContent.trim()).filter(Boolean);
  if (heads.length === 0) return t('table.label');
  const columns = new Intl.ListFormat(language, { style: 'short', type: 'unit' }).format(heads.slice(0, 3));
  if (heads.length <= 3) return t('table.label_named', { columns });
  return t('table.label_more', { columns, n: heads.length - 3 });
}

// A cell this short stays on one line ("Year 2000", "1,200"); longer text
// wraps, at a width that keeps it readable.
const SHORT_CELL = 24;

function dressTable(table) {
  if (table.parentElement?.classList.contains('table-scroll')) return;
  for (const cell of table.querySelectorAll('th, td')) {
    if (cell.textContent.trim().length > SHORT_CELL) cell.classList.add('is-long');
  }
  const region = h('div', { class: 'table-scroll', role: 'region', tabindex: '0', 'aria-label': tableLabel(table) });
  table.replaceWith(region);
  region.append(table);
}

/** Dress the code blocks and tables under `container`; tools only when `settled`. */
export function dressBlocks(container, settled) {
  for (const pre of container.querySelectorAll('pre')) dressCode(pre, settled);
  for (const table of container.querySelectorAll('table')) dressTable(table);
}
