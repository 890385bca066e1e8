/*
 * Talking to the service: JSON calls, the page token, and reading a turn's
 * events (EventSource, resume, polling). Nothing here touches the page's DOM.
 */

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

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message || code);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** Retry-After is either delta-seconds or an HTTP date. */
export function parseRetryAfter(value) {
  if (!value) return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const at = Date.parse(value);
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - Date.now()) / 1000));
}

export function newKey() {
  if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  // randomUUID needs a secure context; plain-http installs still get a v4 UUID.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

const backoff = (failures) => Math.min(RETRY_FIRST_MS * 2 ** Math.max(0, failures - 1), RETRY_MAX_MS);
const offline = () => navigator.onLine === false;

export async function callApi(url, { method = 'GET', json, headers = {}, onResponse = null } = {}) {
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
  onResponse?.(response);
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

/** The page token: used for every call, renewed when it expires. */
export class Session {
  constructor(api, token, onChange = () => {}) {
    this.api = api;
    this.token = token;
    this.onChange = onChange;
  }

  use(token) {
    this.token = token;
    this.onChange(token);
  }

  async refresh() {
    const body = await callApi(`${this.api}/token`, { method: 'POST', json: { token: this.token } });
    this.use(body.token);
  }

  /** Run request(token); if the page token has expired, refresh it and run once more. */
  async authorised(request) {
    try {
      return await request(this.token);
    } catch (err) {
      if (!(err instanceof ApiError) || err.code !== 'token_expired') throw err;
      await this.refresh();
      return request(this.token);
    }
  }
}

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
 * Read one turn's events: EventSource first, resumed by this class itself
 * (at once, and whenever the page says the network or the tab is back) with
 * `last_event_id`; polling when nothing arrives in time. Every event is
 * applied at most once, in id order.
 */
export class TurnStream {
  constructor(url, { onEvent, onConnection, onLost }) {
    this.url = url;
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
    this.connect();
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
    this.source?.close();
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
    if (reason === 'network' || !this.source || quiet) {
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
    this.onConnection(true);
    this.onEvent(type, data ?? {});
    if (type === 'done') this.close();
  }

  async startPolling() {
    if (this.closed || this.mode === 'poll') return;
    this.mode = 'poll';
    clearTimeout(this.silenceTimer);
    clearTimeout(this.retryTimer);
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
    this.source?.close();
    this.source = null;
    this.pollAbort?.abort();
    this.wakeUp?.();
  }
}
