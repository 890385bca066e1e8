/*
 * Small DOM helpers shared by the other modules. Nothing here writes a style
 * attribute or parses markup from outside this file (the page's CSP forbids
 * inline style, and model output goes through render.js only).
 */

const SVG_NS = 'http://www.w3.org/2000/svg';

/** Build an element: h('p', {class: 'x', text: 'hi'}, child, …). */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  node.append(...children.filter(Boolean));
  return node;
}

const ICONS = {
  copy: '<rect x="9" y="9" width="11" height="11" rx="2.5"/><path d="M5 15V6.5A2.5 2.5 0 0 1 7.5 4H15"/>',
  check: '<path d="M5 12.5 10 17.5 19 7"/>',
  retry: '<path d="M20 12a8 8 0 1 1-2.34-5.66"/><path d="M20 4v5h-5"/>',
  alert: '<circle cx="12" cy="12" r="9"/><path d="M12 7.5v5.5"/><path d="M12 16.5v.01"/>',
  clock: '<circle cx="12" cy="12" r="9"/><path d="M12 7v5l3.5 2"/>',
  info: '<circle cx="12" cy="12" r="9"/><path d="M12 11v5.5"/><path d="M12 7.5v.01"/>',
  edit: '<path d="M4 20h4L19 9l-4-4L4 16v4Z"/><path d="m13.5 6.5 4 4"/>',
  thumbUp: '<path d="M7 10v10H4V10h3Z"/><path d="M7 10l4-7c1.5 0 2.5 1 2.2 2.6L12.6 9H18a2 2 0 0 1 2 2.3l-1.2 6.9A2 2 0 0 1 16.8 20H7"/>',
  thumbDown: '<path d="M7 14V4H4v10h3Z"/><path d="M7 14l4 7c1.5 0 2.5-1 2.2-2.6L12.6 15H18a2 2 0 0 0 2-2.3l-1.2-6.9A2 2 0 0 0 16.8 4H7"/>',
  wrap: '<path d="M4 6h16"/><path d="M4 12h13a3 3 0 0 1 0 6h-4"/><path d="m15 16-2 2 2 2"/><path d="M4 18h5"/>',
};

export function icon(name) {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  svg.setAttribute('class', `icon icon--${name}`);
  svg.innerHTML = ICONS[name]; // constant markup from this file
  return svg;
}

const HTML_ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
export const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]);

// The server counts code points (Python len), not UTF-16 units.
export const codePoints = (text) => {
  let count = 0;
  for (const _ of text) count += 1;
  return count;
};

let statusRegion = null;
let statusTimer = 0;

/** Say something to screen readers without putting it in the log. */
export function announce(text) {
  statusRegion ??= document.querySelector('[data-chatapp-status]');
  if (!statusRegion) return;
  statusRegion.textContent = '';
  clearTimeout(statusTimer);
  // A new text node after a tick, so the same words are announced twice.
  statusTimer = setTimeout(() => { statusRegion.textContent = text; }, 60);
}
