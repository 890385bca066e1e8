/* The conversation kept across reloads (its id, the turn being answered, the token that owns it), and the turn running now. */
import { config } from './config.js';
import { ui } from './thread.js';
import { Session } from './transport.js';

const STORAGE_KEY = 'chatapp:v1';

/** The turn running on this page (set by turns.js; by New chat and Delete when they end it), read live by the rest. */
export let activeTurn = null;

export function setActiveTurn(turn) {
  activeTurn = turn;
}

// Told when the conversation's id is set or forgotten (app.js: Download and Delete show or hide).
const changeListeners = [];

// ----------------------------------------------------------------- storage

// localStorage may be missing or throw (blocked third-party storage in an
// iframe, private modes): the chat then works, it just forgets on reload.
export const storage = {
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

export const session = new Session(config.api, config.token, (token) => {
  if (ui.tokenField) ui.tokenField.value = token;
  conversation.save();
});

// The conversation this page continues, remembered across reloads together
// with the token that owns it: an anonymous visitor gets a new identity on
// every page view, so the new page token alone could not read it back.
export const conversation = {
  id: null,
  pending: null, // the turn being answered: {text, stream_url, cancel_url}

  set(id) {
    this.id = id;
    this.save();
    this.changed();
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
    this.changed();
  },

  onChange(listener) {
    changeListeners.push(listener);
  },

  changed() {
    for (const listener of changeListeners) listener();
  },
};
