/*
 * chatapp browser client for / and /embed.
 *
 * One file, no framework, no build step. The page is served with a strict
 * CSP (no inline script or style), so everything here builds DOM nodes and
 * never writes a style attribute; model output goes through marked and then
 * DOMPurify before it touches the page.
 *
 * Layout of this file: settings, small helpers, storage, the HTTP API, the
 * Markdown renderer, message views, the event stream reader, the turn
 * lifecycle, the composer, restore-after-reload, the embed resize reporter,
 * and start-up.
 */
(() => {
  'use strict';

  // ---------------------------------------------------------------- settings

  // SPEC: the server sends `start` at once, so this much silence means a
  // buffering proxy sits in between and only polling will get through.
  const FIRST_EVENT_TIMEOUT_MS = 4000;
  // After Stop, the stream normally ends with done/cancelled within a second;
  // past this, end the turn locally so the composer can never stay locked.
  const CANCEL_GRACE_MS = 5000;
  const POLL_MAX_FAILURES = 30;
  const COUNTER_FROM = 0.8; // show the length counter from 80 % of the limit
  const FOLLOW_SLACK_PX = 96; // "at the bottom" for auto-scroll purposes
  const STORAGE_KEY = 'chatapp:v1';
  const STREAM_EVENTS = ['start', 'delta', 'usage', 'error', 'done'];
  const SVG_NS = 'http://www.w3.org/2000/svg';

  const readMeta = (name) =>
    document.querySelector(`meta[name="${name}"]`)?.getAttribute('content') ?? '';

  const config = Object.freeze({
    api: readMeta('chatapp-api') || '/api',
    embed: readMeta('chatapp-embed') === 'true',
    embedOrigins: normaliseOrigins(readMeta('chatapp-embed-origins')),
    maxChars: Number.parseInt(readMeta('chatapp-max-message-chars'), 10) || 4000,
    // An SSO page speaks for a WordPress user: its conversations belong to
    // that user, never to a token remembered from an anonymous visit.
    sso: new URLSearchParams(window.location.search).has('sso'),
  });

  const ui = {
    scroller: document.querySelector('[data-chatapp-scroller]'),
    thread: document.querySelector('[data-chatapp-thread]'),
    welcome: document.querySelector('[data-chatapp-welcome]'),
    log: document.querySelector('[data-chatapp-log]'),
    bar: document.querySelector('.bar'),
    composer: document.querySelector('[data-chatapp-composer]'),
    form: document.querySelector('[data-chatapp-form]'),
    input: document.querySelector('[data-chatapp-form] textarea[name="message"]'),
    tokenField: document.querySelector('[data-chatapp-form] input[name="token"]'),
    send: document.querySelector('[data-chatapp-form] [type="submit"]'),
    stop: document.querySelector('[data-chatapp-stop]'),
    counter: document.querySelector('[data-chatapp-counter]'),
    newChat: document.querySelector('[data-chatapp-new]'),
    status: document.querySelector('[data-chatapp-status]'),
  };

  // ----------------------------------------------------------------- helpers

  function normaliseOrigins(value) {
    const origins = [];
    for (const item of value.split(/\s+/)) {
      try {
        if (item) origins.push(new URL(item).origin);
      } catch {
        // A malformed entry can never match a real parent; skip it.
      }
    }
    return origins;
  }

  /** Build an element: h('p', {class: 'x', text: 'hi'}, child, …). */
  function h(tag, attrs = {}, ...children) {
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
  };

  function icon(name) {
    const svg = document.createElementNS(SVG_NS, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('focusable', 'false');
    svg.setAttribute('class', `icon icon--${name}`);
    svg.innerHTML = ICONS[name]; // constant markup from this file
    return svg;
  }

  const HTML_ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
  const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]);

  // The server counts code points (Python len), not UTF-16 units.
  const codePoints = (text) => {
    let count = 0;
    for (const _ of text) count += 1;
    return count;
  };

  const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

  function newKey() {
    if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
    // randomUUID needs a secure context; plain-http installs still get a v4 UUID.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  /** Retry-After is either delta-seconds or an HTTP date. */
  function parseRetryAfter(value) {
    if (!value) return null;
    if (/^\d+$/.test(value.trim())) return Number(value.trim());
    const at = Date.parse(value);
    return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - Date.now()) / 1000));
  }

  const plural = (n, unit) => `${n} ${unit}${n === 1 ? '' : 's'}`;

  function formatDuration(totalSeconds) {
    const s = Math.max(0, Math.ceil(totalSeconds));
    if (s < 60) return plural(s, 'second');
    if (s < 3600) {
      const rest = s % 60;
      return plural(Math.floor(s / 60), 'minute') + (rest ? ` ${plural(rest, 'second')}` : '');
    }
    const minutes = Math.floor((s % 3600) / 60);
    return plural(Math.floor(s / 3600), 'hour') + (minutes ? ` ${plural(minutes, 'minute')}` : '');
  }

  /** Say something to screen readers without putting it in the log. */
  function announce(text) {
    ui.status.textContent = '';
    // A new text node after a tick, so the same words are announced twice.
    setTimeout(() => { ui.status.textContent = text; }, 60);
  }

  // ----------------------------------------------------------------- storage

  // localStorage may be missing or throw (blocked third-party storage in an
  // iframe, private modes): the chat then works, it just forgets on reload.
  const storage = {
    load() {
      try {
        const raw = window.localStorage.getItem(STORAGE_KEY);
        const value = raw ? JSON.parse(raw) : null;
        return value && typeof value === 'object' ? value : null;
      } catch {
        return null;
      }
    },
    save(value) {
      try {
        window.localStorage.setItem(STORAGE_KEY, JSON.stringify(value));
      } catch {
        // see above
      }
    },
    clear() {
      try {
        window.localStorage.removeItem(STORAGE_KEY);
      } catch {
        // see above
      }
    },
  };

  // --------------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, code, message, retryAfter = null) {
      super(message || code);
      this.name = 'ApiError';
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  async function callApi(url, { method = 'GET', json, headers = {} } = {}) {
    const init = {
      method,
      headers: { Accept: 'application/json', ...headers },
      cache: 'no-store',
      credentials: 'same-origin',
    };
    if (json !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(json);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch {
      throw new ApiError(0, 'network', 'The request did not reach the server.');
    }
    const body = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) {
      const error = body?.error ?? {};
      throw new ApiError(
        response.status,
        error.code || `http_${response.status}`,
        error.message || response.statusText,
        parseRetryAfter(response.headers.get('Retry-After')),
      );
    }
    return body;
  }

  const session = {
    token: readMeta('chatapp-token'),

    use(token) {
      this.token = token;
      if (ui.tokenField) ui.tokenField.value = token;
    },

    async refresh() {
      const body = await callApi(`${config.api}/token`, { method: 'POST', json: { token: this.token } });
      this.use(body.token);
      conversation.save();
    },

    /** Run request(token); if the page token has expired, refresh it and run once more. */
    async authorised(request) {
      try {
        return await request(this.token);
      } catch (err) {
        if (!(err instanceof ApiError) || err.code !== 'token_expired') throw err;
        await this.refresh();
        return request(this.token);
      }
    },
  };

  // The conversation this page continues, remembered across reloads together
  // with the token that owns it: an anonymous visitor gets a new identity on
  // every page view, so the new page token alone could not read it back.
  const conversation = {
    id: null,
    pending: null, // the turn being answered: {text, stream_url, cancel_url}

    set(id) {
      this.id = id;
      this.save();
    },

    save() {
      if (!this.id) return;
      storage.save({
        conversationId: this.id,
        token: session.token,
        sso: config.sso,
        pending: this.pending,
      });
    },

    forget() {
      this.id = null;
      this.pending = null;
      storage.clear();
    },
  };

  // ---------------------------------------------------------------- markdown

  const renderMarkdown = createRenderer();

  function createRenderer() {
    const { marked, DOMPurify } = window;
    if (!marked?.Marked || typeof DOMPurify !== 'function') {
      // Without the vendored libraries the answers still show, as plain text.
      return (text, target) => {
        target.textContent = text;
        target.classList.add('is-plain');
      };
    }
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
    const policy = {
      USE_PROFILES: { html: true },
      FORBID_TAGS: ['style', 'img', 'picture', 'video', 'audio', 'source', 'form', 'button', 'select', 'textarea'],
      // style would break the CSP; id/name could clobber our own DOM lookups.
      FORBID_ATTR: ['style', 'id', 'name'],
    };
    return (text, target) => {
      target.innerHTML = purifier.sanitize(parser.parse(text), policy);
    };
  }

  // ------------------------------------------------------------------- views

  const thread = {
    atBottom() {
      const { scrollTop, scrollHeight, clientHeight } = ui.scroller;
      return scrollHeight - scrollTop - clientHeight < FOLLOW_SLACK_PX;
    },

    scrollToEnd() {
      ui.scroller.scrollTop = ui.scroller.scrollHeight;
    },

    /** Run a DOM change, keeping the view pinned to the end if it was there. */
    follow(change) {
      const pinned = this.atBottom();
      change();
      if (pinned) this.scrollToEnd();
    },

    add(node) {
      this.follow(() => {
        ui.log.append(node);
        this.update();
      });
      return node;
    },

    remove(node) {
      node?.remove();
      this.update();
    },

    clear() {
      ui.log.replaceChildren();
      this.update();
    },

    update() {
      ui.welcome.hidden = ui.log.childElementCount > 0;
    },
  };

  function userMessage(text) {
    return h(
      'article',
      { class: 'msg msg--user', 'data-role': 'user', 'aria-label': 'You' },
      h('div', { class: 'msg__body', text }),
    );
  }

  async function copyText(text) {
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
  function copyButton(label, getText, visibleLabel = '') {
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
      button.replaceChildren(...face(copied ? 'check' : 'alert', copied ? 'Copied' : 'Failed'));
      button.classList.toggle('is-done', copied);
      announce(copied ? 'Copied to the clipboard.' : 'Copying failed; select the text and copy it by hand.');
      timer = setTimeout(() => {
        button.replaceChildren(...face('copy', visibleLabel));
        button.classList.remove('is-done');
      }, 1800);
    });
    return button;
  }

  /**
   * Put each code block under a small bar naming its language. The copy
   * button joins once the answer is complete; the bar is there from the start
   * so the layout does not jump when the answer finishes.
   */
  function enhanceCodeBlocks(body, { withCopy }) {
    for (const pre of body.querySelectorAll('pre')) {
      const code = pre.querySelector('code') ?? pre;
      const language = /(?:^|\s)language-([\w+#.-]+)/.exec(code.className)?.[1] ?? '';
      const bar = h(
        'div',
        { class: 'codeblock__bar' },
        h('span', { class: 'codeblock__lang', text: language || 'code' }),
        withCopy ? copyButton('Copy code', () => code.textContent, 'Copy') : null,
      );
      const wrapper = h('div', { class: 'codeblock' }, bar);
      pre.replaceWith(wrapper);
      wrapper.append(pre);
    }
  }

  class AssistantMessage {
    constructor({ text = '', finished = false } = {}) {
      this.text = text;
      this.frame = 0;
      this.offline = false;
      this.body = h('div', { class: 'msg__body markdown' });
      this.note = h('p', { class: 'msg__note', hidden: true });
      this.copy = copyButton('Copy answer', () => this.text);
      this.copy.hidden = true;
      this.node = h(
        'article',
        { class: 'msg msg--assistant', 'data-role': 'assistant', 'aria-label': 'Assistant' },
        this.body,
        h('div', { class: 'msg__foot' }, this.note, this.copy),
      );
      if (finished) {
        this.finish('done');
        return;
      }
      this.thinking = h(
        'div',
        { class: 'thinking' },
        h('span', { class: 'thinking__dots', 'aria-hidden': 'true' }, h('i'), h('i'), h('i')),
        h('span', { text: 'Thinking…' }),
      );
      this.node.prepend(this.thinking);
      this.node.dataset.state = 'thinking';
      this.node.setAttribute('aria-busy', 'true');
      // Hidden from screen readers while it grows: the polite log then reads
      // the finished answer once instead of every token (see finish()).
      this.body.setAttribute('aria-hidden', 'true');
    }

    append(text) {
      if (!text) return;
      if (this.thinking) {
        this.thinking.remove();
        this.thinking = null;
        this.node.dataset.state = 'streaming';
      }
      this.text += text;
      // Re-render at most once a frame, however fast the deltas come.
      if (!this.frame) {
        this.frame = requestAnimationFrame(() => {
          this.frame = 0;
          thread.follow(() => {
            renderMarkdown(this.text, this.body);
            enhanceCodeBlocks(this.body, { withCopy: false });
          });
        });
      }
    }

    setNote(text, kind = '') {
      this.note.textContent = text;
      this.note.hidden = !text;
      this.note.className = kind ? `msg__note msg__note--${kind}` : 'msg__note';
    }

    /** Show a transient connection note while the turn is still running. */
    setConnection(online) {
      const running = this.node.dataset.state === 'thinking' || this.node.dataset.state === 'streaming';
      if (!running || this.offline === !online) return;
      this.offline = !online;
      if (!online) this.setNote('Reconnecting…', 'muted');
      else if (this.note.textContent === 'Reconnecting…') this.setNote('');
    }

    finish(state, note = '', noteKind = '') {
      cancelAnimationFrame(this.frame);
      this.frame = 0;
      this.thinking?.remove();
      this.thinking = null;
      // A fresh body node is an *addition* to the polite log, so screen
      // readers hear the whole answer once, now that it is complete.
      const body = h('div', { class: 'msg__body markdown' });
      renderMarkdown(this.text, body);
      enhanceCodeBlocks(body, { withCopy: true });
      thread.follow(() => {
        this.body.replaceWith(body);
        this.body = body;
        this.node.dataset.state = state;
        this.node.removeAttribute('aria-busy');
        this.setNote(note, noteKind);
        this.copy.hidden = !this.text;
      });
    }
  }

  /**
   * A refusal or failure in the log (data-role="error"), with an optional
   * action button and an optional live countdown from Retry-After.
   */
  class Notice {
    constructor({ text, waitSeconds = null, action = null, kind = 'error' }) {
      this.text = text; // string, or (secondsLeft) => string while counting down
      this.textNode = h('p', { class: 'notice__text' });
      this.button = action
        ? h('button', { type: 'button', class: 'btn btn--small' }, icon(action.icon), h('span', { text: action.label }))
        : null;
      this.button?.addEventListener('click', () => {
      action.run(this);
      // The button just left the page with its notice; keep the keyboard
      // where the conversation continues.
      if (!this.node.isConnected) ui.input.focus({ preventScroll: true });
    });
      this.node = h(
        'article',
        { class: `msg notice notice--${kind}`, 'data-role': 'error', 'aria-label': kind === 'info' ? 'Note' : 'Problem' },
        icon(waitSeconds ? 'clock' : kind === 'info' ? 'info' : 'alert'),
        h('div', { class: 'notice__main' }, this.textNode, this.button),
      );
      if (waitSeconds) this.countDown(waitSeconds);
      else this.show(0);
    }

    show(secondsLeft) {
      this.textNode.textContent = typeof this.text === 'function' ? this.text(secondsLeft) : this.text;
      if (this.button) this.button.disabled = secondsLeft > 0;
    }

    countDown(seconds) {
      const deadline = Date.now() + seconds * 1000;
      const secondsLeft = () => Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
      this.show(secondsLeft());
      const timer = setInterval(() => {
        const left = secondsLeft();
        this.show(left);
        // Stop at zero, or once the notice has left the page (retry, New chat).
        if (left === 0 || !this.node.isConnected) clearInterval(timer);
      }, 500);
    }

    remove() {
      thread.remove(this.node);
    }
  }

  // ------------------------------------------------------------ event stream

  /**
   * Read one turn's events: EventSource first (it resumes by itself with
   * Last-Event-ID), polling when nothing arrives in time or the stream is
   * refused. Every event is applied at most once, in id order.
   */
  class TurnStream {
    constructor(url, { onEvent, onConnection, onLost }) {
      this.url = url;
      this.onEvent = onEvent;
      this.onConnection = onConnection;
      this.onLost = onLost;
      this.lastId = 0;
      this.closed = false;
      this.polling = false;
      this.source = null;
      this.silenceTimer = 0;
      this.listen();
    }

    listen() {
      const source = new EventSource(this.url);
      this.source = source;
      this.silenceTimer = setTimeout(() => this.poll(), FIRST_EVENT_TIMEOUT_MS);
      for (const type of STREAM_EVENTS) {
        source.addEventListener(type, (event) => {
          // The server's `error` event and a connection error share a name;
          // only the server's is a MessageEvent with data.
          if (type === 'error' && !(event instanceof MessageEvent)) {
            this.connectionTrouble();
            return;
          }
          this.receive(type, event.lastEventId, event.data);
        });
      }
    }

    connectionTrouble() {
      if (this.closed || this.polling) return;
      if (this.source.readyState === EventSource.CLOSED) {
        // The browser gave up (the server answered 204/403/404 or not a
        // stream); one poll tells us which without guessing.
        this.poll();
      } else {
        // EventSource reconnects by itself, sending Last-Event-ID.
        this.onConnection(false);
      }
    }

    receive(type, rawId, rawData) {
      if (this.closed) return;
      const id = Number.parseInt(rawId, 10);
      if (Number.isFinite(id)) {
        // Belt and braces: the server resumes after Last-Event-ID, but an
        // event at or below the last one seen is never applied twice.
        if (id <= this.lastId) return;
        this.lastId = id;
      }
      clearTimeout(this.silenceTimer);
      let data = rawData;
      if (typeof rawData === 'string') {
        try {
          data = JSON.parse(rawData);
        } catch {
          data = {};
        }
      }
      this.onConnection(true);
      this.onEvent(type, data ?? {});
      if (type === 'done') this.close();
    }

    async poll() {
      if (this.closed || this.polling) return;
      this.polling = true;
      clearTimeout(this.silenceTimer);
      this.source?.close();
      let failures = 0;
      while (!this.closed) {
        const url = new URL(this.url, window.location.href);
        url.searchParams.set('poll', '1');
        url.searchParams.set('last_event_id', String(this.lastId));
        let response = null;
        try {
          response = await fetch(url, { cache: 'no-store', headers: { Accept: 'application/json' } });
        } catch {
          response = null; // offline or reset: retried below
        }
        if (this.closed) return;
        const body = response?.ok && response.status !== 204 ? await response.json().catch(() => null) : null;
        if (body) {
          failures = 0;
          for (const event of body.events ?? []) this.receive(event.event, String(event.id), event.data);
          if (body.done && !this.closed) this.lose();
          continue;
        }
        if (response && response.status < 500 && response.status !== 429) {
          this.lose(); // 204 / 403 / 404: this turn can no longer be read
          return;
        }
        failures += 1;
        if (failures > POLL_MAX_FAILURES) {
          this.lose();
          return;
        }
        this.onConnection(false);
        await sleep(Math.min(1000 * 2 ** (failures - 1), 10000));
      }
    }

    lose() {
      this.close();
      this.onLost();
    }

    close() {
      this.closed = true;
      clearTimeout(this.silenceTimer);
      this.source?.close();
    }
  }

  // ---------------------------------------------------------- turn lifecycle

  let activeTurn = null;

  const STREAM_ERRORS = {
    provider_rate_limited: 'The AI service is receiving too many requests right now.',
    provider_timeout: 'The AI service took too long to answer.',
    provider_unavailable: 'The AI service is unavailable right now.',
    provider_error: 'The AI service could not answer this message.',
    internal: 'Something went wrong while writing the answer.',
    lost: 'The connection to the answer was lost.',
  };

  /** Turn an API refusal into words for people, and what they can do next. */
  function describeRefusal(err) {
    const wait = err.retryAfter;
    const later = (what) => (left) =>
      left > 0 ? `${what} Try again in ${formatDuration(left)}.` : `${what} You can try again now.`;
    switch (err.code) {
      case 'rate_limited':
        return {
          text: (left) => (left > 0
            ? `You've sent a lot of messages in a short time. You can send again in ${formatDuration(left)}.`
            : "You've sent a lot of messages in a short time. You can send again now."),
          wait,
          retry: true,
        };
      case 'quota_exceeded':
        return {
          text: (left) => (left > 0
            ? `You've used today's chat allowance. It renews in ${formatDuration(left)}.`
            : "Today's chat allowance has renewed. You can try again now."),
          wait,
          retry: true,
        };
      case 'too_many_streams':
        return { text: later('Several answers are already being written for you, perhaps in other tabs.'), wait, retry: true };
      case 'over_capacity':
        return { text: later('The chat is very busy right now.'), wait, retry: true };
      case 'message_too_long':
        return { text: `That message is longer than ${config.maxChars.toLocaleString()} characters. Shorten it and send it again.`, editable: true };
      case 'payload_too_large':
        return { text: 'That message is too large to send. Shorten it and send it again.', editable: true };
      case 'invalid_input':
        return { text: "That message couldn't be sent. Check it and send it again.", editable: true };
      case 'invalid_token':
      case 'token_expired':
        return { text: 'This chat session has expired. Reload the page to continue.', reload: true };
      case 'network':
        return { text: "Couldn't reach the chat service. Check your connection and try again.", retry: true };
      default:
        if (err.status === 429 || err.status >= 500) {
          return { text: later('The chat service had a problem.'), wait, retry: true };
        }
        return { text: `The message couldn't be sent (${err.message}).`, retry: true };
    }
  }

  /** Send `text` as a new turn; `userNode`/`key` are reused when retrying. */
  async function startTurn(text, { userNode = null, key = newKey() } = {}) {
    if (activeTurn) return;
    const turn = {
      text,
      key,
      userNode: userNode ?? thread.add(userMessage(text)),
      answer: new AssistantMessage(),
      conversationId: conversation.id,
      ids: null,
      stream: null,
      error: null,
      stopRequested: false,
      ended: false,
      cancelTimer: 0,
    };
    activeTurn = turn;
    thread.add(turn.answer.node);
    thread.scrollToEnd();
    composer.setBusy(true);

    let accepted;
    try {
      accepted = await session.authorised((token) => callApi(`${config.api}/chat`, {
        method: 'POST',
        headers: { 'Idempotency-Key': key },
        json: turn.conversationId
          ? { message: text, token, conversation_id: turn.conversationId }
          : { message: text, token },
      }));
    } catch (err) {
      if (activeTurn !== turn) return; // "New chat" was pressed meanwhile
      activeTurn = null;
      thread.remove(turn.answer.node);
      composer.setBusy(false);
      if (!turn.stopRequested) refuse(turn, err);
      return;
    }

    if (activeTurn !== turn) {
      // Abandoned by "New chat" while the request was in flight.
      cancelQuietly(accepted.cancel_url);
      return;
    }
    turn.ids = accepted;
    conversation.pending = { text, stream_url: accepted.stream_url, cancel_url: accepted.cancel_url };
    conversation.set(accepted.conversation_id);
    if (turn.stopRequested) requestCancel(turn);
    readTurn(turn);
  }

  function readTurn(turn) {
    turn.stream = new TurnStream(turn.ids.stream_url, {
      onEvent: (type, data) => onTurnEvent(turn, type, data),
      onConnection: (online) => turn.answer.setConnection(online),
      onLost: () => endTurn(turn, 'lost'),
    });
  }

  function onTurnEvent(turn, type, data) {
    if (turn.ended) return;
    switch (type) {
      case 'start':
        if (typeof data.conversation_id === 'string' && data.conversation_id !== conversation.id) {
          conversation.set(data.conversation_id);
        }
        break;
      case 'delta':
        if (typeof data.text === 'string') turn.answer.append(data.text);
        break;
      case 'error':
        turn.error = data;
        break;
      case 'done':
        endTurn(turn, data.finish_reason || 'stop');
        break;
      default:
        break; // usage: nothing to show
    }
  }

  function endTurn(turn, reason) {
    if (turn.ended) return;
    turn.ended = true;
    clearTimeout(turn.cancelTimer);
    turn.stream?.close();
    const { answer } = turn;

    if (reason === 'cancelled' || (turn.stopRequested && reason === 'lost')) {
      answer.finish('stopped', 'Stopped', 'stopped');
      announce('Stopped.');
    } else if (reason === 'error' || reason === 'lost') {
      const error = reason === 'lost' ? { code: 'lost', retryable: true } : (turn.error ?? { code: 'internal', retryable: true });
      if (answer.text) answer.finish('error', 'The answer was interrupted.', 'error');
      else thread.remove(answer.node);
      failStream(turn, error);
    } else if (reason === 'length') {
      answer.finish('done', 'The answer was cut off at its length limit.', 'muted');
    } else if (reason === 'content_filter') {
      answer.finish('done', "The AI service's content filter stopped this answer.", 'muted');
    } else {
      answer.finish('done');
    }

    if (activeTurn === turn) {
      activeTurn = null;
      composer.setBusy(false);
    }
    conversation.pending = null;
    conversation.save();
  }

  function refuse(turn, err) {
    if (err.code === 'not_found' && turn.conversationId) {
      // The conversation expired on the server: carry on in a new one.
      conversation.forget();
      thread.add(new Notice({
        text: 'The earlier conversation has expired, so this message starts a new one.',
        kind: 'info',
      }).node);
      startTurn(turn.text, { userNode: turn.userNode });
      return;
    }
    const refusal = describeRefusal(err);
    if (refusal.editable) {
      // Nothing was accepted: hand the text back for editing.
      thread.remove(turn.userNode);
      composer.restore(turn.text);
    }
    let action = null;
    if (refusal.retry) {
      action = {
        label: 'Try again',
        icon: 'retry',
        run: (notice) => {
          notice.remove();
          // The same Idempotency-Key: if the first attempt did reach the
          // server after all, the retry returns that turn, not a second one.
          startTurn(turn.text, { userNode: turn.userNode, key: turn.key });
        },
      };
    } else if (refusal.reload) {
      action = { label: 'Reload', icon: 'retry', run: () => window.location.reload() };
    }
    thread.add(new Notice({ text: refusal.text, waitSeconds: refusal.wait, action }).node);
  }

  function failStream(turn, error) {
    const text = `${STREAM_ERRORS[error.code] ?? STREAM_ERRORS.internal}${error.retryable === false ? '' : ' Please try again.'}`;
    const action = error.retryable === false ? null : {
      label: 'Try again',
      icon: 'retry',
      run: (notice) => {
        if (activeTurn) return;
        notice.remove();
        thread.remove(turn.answer.node);
        startTurn(turn.text, { userNode: turn.userNode }); // a new turn, so a new key
      },
    };
    thread.add(new Notice({ text, action }).node);
  }

  function stop() {
    const turn = activeTurn;
    if (!turn || turn.stopRequested) return;
    turn.stopRequested = true;
    turn.answer.setNote('Stopping…', 'muted');
    if (turn.ids) requestCancel(turn);
    // else: startTurn cancels as soon as the turn is accepted
  }

  async function requestCancel(turn) {
    turn.cancelTimer = setTimeout(() => endTurn(turn, 'cancelled'), CANCEL_GRACE_MS);
    try {
      await session.authorised((token) => callApi(turn.ids.cancel_url, { method: 'POST', json: { token } }));
    } catch {
      // The grace timer ends the turn locally.
    }
  }

  function cancelQuietly(cancelUrl) {
    session.authorised((token) => callApi(cancelUrl, { method: 'POST', json: { token } })).catch(() => {});
  }

  function newChat() {
    const turn = activeTurn;
    if (turn) {
      activeTurn = null;
      turn.ended = true;
      turn.stream?.close();
      clearTimeout(turn.cancelTimer);
      if (turn.ids) cancelQuietly(turn.ids.cancel_url);
      composer.setBusy(false);
    }
    conversation.forget();
    thread.clear();
    ui.input.focus();
    announce('New chat started.');
  }

  // ---------------------------------------------------------------- composer

  const composer = {
    busy: false,
    restoring: false,

    init() {
      ui.form.addEventListener('submit', (event) => {
        event.preventDefault();
        this.submit();
      });
      ui.input.addEventListener('keydown', (event) => {
        // isComposing / 229: Enter that confirms an IME composition is not "send".
        if (event.key === 'Enter' && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
          event.preventDefault();
          this.submit();
        } else if (event.key === 'Escape' && activeTurn) {
          event.preventDefault();
          stop();
        }
      });
      ui.input.addEventListener('input', () => this.update());
      ui.stop.addEventListener('click', stop);
      if (!CSS.supports('field-sizing', 'content')) {
        // Grow with the text where CSS cannot (CSSOM writes are CSP-safe).
        ui.input.addEventListener('input', () => {
          ui.input.style.height = 'auto';
          ui.input.style.height = `${ui.input.scrollHeight}px`;
        });
      }
      this.update();
    },

    text() {
      return ui.input.value.trim();
    },

    canSend() {
      const length = codePoints(this.text());
      return !this.busy && !this.restoring && length > 0 && length <= config.maxChars;
    },

    submit() {
      if (!this.canSend()) return;
      const text = this.text();
      ui.input.value = '';
      this.update();
      startTurn(text);
    },

    /** Put refused text back, unless the person has already typed something new. */
    restore(text) {
      if (!ui.input.value.trim()) {
        ui.input.value = text;
        this.update();
      }
      ui.input.focus();
    },

    setBusy(busy) {
      const controlHadFocus = document.activeElement === ui.send || document.activeElement === ui.stop;
      this.busy = busy;
      ui.send.hidden = busy;
      ui.stop.hidden = !busy;
      this.update();
      // The focused button just disappeared; keep the keyboard in the text box.
      if (controlHadFocus) ui.input.focus({ preventScroll: true });
    },

    setRestoring(restoring) {
      this.restoring = restoring;
      this.update();
    },

    update() {
      const length = codePoints(this.text());
      const over = length > config.maxChars;
      ui.send.disabled = !this.canSend();
      if (over) ui.input.setAttribute('aria-invalid', 'true');
      else ui.input.removeAttribute('aria-invalid');
      const showCounter = length >= config.maxChars * COUNTER_FROM;
      ui.counter.hidden = !showCounter;
      ui.counter.classList.toggle('is-over', over);
      if (showCounter) {
        const left = config.maxChars - length;
        ui.counter.textContent = over
          ? `${(-left).toLocaleString()} characters too long`
          : `${left.toLocaleString()} characters left`;
      }
    },
  };

  // ------------------------------------------------------ restore on reload

  async function restoreConversation() {
    const saved = storage.load();
    if (typeof saved?.conversationId !== 'string') return;
    composer.setRestoring(true);
    ui.log.setAttribute('aria-busy', 'true');
    try {
      const history = await loadHistory(saved);
      if (!history) {
        conversation.forget();
        return;
      }
      const nodes = [];
      for (const message of history.messages ?? []) {
        if (message.role === 'user') nodes.push(userMessage(message.content));
        else if (message.role === 'assistant') nodes.push(new AssistantMessage({ text: message.content, finished: true }).node);
      }
      ui.log.append(...nodes);
      thread.update();
      thread.scrollToEnd();
      conversation.set(saved.conversationId);
      resumePending(saved.pending, history.messages ?? []);
    } catch {
      // Kept in storage: a later reload may well succeed.
      thread.add(new Notice({
        text: "Your earlier messages couldn't be loaded. New messages start a new conversation.",
        kind: 'info',
      }).node);
    } finally {
      ui.log.removeAttribute('aria-busy');
      composer.setRestoring(false);
    }
  }

  /** Fetch the saved conversation with whichever token owns it, or null. */
  async function loadHistory(saved) {
    const pageToken = session.token;
    const candidates = [];
    // Reuse a remembered token only between anonymous pages, so a shared
    // computer never shows one WordPress user's chat to the next person.
    if (!config.sso && saved.sso === false && typeof saved.token === 'string' && saved.token !== pageToken) {
      candidates.push({ token: saved.token, renew: true });
    }
    candidates.push({ token: pageToken, renew: false });
    const fetchHistory = () => callApi(
      `${config.api}/conversations/${encodeURIComponent(saved.conversationId)}`,
      { headers: { 'X-Chat-Token': session.token } },
    );
    for (const { token, renew } of candidates) {
      session.use(token);
      try {
        try {
          return await fetchHistory();
        } catch (err) {
          // A remembered token may be past its lifetime (the server then
          // answers 404): renew it, same identity, and ask once more.
          if (!renew || !(err instanceof ApiError) || err.status !== 404) throw err;
          await session.refresh();
          return await fetchHistory();
        }
      } catch (err) {
        if (!(err instanceof ApiError) || (err.status !== 403 && err.status !== 404)) {
          session.use(pageToken);
          throw err;
        }
      }
    }
    session.use(pageToken);
    return null;
  }

  /** If the page was reloaded mid-answer, read that turn again from its first event. */
  function resumePending(pending, messages) {
    if (typeof pending?.stream_url !== 'string' || typeof pending.text !== 'string') return;
    const last = messages.at(-1);
    const previous = messages.at(-2);
    if (last?.role === 'assistant' && previous?.role === 'user' && previous.content === pending.text) {
      conversation.pending = null; // it finished while the page was away
      conversation.save();
      return;
    }
    const userNode = last?.role === 'user' && last.content === pending.text
      ? ui.log.lastElementChild
      : thread.add(userMessage(pending.text));
    const turn = {
      text: pending.text,
      key: newKey(),
      userNode,
      answer: new AssistantMessage(),
      conversationId: conversation.id,
      ids: { stream_url: pending.stream_url, cancel_url: pending.cancel_url },
      stream: null,
      error: null,
      stopRequested: false,
      ended: false,
      cancelTimer: 0,
    };
    activeTurn = turn;
    conversation.pending = pending;
    thread.add(turn.answer.node);
    thread.scrollToEnd();
    composer.setBusy(true);
    readTurn(turn);
  }

  // ------------------------------------------------------------ embed resize

  /** Inside an iframe, tell an allowed parent how tall the chat wants to be. */
  function reportHeightToParent() {
    if (!config.embed || window.parent === window) return;
    document.documentElement.classList.add('is-framed');
    let targets = config.embedOrigins;
    // Chrome and Safari name the parent's origin: post only there (and only
    // if allowed), which also spares the console a mismatch error per origin.
    const ancestors = window.location.ancestorOrigins;
    if (ancestors && ancestors.length > 0) targets = targets.filter((origin) => origin === ancestors[0]);
    if (targets.length === 0 || typeof ResizeObserver !== 'function') return;

    let reported = 0;
    const measure = () => {
      // The content's own height, not the viewport's: the scroller stretches
      // to fill the frame, so measuring it would never let the frame shrink.
      const height = Math.ceil(ui.bar.offsetHeight + ui.thread.offsetHeight + ui.composer.offsetHeight);
      if (height === reported) return;
      reported = height;
      for (const origin of targets) {
        window.parent.postMessage({ type: 'chatapp:resize', height }, origin);
      }
    };
    const observer = new ResizeObserver(measure);
    for (const node of [ui.bar, ui.thread, ui.composer]) observer.observe(node);
  }

  // ---------------------------------------------------------------- start-up

  composer.init();
  ui.newChat.addEventListener('click', newChat);
  reportHeightToParent();
  restoreConversation().finally(() => {
    // A hook for themes and tests: the page is wired up and any earlier
    // conversation is back on screen.
    ui.form.dataset.ready = 'true';
  });
})();
