/*
 * The chat page: turns (send, stream, stop, retry, regenerate, edit), the
 * composer, the conversation kept across reloads (and New chat's undo), and
 * start-up. Entry module of / and /embed.
 */
import { config } from './config.js';
import { announce, codePoints, formatDuration, h, icon } from './dom.js';
import { initEmbed, reloadChat } from './embed.js';
import { AssistantMessage, Notice, thread, ui, userMessage } from './messages.js';
import { ApiError, Session, TurnStream, callApi, newKey } from './transport.js';
import { botCheck } from './altcha.js';
import { showAllowance } from './ratelimit.js';
import { onAnswering, onReasoning, onStatus } from './thinking.js';
import { readSources, withPageUrl } from './sources.js';

// After Stop, the stream normally ends with done/cancelled within a second;
// past this, end the turn locally so the composer can never stay locked.
const CANCEL_GRACE_MS = 5000;
const COUNTER_FROM = 0.8; // show the length counter from 80 % of the limit
const UNDO_MS = 10_000; // how long New chat can be undone
const STORAGE_KEY = 'chatapp:v1';

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

const session = new Session(config.api, config.token, (token) => {
  if (ui.tokenField) ui.tokenField.value = token;
  conversation.save();
});

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

// ---------------------------------------------------------- turn lifecycle

let activeTurn = null;

const STREAM_ERRORS = {
  provider_rate_limited: 'The AI service is receiving too many requests right now.',
  provider_timeout: 'The AI service took too long to answer.',
  provider_unavailable: 'The AI service is unavailable right now.',
  provider_error: 'The AI service could not answer this message.',
  internal: 'Something went wrong while writing the answer.',
  content_blocked: "Sorry, this message can't be answered here: it may go against this site's content rules. Please rephrase it.",
  moderation_unavailable: "Your message couldn't be checked just now, so it wasn't sent to the assistant.",
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
    case 'site_budget_exhausted':
      return {
        text: (left) => (left > 0
          ? `This chat has reached its spending limit for now, so it can't answer new questions. It opens again in ${formatDuration(left)}.`
          : 'This chat is open again. You can try again now.'),
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
    case 'challenge_required':
      return { text: 'The page is still making sure you are not a bot. Send your message again in a moment.', retry: true };
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

/** Make `text` the running turn, with an answer waiting under its message. */
function beginTurn({ text, key, userNode, ids = null }) {
  const turn = {
    text,
    key,
    userNode,
    answer: new AssistantMessage(),
    conversationId: conversation.id,
    ids,
    stream: null,
    error: null,
    stopRequested: false,
    ended: false,
    cancelTimer: 0,
  };
  activeTurn = turn;
  // Older "Try again" buttons would put their answer out of order now.
  Notice.retireAll();
  followUps.withdraw();
  undo.drop();
  thread.add(turn.answer.node);
  thread.scrollToEnd();
  composer.setBusy(true);
  return turn;
}

/** Send `text` as a new turn; `userNode`/`key` are reused when retrying. */
async function startTurn(text, { userNode = null, key = newKey() } = {}) {
  if (activeTurn) return;
  const turn = beginTurn({ text, key, userNode: userNode ?? thread.add(userMessage(text)) });

  let accepted;
  let altcha = await botCheck.solution(); // ready by now unless typed in a flash
  const post = () => session.authorised((token) => callApi(`${config.api}/chat`, {
    method: 'POST',
    headers: altcha ? { 'Idempotency-Key': key, 'X-Altcha': altcha } : { 'Idempotency-Key': key },
    onResponse: (response) => { if (response.status === 201) showAllowance(response.headers); },
    json: withPageUrl(turn.conversationId
      ? { message: text, token, conversation_id: turn.conversationId }
      : { message: text, token }),
  }));
  try {
    try {
      accepted = await post();
    } catch (err) {
      // Verified, we thought; but the bot check vouches for one address and
      // an hour: after a move (or a long stay) solve again, then send.
      if (err.code !== 'challenge_required' || altcha) throw err;
      botCheck.required();
      altcha = await botCheck.solution();
      if (!altcha) throw err;
      accepted = await post();
    }
  } catch (err) {
    if (altcha) botCheck.spent({ verified: false });
    if (activeTurn !== turn) return; // "New chat" was pressed meanwhile
    activeTurn = null;
    thread.remove(turn.answer.node);
    composer.setBusy(false);
    if (!turn.stopRequested) refuse(turn, err);
    return;
  }
  botCheck.spent({ verified: true }); // accepted: no other solution is asked
  if (accepted.token) session.use(accepted.token); // now marked as verified

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
    case 'status':
      onStatus(turn.answer, data);
      break;
    case 'reasoning':
      onReasoning(turn.answer, data);
      break;
    case 'delta':
      if (turn.answer.thinking) onAnswering(turn.answer); // the first words
      if (typeof data.text === 'string') turn.answer.append(data.text);
      break;
    case 'sources':
      turn.answer.sources = readSources(data.sources);
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
  onAnswering(answer);
  // Not busy any more before the outcome lands, so the log announces it.
  if (activeTurn === turn) thread.setBusy(false);

  if (reason === 'cancelled' || (turn.stopRequested && reason === 'lost')) {
    // Said once, by the log, when the note appears.
    answer.finish('stopped', 'Stopped', 'stopped');
  } else if (reason === 'error' || reason === 'lost' || turn.error?.code === 'content_blocked') {
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
    followUps.offer();
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
    action = { label: 'Reload', icon: 'retry', run: reloadChat };
  }
  thread.add(new Notice({ text: refusal.text, waitSeconds: refusal.wait, action }).node);
  if (refusal.wait > 0) composer.wait(refusal.wait);
  followUps.offer();
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

/** Forget the conversation (cancelling an answer being written); undoable for a while. */
function newChat() {
  const turn = activeTurn;
  if (turn) {
    activeTurn = null;
    turn.ended = true;
    turn.stream?.close();
    clearTimeout(turn.cancelTimer);
    if (turn.ids) cancelQuietly(turn.ids.cancel_url);
    turn.answer.finish('stopped', 'Stopped', 'stopped');
    conversation.pending = null;
    composer.setBusy(false);
  }
  const earlier = { nodes: [...ui.log.childNodes], id: conversation.id };
  conversation.forget();
  followUps.withdraw();
  thread.clear();
  ui.input.focus();
  if (earlier.nodes.length > 0) undo.offer(earlier);
  announce(earlier.nodes.length > 0 ? 'New chat started. Undo is available for a few seconds.' : 'New chat started.');
}

/** "Undo" after New chat: the earlier conversation back, as it was. */
const undo = {
  earlier: null,
  timer: 0,

  init() {
    ui.undoButton.addEventListener('click', () => this.restore());
  },

  offer(earlier) {
    this.earlier = earlier;
    ui.undo.hidden = false;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.drop(), UNDO_MS);
  },

  drop() {
    const hadFocus = ui.undo.contains(document.activeElement);
    clearTimeout(this.timer);
    this.earlier = null;
    ui.undo.hidden = true;
    if (hadFocus) ui.input.focus({ preventScroll: true });
  },

  restore() {
    const { earlier } = this;
    if (!earlier || activeTurn) return;
    ui.log.replaceChildren(...earlier.nodes);
    thread.update();
    thread.scrollToEnd();
    if (earlier.id) conversation.set(earlier.id);
    this.drop();
    followUps.offer();
    ui.input.focus({ preventScroll: true });
    announce('The earlier conversation is back.');
  },
};

// ------------------------------------------------------ regenerate and edit

/**
 * Regenerate (on the last answer) and Edit (on the last user message). Each
 * sends a new turn through POST /api/chat, like any message: the server
 * keeps history by appending, so the new question and answer appear below
 * the earlier ones, in the order the server stores them.
 */
const followUps = {
  regenerate: h(
    'button',
    { type: 'button', class: 'btn btn--tiny', 'data-chatapp-regenerate': true, title: 'Ask the last question again' },
    icon('retry'),
    h('span', { text: 'Regenerate' }),
  ),
  edit: h(
    'button',
    { type: 'button', class: 'btn btn--tiny', 'data-chatapp-edit': true, 'aria-label': 'Edit your last message' },
    icon('edit'),
    h('span', { text: 'Edit' }),
  ),

  init() {
    this.regenerate.addEventListener('click', () => this.runRegenerate());
    this.edit.addEventListener('click', () => this.runEdit());
  },

  lastUser() {
    return [...ui.log.querySelectorAll(':scope > [data-role="user"]')].at(-1) ?? null;
  },

  /** The last answer, if it answers the last user message. */
  lastAnswer() {
    const answer = [...ui.log.querySelectorAll(':scope > [data-role="assistant"]')].at(-1);
    const user = this.lastUser();
    if (!answer || !user) return null;
    const after = user.compareDocumentPosition(answer) & Node.DOCUMENT_POSITION_FOLLOWING;
    return after && answer.chatappMessage?.over ? answer : null;
  },

  withdraw() {
    const hadFocus = document.activeElement === this.regenerate || document.activeElement === this.edit;
    this.regenerate.remove();
    this.edit.remove();
    if (hadFocus) ui.input.focus({ preventScroll: true });
  },

  offer() {
    if (activeTurn) return;
    const user = this.lastUser();
    const answer = this.lastAnswer();
    if (answer) answer.querySelector('[data-chatapp-actions]').prepend(this.regenerate);
    else this.regenerate.remove();
    if (user) user.querySelector('[data-chatapp-actions]').append(this.edit);
    else this.edit.remove();
  },

  questionText() {
    return this.lastUser()?.querySelector('.msg__body')?.textContent ?? '';
  },

  runRegenerate() {
    const text = this.questionText();
    if (!text || activeTurn || !composer.canSendNow()) return;
    startTurn(text); // a new turn with a new Idempotency-Key
  },

  runEdit() {
    const text = this.questionText();
    if (!text) return;
    ui.input.value = text;
    composer.update();
    ui.input.focus();
    ui.input.setSelectionRange(text.length, text.length);
    announce('Your last message is in the message box. Change it and send it again.');
  },
};

// ---------------------------------------------------------------- composer

const composer = {
  busy: false,
  restoring: false,
  waitUntil: 0, // a refusal's Retry-After: no sending before this (ms epoch)
  waitTimer: 0,
  level: 'none', // the length counter's last announced threshold

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
      }
    });
    // Esc stops an answer from anywhere on the page (before embed.js's
    // listener, which closes a widget only when Esc stopped nothing).
    document.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && activeTurn && !event.defaultPrevented && !event.isComposing) {
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

  /** Nothing stops a send but the text itself. */
  canSendNow() {
    return !this.busy && !this.restoring && !this.waitUntil;
  },

  canSend() {
    const length = codePoints(this.text());
    return this.canSendNow() && length > 0 && length <= config.maxChars;
  },

  /** A refusal asked to wait: Send shows the wait, and says once when it is over. */
  wait(seconds) {
    this.waitUntil = Math.max(this.waitUntil, Date.now() + seconds * 1000);
    clearInterval(this.waitTimer);
    const tick = () => {
      const left = Math.max(0, Math.ceil((this.waitUntil - Date.now()) / 1000));
      if (left === 0) {
        clearInterval(this.waitTimer);
        this.waitUntil = 0;
        ui.send.classList.remove('is-waiting');
        ui.sendWait.hidden = true;
        ui.send.setAttribute('aria-label', 'Send message');
        ui.send.title = 'Send (Enter)';
        this.update();
        announce('You can send messages again.');
        return;
      }
      const short = left < 60 ? `${left}s` : left < 3600 ? `${Math.ceil(left / 60)}m` : `${Math.ceil(left / 3600)}h`;
      ui.sendWait.textContent = short;
      ui.sendWait.hidden = false;
      ui.send.classList.add('is-waiting');
      // Disabled, so never focused: the changing name is not read out.
      ui.send.setAttribute('aria-label', `Send message, possible again in ${formatDuration(left)}`);
      ui.send.title = `You can send again in ${formatDuration(left)}`;
      this.update();
    };
    tick();
    this.waitTimer = setInterval(tick, 500);
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
    thread.setBusy(busy);
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
    // The counter is announced when it crosses a threshold, not per key.
    followUps.regenerate.disabled = !this.canSendNow();
    const level = over ? 'over' : showCounter ? 'near' : 'none';
    if (level !== this.level) {
      if (level === 'near') announce(`${ui.counter.textContent}.`);
      else if (level === 'over') announce(`${ui.counter.textContent}. Shorten the message to send it.`);
      this.level = level;
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
    followUps.offer();
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
  conversation.pending = pending;
  const turn = beginTurn({
    text: pending.text,
    key: newKey(),
    userNode,
    ids: { stream_url: pending.stream_url, cancel_url: pending.cancel_url },
  });
  readTurn(turn);
}


// ---------------------------------------------------------------- start-up

thread.init();
composer.init();
undo.init();
followUps.init();
ui.newChat.addEventListener('click', newChat);
initEmbed();
restoreConversation().finally(() => {
  // A hook for themes and tests: the page is wired up and any earlier
  // conversation is back on screen.
  ui.form.dataset.ready = 'true';
});
