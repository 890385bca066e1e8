/*
 * Talking to the service: JSON calls, starting a turn in one request, the
 * page token. Reading a turn's events is turnstream.js. Nothing here touches
 * the page's DOM.
 */

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
  if (!response.ok) throw refusal(response, body);
  return body;
}

function refusal(response, body) {
  const error = body?.error ?? {};
  return new ApiError(
    response.status,
    error.code || `http_${response.status}`,
    error.message || response.statusText,
    parseRetryAfter(response.headers.get('Retry-After')),
  );
}

/**
 * Start a turn in one request: POST asking for its events. Resolves to
 * `{ response }` when the answer is the turn's event stream (200), or
 * `{ accepted }` with the body of a 201 (a server that answered JSON);
 * a refusal, always JSON, throws an ApiError.
 */
export async function postForEvents(url, { headers = {}, json, onResponse = null }) {
  let response;
  try {
    response = await fetch(url, {
      method: 'POST',
      headers: { Accept: 'text/event-stream', 'Content-Type': 'application/json', ...headers },
      body: JSON.stringify(json),
      cache: 'no-store',
      credentials: 'same-origin',
    });
  } catch {
    throw new ApiError(0, 'network', 'The request did not reach the server.');
  }
  onResponse?.(response);
  const type = response.headers.get('Content-Type') ?? '';
  if (response.status === 200 && response.body && type.startsWith('text/event-stream')) return { response };
  const body = await response.json().catch(() => null);
  if (!response.ok || !body) throw refusal(response, body);
  return { accepted: body };
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
