/*
 * chatapp widget: <script src="https://chat.example.com/widget.js" defer></script>
 *
 * Adds one <chatapp-widget> element whose open shadow root holds a launcher
 * button and a panel with an iframe of chatapp's /embed (created on first
 * open). Options are data-* attributes on the script tag: data-title,
 * data-position ("right" or "left"), data-open, data-lang, data-greeting and
 * data-suggestions ("|"-separated starter questions). The host page drives
 * it through the element: open(), close(), toggle(), prefill(text) and
 * ask(text); it dispatches chatapp:open, chatapp:close and chatapp:answer
 * (detail {turn_id, conversation_id}) on itself. Messages to and from the
 * frame name chatapp's origin and check it. No dependencies, no globals
 * (the custom element is the only name it registers), no inline style: the
 * styles are a constructed stylesheet, so a host page whose CSP allows only
 * chatapp's origin for scripts and frames works as it is. The host page's
 * origin must be in CHATAPP_EMBED_ORIGINS for /embed to be framed there.
 */
(() => {
  'use strict';

  const script = document.currentScript;
  // One widget per page, however many script tags load this file.
  if (!script || !window.customElements || customElements.get('chatapp-widget')) return;

  // The words of every language, filled in from chatapp's catalogues when
  // this script is served.
  const WORDS = {};
  const ALIASES = { no: 'nb', nn: 'nb' };
  // The chat's language: data-lang, else the host page's own <html lang>.
  const lang = (script.dataset.lang || document.documentElement.lang || '').trim();
  const primary = lang.split(/[-_]/)[0].toLowerCase();
  const ours = ALIASES[primary] || primary;
  const words = WORDS[ours] || WORDS.en || { title: 'Chat', close: 'Close chat', close_title: 'Close (Esc)' };
  const RTL = new Set(['ar']);

  const embedUrl = new URL('embed', script.src);
  // The page the visitor reads goes to the chat as page_url (site knowledge
  // favours it), when it is a web page of a sensible length.
  // Read again at each message the chat sends (`chatapp:where`): in a
  // single-page app the address changes while the frame stays.
  const hostPage = () => {
    const page = window.location.href.split('#')[0];
    return /^https?:/.test(page) && page.length <= 2048 ? page : '';
  };
  const withHostPage = (url) => {
    const page = hostPage();
    const framed = new URL(url.href);
    if (page) framed.searchParams.set('page_url', page);
    return framed;
  };
  if (lang) embedUrl.searchParams.set('lang', lang);
  const chatOrigin = embedUrl.origin;
  const title = (script.dataset.title || '').trim() || words.title;
  const greeting = (script.dataset.greeting || '').trim();
  const suggestions = (script.dataset.suggestions || '').split('|').map((q) => q.trim()).filter(Boolean);
  const position = script.dataset.position === 'left' ? 'left' : 'right';
  const openAtFirst = 'open' in script.dataset && script.dataset.open !== 'false';
  // Per tab and site: open stays open across the site's page navigations.
  const STORAGE_KEY = `chatapp-widget:${chatOrigin}:open`;
  const PHONE = '(max-width: 600px)';

  const remembered = () => {
    try {
      const value = window.sessionStorage.getItem(STORAGE_KEY);
      return value === null ? null : value === '1';
    } catch {
      return null; // storage blocked: fall back to data-open
    }
  };
  const remember = (open) => {
    try {
      window.sessionStorage.setItem(STORAGE_KEY, open ? '1' : '0');
    } catch {
      // storage blocked: the widget simply forgets
    }
  };

  // :host's !important declarations win over any the host page writes for
  // this element; nothing else of the page's CSS reaches inside.
  const CSS = `
    :host {
      all: initial !important;
      display: block !important;
      position: static !important;
      visibility: visible !important;
      opacity: 1 !important;
    }
    .root {
      --bg: #ffffff; --fg: #14161b; --muted: #5b6170; --line: #d9dce3;
      --accent: #4f46e5; --accent-fg: #ffffff;
      font: 16px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
      color: var(--fg);
    }
    @media (prefers-color-scheme: dark) {
      .root { --bg: #14161b; --fg: #eceef2; --muted: #a3a9b6; --line: #343945;
              --accent: #8b8cff; --accent-fg: #0d1117; }
    }
    .launcher, .panel { position: fixed; z-index: 2147483646; box-sizing: border-box; }
    .launcher {
      bottom: max(20px, env(safe-area-inset-bottom)); width: 56px; height: 56px;
      display: grid; place-items: center; padding: 0; margin: 0;
      border: 0; border-radius: 50%; cursor: pointer;
      background: var(--accent); color: var(--accent-fg);
      box-shadow: 0 6px 20px rgb(0 0 0 / 0.25);
    }
    .launcher svg { width: 26px; height: 26px; }
    .launcher:focus-visible, .close:focus-visible {
      outline: 3px solid var(--accent); outline-offset: 3px;
    }
    .panel {
      bottom: 88px; width: 400px; height: min(640px, calc(100vh - 108px));
      display: flex; flex-direction: column; overflow: hidden;
      background: var(--bg); border: 1px solid var(--line); border-radius: 14px;
      box-shadow: 0 12px 40px rgb(0 0 0 / 0.3);
    }
    .panel[hidden] { display: none; }
    .root.has-bar .head { display: none; }
    [data-position="right"] .launcher, [data-position="right"] .panel { right: 20px; }
    [data-position="left"] .launcher, [data-position="left"] .panel { left: 20px; }
    .head {
      flex: none; display: flex; align-items: center; justify-content: space-between;
      gap: 8px; padding: 6px 6px 6px 16px; border-bottom: 1px solid var(--line);
    }
    .title { margin: 0; font-size: 15px; font-weight: 600; }
    .close {
      width: 40px; height: 40px; display: grid; place-items: center; padding: 0;
      border: 0; border-radius: 8px; background: transparent; color: var(--muted);
      cursor: pointer;
    }
    .close:hover { color: var(--fg); }
    .close svg { width: 20px; height: 20px; }
    iframe { flex: 1 1 auto; width: 100%; min-height: 0; border: 0; display: block; }
    @media ${PHONE} {
      .panel {
        inset: 0; width: 100%; height: 100%; height: 100dvh;
        border: 0; border-radius: 0;
      }
      [data-position] .panel { left: 0; right: 0; }
      .root.is-open .launcher { display: none; }
    }
    @media (prefers-reduced-motion: no-preference) {
      .launcher { transition: transform 0.15s ease; }
      .launcher:hover { transform: scale(1.06); }
    }
  `;

  const SVG_NS = 'http://www.w3.org/2000/svg';
  const ICONS = {
    chat: 'M4 5.5A2.5 2.5 0 0 1 6.5 3h11A2.5 2.5 0 0 1 20 5.5v8a2.5 2.5 0 0 1-2.5 2.5H10l-4.2 3.6c-.65.56-1.8.1-1.8-.76V5.5Z',
    close: 'M6 6l12 12M18 6 6 18',
  };

  function icon(name) {
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    const path = document.createElementNS(SVG_NS, 'path');
    path.setAttribute('d', ICONS[name]);
    if (name === 'chat') path.setAttribute('fill', 'currentColor');
    else {
      path.setAttribute('fill', 'none');
      path.setAttribute('stroke', 'currentColor');
      path.setAttribute('stroke-width', '2');
      path.setAttribute('stroke-linecap', 'round');
    }
    svg.append(path);
    return svg;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
    node.append(...children);
    return node;
  }

  function styles(root) {
    if ('adoptedStyleSheets' in root && typeof CSSStyleSheet.prototype.replaceSync === 'function') {
      // Constructed stylesheets are not subject to the host page's CSP.
      const sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS);
      root.adoptedStyleSheets = [sheet];
    } else {
      root.append(el('style', {}, CSS));
    }
  }

  class ChatappWidget extends HTMLElement {
    connectedCallback() {
      if (this.shadowRoot) return;
      const root = this.attachShadow({ mode: 'open' });
      styles(root);
      this.launcher = el(
        'button',
        {
          type: 'button',
          class: 'launcher',
          'data-chatapp-launcher': '',
          'aria-label': title,
          title,
          'aria-expanded': 'false',
          'aria-controls': 'chatapp-panel',
        },
        icon('chat'),
      );
      this.closer = el('button', { type: 'button', class: 'close', 'aria-label': words.close, title: words.close_title }, icon('close'));
      this.panel = el(
        'section',
        { id: 'chatapp-panel', class: 'panel', role: 'dialog', 'aria-labelledby': 'chatapp-title', hidden: '' },
        el('div', { class: 'head' }, el('h2', { id: 'chatapp-title', class: 'title' }, title), this.closer),
      );
      this.frame = null;
      this.root = el(
        'div',
        { class: 'root', 'data-position': position, dir: RTL.has(ours) ? 'rtl' : 'ltr', lang: ours in WORDS ? ours : 'en' },
        this.panel,
        this.launcher,
      );
      this.outbox = []; // messages for the chat, sent once it says it is ready
      this.ready = false;
      root.append(this.root);

      this.launcher.addEventListener('click', () => (this.isOpen ? this.close() : this.open()));
      this.closer.addEventListener('click', () => this.close());
      root.addEventListener('keydown', (event) => {
        if (event.key === 'Escape' && this.isOpen) {
          event.preventDefault();
          this.close();
        }
      });
      window.addEventListener('message', (event) => {
        // Only chatapp's own frame speaks here: its origin, its window.
        if (event.origin !== chatOrigin || !this.frame || event.source !== this.frame.contentWindow) return;
        const data = event.data;
        if (data?.type === 'chatapp:close' && this.isOpen) this.close();
        else if (data?.type === 'chatapp:ready') this.chatReady();
        else if (data?.type === 'chatapp:where') this.post({ type: 'chatapp:page', id: data.id, url: hostPage() });
        else if (data?.type === 'chatapp:answer') {
          const detail = { turn_id: String(data.turn_id), conversation_id: String(data.conversation_id) };
          this.dispatchEvent(new CustomEvent('chatapp:answer', { detail }));
        }
      });
      const open = remembered() ?? openAtFirst;
      if (open) this.open({ focus: false });
    }

    get isOpen() {
      return Boolean(this.panel && !this.panel.hidden);
    }

    /** The chat in the frame is ready: set it up and send what waited. */
    chatReady() {
      this.ready = true;
      // The chat's own bar (with its close button) replaces this title bar.
      // page: this widget names its host page when the chat asks.
      this.post({ type: 'chatapp:setup', greeting, suggestions, close: true, page: true });
      this.root.classList.add('has-bar');
      for (const message of this.outbox.splice(0)) this.post(message);
      // A focus asked before the chat listened (it loads its words first).
      if (this.isOpen && this.wantsFocus) this.focusChat();
    }

    post(message) {
      this.frame?.contentWindow?.postMessage(message, chatOrigin);
    }

    /** Send to the chat now, or once it is ready. */
    tell(message) {
      if (this.ready) this.post(message);
      else this.outbox?.push(message); // none before the element is in the page
    }

    /** Open or close the panel. */
    toggle() {
      if (this.isOpen) this.close();
      else this.open();
    }

    /** Open the panel with `text` in the message box, not sent. */
    prefill(text) {
      this.open();
      this.tell({ type: 'chatapp:prefill', text: String(text ?? '') });
    }

    /** Open the panel and send `text` as the visitor's message. */
    ask(text) {
      const message = String(text ?? '').trim();
      this.open();
      if (message) this.tell({ type: 'chatapp:ask', text: message });
    }

    /** Open the panel, creating the chat frame the first time. */
    open({ focus = true } = {}) {
      if (!this.panel) return; // not in the page yet
      const wasOpen = this.isOpen;
      if (!this.frame) {
        this.frame = el('iframe', { src: withHostPage(embedUrl).href, title, allow: 'clipboard-write' });
        this.frame.addEventListener('load', () => {
          this.loaded = true;
          if (this.isOpen && this.wantsFocus) this.focusChat();
        });
        this.panel.append(this.frame);
      }
      this.panel.hidden = false;
      this.root.classList.add('is-open');
      this.launcher.setAttribute('aria-expanded', 'true');
      remember(true);
      this.wantsFocus = focus;
      if (focus) this.focusChat();
      if (!wasOpen) this.dispatchEvent(new CustomEvent('chatapp:open'));
    }

    focusChat() {
      this.frame.focus();
      if (!this.loaded) return; // the load handler comes back here
      // The chat puts the keyboard in its message box (from chatapp only).
      this.frame.contentWindow?.postMessage({ type: 'chatapp:focus' }, chatOrigin);
    }

    /** Close the panel and give the keyboard back to the launcher. */
    close() {
      if (!this.isOpen) return;
      this.panel.hidden = true;
      this.root.classList.remove('is-open');
      this.launcher.setAttribute('aria-expanded', 'false');
      this.wantsFocus = false;
      remember(false);
      this.launcher.focus();
      this.dispatchEvent(new CustomEvent('chatapp:close'));
    }
  }

  customElements.define('chatapp-widget', ChatappWidget);
  const mount = () => {
    if (!document.querySelector('chatapp-widget')) document.body.append(document.createElement('chatapp-widget'));
  };
  if (document.body) mount();
  else document.addEventListener('DOMContentLoaded', mount);
})();
