/*
 * The bot check (CHATAPP_BOT_CHECK=pow): fetch an ALTCHA challenge and solve
 * it in a Web Worker while the visitor types, so that the first message
 * carries the solution without anyone waiting. Once the server has verified
 * a solution, the page token it returns says so and no further one is asked,
 * until the server asks again (the visitor's address changed, or an hour
 * passed): then `required()` turns solving back on.
 */

import { config } from './config.js';

const WORKER_URL = new URL('./altcha-worker.js', import.meta.url);
// Challenges expire after five minutes; solve a fresh one a little before.
const FRESH_MS = 4 * 60 * 1000;

export class BotCheck {
  constructor(api, enabled) {
    this.api = api;
    this.configured = enabled;
    this.enabled = enabled;
    this.pending = null; // a promise of the base64 payload, or of null
    this.startedAt = 0;
    this.lastSolveMs = null;
  }

  /** Start solving now, if the check applies and no fresh solution is on its way. */
  prepare() {
    if (!this.enabled) return;
    if (this.pending && Date.now() - this.startedAt < FRESH_MS) return;
    this.startedAt = Date.now();
    this.pending = this.#solveOne();
  }

  /** The solution for the next POST (waiting for it if need be), or null. */
  async solution() {
    if (!this.enabled) return null;
    this.prepare();
    const payload = await this.pending;
    if (payload === null) this.pending = null; // failed: the next call tries anew
    return payload;
  }

  /** The server asked for a solution although we thought ourselves verified. */
  required() {
    this.enabled = this.configured;
    this.pending = null;
  }

  /** The last solution went with a POST: the server took it, or refused it. */
  spent({ verified }) {
    this.pending = null;
    if (verified) this.enabled = false;
    else this.prepare();
  }

  async #solveOne() {
    let challenge;
    try {
      const response = await fetch(`${this.api}/challenge`, { cache: 'no-store', credentials: 'same-origin' });
      if (!response.ok) return null;
      challenge = await response.json();
    } catch {
      return null; // the POST then says challenge_required, and we try again
    }
    const solving = performance.now();
    const number = await new Promise((resolve) => {
      const worker = new Worker(WORKER_URL);
      worker.onmessage = (event) => {
        worker.terminate();
        this.lastSolveMs = event.data.took;
        // For performance tools (and the tests): the solve, worker start included.
        performance.measure('chatapp:bot-check', { start: solving, detail: { hashMs: event.data.took } });
        resolve(event.data.number);
      };
      worker.onerror = () => {
        worker.terminate();
        resolve(null);
      };
      worker.postMessage({
        challenge: challenge.challenge,
        salt: challenge.salt,
        maxnumber: challenge.maxnumber,
      });
    });
    if (number === null || number === undefined) return null;
    return btoa(JSON.stringify({
      algorithm: challenge.algorithm,
      challenge: challenge.challenge,
      number,
      salt: challenge.salt,
      signature: challenge.signature,
    }));
  }
}

const readMeta = (name) => document.querySelector(`meta[name="${name}"]`)?.getAttribute('content');

/** The page's bot check: on when the service asks this page to solve one. */
export const botCheck = new BotCheck(config.api, readMeta('chatapp-bot-check') === 'pow');

// Solve while the visitor types: from the first touch of the message form.
const form = document.querySelector('[data-chatapp-form]');
if (botCheck.enabled && form) {
  const begin = () => botCheck.prepare();
  form.addEventListener('focusin', begin, { once: true });
  form.addEventListener('input', begin, { once: true });
  form.addEventListener('pointerdown', begin, { once: true });
}
