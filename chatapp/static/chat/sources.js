/*
 * Site knowledge on the page: the pages an answer may cite (the `sources`
 * event) listed under it, and each `[n]` in the answer made a link to
 * source n. Only http(s) addresses become links; they open in a new tab.
 * The page the visitor reads goes with every message: as its widget names
 * it at the time (embed.js), else as `/embed?page_url=` gave it.
 */
import { h } from './dom.js';
import { t } from './i18n.js';

// The page's words for sources; the catalogues take them over.
export const WORDS = {
  get heading() { return t('sources.heading'); },
  get newTab() { return t('sources.new_tab'); },
  cite: (n, title) => t('sources.cite', { n, title }),
};

const MAX_URL = 2048;
// A citation: [1], [12]; [1][2] is two of them. Not a link's own text.
const CITATION = /\[(\d{1,3})\]/g;
const NOT_IN = 'a, code, pre, kbd, samp, script, style';

/** An http(s) address, or null: nothing else may become a link. */
function webUrl(value) {
  if (typeof value !== 'string' || value.length > MAX_URL) return null;
  try {
    const url = new URL(value);
    return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
  } catch {
    return null;
  }
}

/** The host page this chat sits in (`/embed?page_url=`), or null. */
export function hostPageUrl() {
  const url = webUrl(new URLSearchParams(window.location.search).get('page_url'));
  return url ? url.split('#')[0] : null;
}

/** Add the host page (`current`, else the frame's page_url) to a message's fields. */
export function withPageUrl(fields, current = null) {
  const named = webUrl(current);
  const pageUrl = named ? named.split('#')[0] : hostPageUrl();
  return pageUrl ? { ...fields, page_url: pageUrl } : fields;
}

/** The well-formed sources of a `sources` event, by number. */
export function readSources(list) {
  const byNumber = new Map();
  if (!Array.isArray(list)) return byNumber;
  for (const item of list) {
    if (!Number.isInteger(item?.n) || item.n <= 0 || byNumber.has(item.n)) continue;
    // A source that is no web page (a file added on the command line) is
    // named, never linked.
    const url = webUrl(item.url);
    const title = typeof item.title === 'string' && item.title.trim() ? item.title.trim() : (url ?? '');
    if (url || title) byNumber.set(item.n, { n: item.n, url, title });
  }
  return byNumber;
}

function newTabLink(source, ...children) {
  return h(
    'a',
    { href: source.url, target: '_blank', rel: 'noopener noreferrer' },
    ...children,
    h('span', { class: 'visually-hidden', text: ` ${WORDS.newTab}` }),
  );
}

/** Turn each `[n]` of known sources in `body`'s text into a link; return the ns cited. */
export function linkCitations(body, sources) {
  const cited = new Set();
  if (sources.size === 0) return cited;
  const walker = document.createTreeWalker(body, NodeFilter.SHOW_TEXT);
  const found = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    if (!node.parentElement?.closest(NOT_IN) && CITATION.test(node.data)) found.push(node);
    CITATION.lastIndex = 0;
  }
  for (const node of found) {
    const parts = [];
    let from = 0;
    for (const match of node.data.matchAll(CITATION)) {
      const source = sources.get(Number(match[1]));
      if (!source?.url) continue;
      cited.add(source.n);
      parts.push(node.data.slice(from, match.index));
      const link = newTabLink(source, h('span', { 'aria-hidden': 'true', text: match[0] }));
      link.className = 'cite';
      link.title = source.title;
      // Read as "source 1: Returns policy", not as "left bracket one".
      link.prepend(h('span', { class: 'visually-hidden', text: WORDS.cite(source.n, source.title) }));
      parts.push(link);
      from = match.index + match[0].length;
    }
    if (parts.length === 0) continue;
    parts.push(node.data.slice(from));
    node.replaceWith(...parts);
  }
  return cited;
}

/** The list of sources under an answer: numbers, titles, links. */
export function sourcesList(sources) {
  const items = [...sources.values()].map((source) => h(
    'li',
    { value: source.n, 'data-chatapp-source': source.n },
    source.url ? newTabLink(source, source.title) : h('span', { text: source.title }),
  ));
  const heading = h('h3', { class: 'sources__title', text: WORDS.heading });
  heading.id = `chatapp-sources-${Math.random().toString(36).slice(2)}`;
  return h(
    'section',
    { class: 'sources', 'data-chatapp-sources': true, 'aria-labelledby': heading.id },
    heading,
    h('ol', { class: 'sources__list' }, ...items),
  );
}

/**
 * Dress a finished answer: citations as links, then the sources it cites
 * (all it was given, when it cites none: it may still have drawn on them).
 */
export function showSources(answer) {
  const { sources } = answer;
  if (!sources || sources.size === 0 || answer.sourcesShown) return;
  answer.sourcesShown = true;
  const cited = linkCitations(answer.body, sources);
  const listed = cited.size === 0 ? sources : new Map([...sources].filter(([n]) => cited.has(n)));
  answer.body.after(sourcesList(listed));
}
