/*
 * Reading a turn's events: the POST's own event stream, EventSource, resume,
 * polling, and the page's signals that a connection may have died. Nothing
 * here touches the page's DOM.
 */

import { readEventStream } from './eventstream.js';

// SPEC: the server sends `start` at once, so this much silence on a first
// connection means a buffering proxy sits in between and only polling works.
const FIRST_EVENT_TIMEOUT_MS = 4000;
// When the page comes back (tab visible, focus), a stream that has been
// silent this long may be a dead connection nobody noticed: open a new one.
// Resuming is cheap and repeats nothing, so err on the side of reconnecting.
const STALE_MS = 3000;
const RETRY_FIRST_MS = 250;
const RETRY_MAX_MS = 8000;
// Failed attempts (while the browser believes it is online) before giving up.
const MAX_FAILURES = 30;
const STREAM_EVENTS = ['start', 'status', 'reasoning', 'sources', 'delta', 'usage', 'error', 'done'];

const backoff = (failures) => Math.min(RETRY_FIRST_MS * 2 ** Math.max(0, failures - 1), RETRY_MAX_MS);
const offline = () => navigator.onLine === false;

// -- the page's own signals that a connection may have died -------------------

const liveStreams = new Set();
let signalsWired = false;

function wireWakeSignals() {
  if (signalsWired) return;
  signalsWired = true;
  const wakeAll = (reason) => {
    for (const stream of [...liveStreams]) stream.wake(reason);
  };
  // The network is back: every connection made before is suspect.
  window.addEventListener('online', () => wakeAll('network'));
  // Back from the back/forward cache: the page's connections were cut.
  window.addEventListener('pageshow', (event) => wakeAll(event.persisted ? 'network' : 'shown'));
  // A phone brought the tab back; iOS may have dropped its stream silently.
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') wakeAll('shown');
  });
  window.addEventListener('focus', () => wakeAll('shown'));
}

/**
 * Read one turn's events: the POST's own event stream (`body`) or
 * EventSource first, resumed with EventSource by this class itself (at once,
 * and whenever the page says the network or the tab is back) with
 * `last_event_id`; polling when nothing arrives in time. Every event is
 * applied at most once, in id order. Without a URL yet (the POST's stream
 * ended before its `start` event), `describe()` asks for it.
 */
export class TurnStream {
  constructor(url, { onEvent, onConnection, onLost, body = null, describe = null }) {
    this.url = url;
    this.describe = describe;
    this.bodyReader = null;
    this.onEvent = onEvent;
    this.onConnection = onConnection;
    this.onLost = onLost;
    this.lastId = 0;
    this.closed = false;
    this.mode = 'stream';
    this.source = null;
    this.failures = 0;
    this.silenceTimer = 0;
    this.retryTimer = 0;
    this.lastActivity = performance.now();
    this.pollAbort = null;
    this.wakeUp = null;
    this.hurry = false;
    liveStreams.add(this);
    wireWakeSignals();
    if (body) this.readBody(body);
    else this.connect();
  }

  /** Apply the events of the POST's own response; resume when it ends early. */
  async readBody(response) {
    const reader = response.body.getReader();
    this.bodyReader = reader;
    this.onConnection(true);
    this.silenceTimer = setTimeout(() => this.startPolling(), FIRST_EVENT_TIMEOUT_MS);
    try {
      await readEventStream(reader, (type, id, data) => {
        if (this.bodyReader === reader) this.receive(type, id, data);
      });
    } catch {
      // Dropped mid-answer: resumed below, from the last event applied.
    }
    if (this.bodyReader !== reader) return; // closed, or replaced by a resume
    this.bodyReader = null;
    this.onConnection(false);
    this.scheduleReconnect();
  }

  dropBody() {
    const reader = this.bodyReader;
    this.bodyReader = null;
    reader?.cancel().catch(() => {});
  }

  /** Ask for the turn's stream URL; false when that failed (retried later). */
  async learnUrl() {
    if (!this.describe) return false;
    try {
      this.url = (await this.describe()) || this.url;
    } catch {
      // Not reachable now: the caller retries.
    }
    return Boolean(this.url) && !this.closed;
  }

  /** The stream URL, resuming after the last event applied. */
  address(extra = {}) {
    const url = new URL(this.url, document.baseURI);
    if (this.lastId > 0 || extra.poll) url.searchParams.set('last_event_id', String(this.lastId));
    if (extra.poll) url.searchParams.set('poll', '1');
    return url.href;
  }

  connect() {
    if (this.closed) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = 0;
    this.dropBody();
    this.source?.close();
    if (!this.url) {
      this.learnUrl().then((known) => (known ? this.connect() : this.scheduleReconnect()));
      return;
    }
    const source = new EventSource(this.address());
    this.source = source;
    this.lastActivity = performance.now();
    if (this.lastId === 0) {
      clearTimeout(this.silenceTimer);
      this.silenceTimer = setTimeout(() => this.startPolling(), FIRST_EVENT_TIMEOUT_MS);
    }
    source.addEventListener('open', () => {
      if (source !== this.source) return;
      this.lastActivity = performance.now();
      this.onConnection(true);
    });
    for (const type of STREAM_EVENTS) {
      source.addEventListener(type, (event) => {
        if (source !== this.source) return; // a connection already replaced
        // The server's `error` event and a connection error share a name;
        // only the server's is a MessageEvent with data.
        if (type === 'error' && !(event instanceof MessageEvent)) {
          this.broken(source);
          return;
        }
        this.receive(type, event.lastEventId, event.data);
      });
    }
  }

  /** The connection failed or dropped: reconnect ourselves, never wait on the browser. */
  broken(source) {
    if (this.closed || this.mode !== 'stream') return;
    const refused = source.readyState === EventSource.CLOSED;
    source.close();
    this.source = null;
    this.onConnection(false);
    if (refused) {
      // The server answered, but not with a stream (204/403/404, a proxy's
      // 502): one poll tells which, without guessing.
      this.probe();
    } else {
      this.scheduleReconnect();
    }
  }

  scheduleReconnect() {
    if (this.closed || this.retryTimer || this.mode !== 'stream') return;
    // Offline, attempts cannot succeed: the `online` signal reconnects.
    if (offline()) return;
    this.failures += 1;
    if (this.failures > MAX_FAILURES) {
      this.lose();
      return;
    }
    const delay = this.failures === 1 ? 0 : backoff(this.failures - 1);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = 0;
      this.connect();
    }, delay);
  }

  async probe() {
    const outcome = await this.pollOnce();
    if (this.closed) return;
    if (outcome === 'gone') this.lose();
    else if (outcome === 'ok') this.connect(); // still running: stream again
    else this.scheduleReconnect();
  }

  /** The page is back or the network returned: make sure the answer flows. */
  wake(reason) {
    if (this.closed) return;
    const quiet = performance.now() - this.lastActivity > STALE_MS;
    if (this.mode === 'poll') {
      // A long poll on a dead connection would hang for up to 25 s.
      if (reason === 'network' || quiet) {
        this.hurry = true;
        this.pollAbort?.abort();
        this.wakeUp?.();
      }
      return;
    }
    if (reason === 'network' || (!this.source && !this.bodyReader) || quiet) {
      this.failures = 0;
      this.connect();
    }
  }

  receive(type, rawId, rawData) {
    if (this.closed) return;
    const id = Number.parseInt(rawId, 10);
    if (Number.isFinite(id)) {
      // Belt and braces: the server resumes after last_event_id, but an
      // event at or below the last one seen is never applied twice.
      if (id <= this.lastId) return;
      this.lastId = id;
    }
    clearTimeout(this.silenceTimer);
    this.lastActivity = performance.now();
    this.failures = 0;
    let data = rawData;
    if (typeof rawData === 'string') {
      try {
        data = JSON.parse(rawData);
      } catch {
        data = {};
      }
    }
    if (type === 'start' && typeof data?.stream_url === 'string') this.url = data.stream_url;
    this.onConnection(true);
    this.onEvent(type, data ?? {});
    if (type === 'done') this.close();
  }

  async startPolling() {
    if (this.closed || this.mode === 'poll') return;
    this.mode = 'poll';
    clearTimeout(this.silenceTimer);
    clearTimeout(this.retryTimer);
    this.dropBody();
    this.source?.close();
    this.source = null;
    let failures = 0;
    while (!this.closed) {
      const outcome = await this.pollOnce();
      if (this.closed) return;
      if (outcome === 'gone') {
        this.lose();
        return;
      }
      if (outcome === 'ok' || this.hurry) {
        this.hurry = false;
        if (outcome === 'ok') failures = 0;
        continue;
      }
      this.onConnection(false);
      if (!offline()) failures += 1;
      if (failures > MAX_FAILURES) {
        this.lose();
        return;
      }
      await this.pause(offline() ? Infinity : backoff(failures));
      this.hurry = false;
    }
  }

  /** One poll: 'ok' (events applied, or none yet), 'gone', or 'failed'. */
  async pollOnce() {
    if (!this.url && !(await this.learnUrl())) return 'failed';
    const controller = new AbortController();
    this.pollAbort = controller;
    try {
      const response = await fetch(this.address({ poll: true }), {
        cache: 'no-store',
        headers: { Accept: 'application/json' },
        signal: controller.signal,
      });
      if (response.status === 204) return 'gone'; // done was delivered already
      if (!response.ok) return response.status >= 500 || response.status === 429 ? 'failed' : 'gone';
      const body = await response.json();
      if (this.closed) return 'ok';
      this.lastActivity = performance.now();
      for (const event of body.events ?? []) this.receive(event.event, String(event.id), event.data);
      return body.done && !this.closed ? 'gone' : 'ok';
    } catch {
      return 'failed'; // offline, reset, aborted or not JSON: retried
    } finally {
      if (this.pollAbort === controller) this.pollAbort = null;
    }
  }

  /** Wait `ms` (Infinity: until woken). */
  pause(ms) {
    return new Promise((resolve) => {
      let timer = 0;
      const done = () => {
        clearTimeout(timer);
        if (this.wakeUp === done) this.wakeUp = null;
        resolve();
      };
      if (Number.isFinite(ms)) timer = setTimeout(done, ms);
      this.wakeUp = done;
    });
  }

  lose() {
    this.close();
    this.onLost();
  }

  close() {
    this.closed = true;
    liveStreams.delete(this);
    clearTimeout(this.silenceTimer);
    clearTimeout(this.retryTimer);
    this.dropBody();
    this.source?.close();
    this.source = null;
    this.pollAbort?.abort();
    this.wakeUp?.();
  }
}
