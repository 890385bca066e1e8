/*
 * /embed inside a frame: tell an allowed parent how tall the chat wants to
 * be, ask a chatapp widget to close on Esc, take focus when it opens, and
 * ask the parent to reload when the chat's session ended for good.
 * A widget's host page drives the chat from here: `chatapp:setup` (greeting,
 * suggestions, the close button), `chatapp:prefill`, `chatapp:ask`; the chat
 * says `chatapp:ready` and, for each finished answer, `chatapp:answer`.
 * A widget that says so in its setup is asked, at each message, which page
 * its host shows now (`chatapp:where`, answered by `chatapp:page`): in a
 * single-page app the address changes while the frame stays.
 * Messages go only to origins in CHATAPP_EMBED_ORIGINS, never to "*", and
 * are taken only from the parent window on one of them.
 */
import { config } from './config.js';
import { ui } from './thread.js';

// How long to let the parent page reload before reloading the frame itself.
const PARENT_RELOAD_WAIT_MS = 3000;
// How long a message waits for the widget to name its host page; it
// answers at once, so this only matters for a host page that hangs.
const WHERE_WAIT_MS = 1000;

/** The parent origins this frame may talk to. */
function parentOrigins() {
  let targets = config.embedOrigins;
  // Chrome and Safari name the parent's origin: post only there (and only
  // if allowed), which also spares the console a mismatch error per origin.
  const ancestors = window.location.ancestorOrigins;
  if (ancestors && ancestors.length > 0) targets = targets.filter((origin) => origin === ancestors[0]);
  return targets;
}

function tellParent(targets, message) {
  for (const origin of targets) window.parent.postMessage(message, origin);
}

function reportHeight(targets) {
  if (typeof ResizeObserver !== 'function') return;
  let reported = 0;
  const measure = () => {
    // The content's own height, not the viewport's: the scroller stretches
    // to fill the frame, so measuring it would never let the frame shrink.
    const height = Math.ceil(ui.bar.offsetHeight + ui.thread.offsetHeight + ui.composer.offsetHeight);
    if (height === reported) return;
    reported = height;
    tellParent(targets, { type: 'chatapp:resize', height });
  };
  const observer = new ResizeObserver(measure);
  for (const node of [ui.bar, ui.thread, ui.composer]) observer.observe(node);
}

/**
 * Start the chat afresh after its session ended for good. In a WordPress
 * page the identity comes from an SSO token in the frame's address, minted
 * when the page was rendered and valid for minutes: reloading the frame
 * alone would make the user an anonymous visitor. So ask the parent page
 * to reload (the plugin's script does: a fresh page brings a fresh SSO);
 * a parent that does not answer that way gets the frame reloaded.
 */
export function reloadChat() {
  const targets = config.embed && window.parent !== window ? parentOrigins() : [];
  if (targets.length === 0) {
    window.location.reload();
    return;
  }
  tellParent(targets, { type: 'chatapp:reload' });
  // A parent that reloads takes this frame with it before this fires.
  setTimeout(() => window.location.reload(), PARENT_RELOAD_WAIT_MS);
}

let answerTargets = [];
// Set once a widget said it answers `chatapp:where`: [origin], else null.
let whereTarget = null;
let whereAsked = 0;
const whereWaiting = new Map();

/**
 * The address the host page shows now, as its widget tells it; null when
 * there is no such widget (then /embed?page_url= stands) or it is silent.
 */
export function hostPage() {
  if (!whereTarget) return Promise.resolve(null);
  const id = ++whereAsked;
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      whereWaiting.delete(id);
      resolve(null);
    }, WHERE_WAIT_MS);
    whereWaiting.set(id, (url) => {
      clearTimeout(timer);
      whereWaiting.delete(id);
      resolve(typeof url === 'string' ? url : null);
    });
    window.parent.postMessage({ type: 'chatapp:where', id }, whereTarget);
  });
}

/** Tell the parent (a widget) that an answer was written. */
export function tellAnswer({ turn_id, conversation_id }) {
  tellParent(answerTargets, { type: 'chatapp:answer', turn_id, conversation_id });
}

/** Wire the frame to its parent; returns {ready()} to call once the chat works. */
export function initEmbed(host) {
  if (!config.embed || window.parent === window) return null;
  document.documentElement.classList.add('is-framed');
  const targets = parentOrigins();
  if (targets.length === 0) return null;
  answerTargets = targets;
  reportHeight(targets);
  const closer = document.querySelector('[data-chatapp-close]');
  closer?.addEventListener('click', () => tellParent(targets, { type: 'chatapp:close' }));
  // Esc that stopped nothing (the composer handles Stop first) closes a
  // widget's panel; a parent that is no widget ignores the message.
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && !event.defaultPrevented) tellParent(targets, { type: 'chatapp:close' });
  });
  window.addEventListener('message', (event) => {
    if (event.source !== window.parent || !targets.includes(event.origin)) return;
    const data = event.data;
    if (data?.type === 'chatapp:focus') ui.input.focus({ preventScroll: true });
    else if (data?.type === 'chatapp:setup') {
      // A widget around us has no title bar of its own: this bar closes it.
      if (closer && data.close === true) closer.hidden = false;
      if (data.page === true) whereTarget = event.origin;
      host.setup({ greeting: data.greeting, suggestions: data.suggestions });
    } else if (data?.type === 'chatapp:page') whereWaiting.get(data.id)?.(data.url);
    else if (data?.type === 'chatapp:prefill') host.prefill(data.text);
    else if (data?.type === 'chatapp:ask') host.ask(data.text);
  });
  return { ready: () => tellParent(targets, { type: 'chatapp:ready' }) };
}
