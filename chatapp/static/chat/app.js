/*
 * The chat page: turns (send, stream, stop, retry, regenerate, edit), the
 * composer, the conversation kept across reloads (and New chat's undo), and
 * start-up. Entry module of / and /embed.
 */
import { config } from './config.js';
import { announce, codePoints, h, icon } from './dom.js';
import { formatDuration, formatShortWait, t } from './i18n.js';
import { hostPage, initEmbed, reloadChat, tellAnswer } from './embed.js';
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
    dataControls.update();
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
    dataControls.update();
  },
};

// ---------------------------------------------------------- turn lifecycle

let activeTurn = null;

// Each stream error `code` worded in the visitor's language (the API's own
// English `message` is never shown).
const STREAM_ERRORS = new Set([
  'provider_rate_limited',
  'provider_timeout',
  'provider_unavailable',
  'provider_error',
  'internal',
  'content_blocked',
  'moderation_unavailable',
  'lost',
]);

/** Turn an API refusal into words for people, and what they can do next. */
function describeRefusal(err) {
  const wait = err.retryAfter;
  const time = (left) => formatDuration(left);
  const later = (key) => (left) =>
    (left > 0 ? t('error.try_in', { what: t(key), time: time(left) }) : t('error.try_now', { what: t(key) }));
  const counting = (waitKey, nowKey) => (left) => (left > 0 ? t(waitKey, { time: time(left) }) : t(nowKey));
  switch (err.code) {
    case 'rate_limited':
      return { text: counting('error.rate_limited_wait', 'error.rate_limited_now'), wait, retry: true };
    case 'quota_exceeded':
      return { text: counting('error.quota_wait', 'error.quota_now'), wait, retry: true };
    case 'site_budget_exhausted':
      return { text: counting('error.site_budget_wait', 'error.site_budget_now'), wait, retry: true };
    case 'too_many_streams':
      return { text: later('error.too_many_streams'), wait, retry: true };
    case 'over_capacity':
      return { text: later('error.over_capacity'), wait, retry: true };
    case 'message_too_long':
      return { text: t('error.message_too_long', { n: config.maxChars }), editable: true };
    case 'payload_too_large':
      return { text: t('error.payload_too_large'), editable: true };
    case 'invalid_input':
      return { text: t('error.invalid_input'), editable: true };
    case 'challenge_required':
      return { text: t('error.challenge_required'), retry: true };
    case 'invalid_token':
    case 'token_expired':
      return { text: t('error.session_expired'), reload: true };
    case 'network':
      return { text: t('error.network'), retry: true };
    default:
      if (err.status === 429 || err.status >= 500) {
        return { text: later('error.service_problem'), wait, retry: true };
      }
      return { text: t('error.not_sent'), retry: true };
  }
}

/** Make `text` the running turn, with an answer waiting under its message. */
function beginTurn({ text, key, userNode, ids = null, replaceLast = false }) {
  const turn = {
    text,
    key,
    replaceLast,
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
  composer.editing = null;
  undo.drop();
  thread.add(turn.answer.node);
  thread.scrollToEnd();
  composer.setBusy(true);
  return turn;
}

/**
 * Send `text` as a new turn; `userNode`/`key` are reused when retrying.
 * `replaceLast` makes it replace the conversation's last exchange on the
 * server (Regenerate, Edit, and "Try again" after a failed answer).
 */
async function startTurn(text, { userNode = null, key = newKey(), replaceLast = false } = {}) {
  if (activeTurn) return;
  const turn = beginTurn({ text, key, userNode: userNode ?? thread.add(userMessage(text)), replaceLast });

  let accepted;
  let altcha = await botCheck.solution(); // ready by now unless typed in a flash
  // A single-page host may have moved on since the frame loaded: ask now.
  const pageUrl = await hostPage();
  const post = () => session.authorised((token) => callApi(`${config.api}/chat`, {
    method: 'POST',
    headers: altcha ? { 'Idempotency-Key': key, 'X-Altcha': altcha } : { 'Idempotency-Key': key },
    onResponse: (response) => { if (response.status === 201) showAllowance(response.headers); },
    json: withPageUrl(turn.conversationId
      ? { message: text, token, conversation_id: turn.conversationId, ...(turn.replaceLast ? { replace_last: true } : {}) }
      : { message: text, token }, pageUrl),
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
    answer.finish('stopped', t('msg.stopped'), 'stopped');
  } else if (reason === 'error' || reason === 'lost' || turn.error?.code === 'content_blocked') {
    const error = reason === 'lost' ? { code: 'lost', retryable: true } : (turn.error ?? { code: 'internal', retryable: true });
    if (answer.text) answer.finish('error', t('msg.interrupted'), 'error');
    else thread.remove(answer.node);
    failStream(turn, error);
  } else if (reason === 'length') {
    answer.finish('done', t('msg.cut_off'), 'muted');
  } else if (reason === 'content_filter') {
    answer.finish('done', t('msg.filtered'), 'muted');
  } else {
    answer.finish('done');
  }
  if (answer.text && turn.ids && reason !== 'error' && reason !== 'lost' && reason !== 'cancelled') {
    const turnId = turn.ids.id ?? turnIdOf(turn.ids.stream_url);
    if (turnId) {
      feedback.attach(answer, turnId);
      tellAnswer({ turn_id: turnId, conversation_id: conversation.id });
    }
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
      text: t('notice.expired_conversation'),
      kind: 'info',
    }).node);
    startTurn(turn.text, { userNode: turn.userNode });
    return;
  }
  const refusal = describeRefusal(err);
  if (refusal.editable) {
    // Nothing was accepted: hand the text back for editing. A refused
    // Regenerate or Edit still replaces the last exchange when sent again.
    thread.remove(turn.userNode);
    composer.restore(turn.text);
    if (turn.replaceLast) composer.editing = { replace: true };
  }
  let action = null;
  if (refusal.retry) {
    action = {
      label: t('notice.try_again'),
      icon: 'retry',
      run: (notice) => {
        notice.remove();
        // The same Idempotency-Key: if the first attempt did reach the
        // server after all, the retry returns that turn, not a second one.
        startTurn(turn.text, { userNode: turn.userNode, key: turn.key, replaceLast: turn.replaceLast });
      },
    };
  } else if (refusal.reload) {
    action = { label: t('notice.reload'), icon: 'retry', run: reloadChat };
  }
  thread.add(new Notice({ text: refusal.text, waitSeconds: refusal.wait, action }).node);
  if (refusal.wait > 0) composer.wait(refusal.wait);
  followUps.offer();
}

function failStream(turn, error) {
  const worded = t(`stream.${STREAM_ERRORS.has(error.code) ? error.code : 'internal'}`);
  const text = error.retryable === false ? worded : t('stream.please_retry', { error: worded });
  const action = error.retryable === false ? null : {
    label: t('notice.try_again'),
    icon: 'retry',
    run: (notice) => {
      if (activeTurn) return;
      notice.remove();
      thread.remove(turn.answer.node);
      // A new turn, so a new key; it replaces the failed exchange on the server.
      startTurn(turn.text, { userNode: turn.userNode, replaceLast: true });
    },
  };
  thread.add(new Notice({ text, action }).node);
}

function stop() {
  const turn = activeTurn;
  if (!turn || turn.stopRequested) return;
  turn.stopRequested = true;
  turn.answer.setNote(t('msg.stopping'), 'muted');
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
    turn.answer.finish('stopped', t('msg.stopped'), 'stopped');
    conversation.pending = null;
    composer.setBusy(false);
  }
  const earlier = { nodes: [...ui.log.childNodes], id: conversation.id };
  composer.editing = null;
  conversation.forget();
  followUps.withdraw();
  thread.clear();
  ui.input.focus();
  if (earlier.nodes.length > 0) undo.offer(earlier);
  announce(t(earlier.nodes.length > 0 ? 'chat.new_started_undo' : 'chat.new_started'));
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
    announce(t('chat.restored'));
  },
};

// ------------------------------------------------------ regenerate and edit

/**
 * Regenerate (on the last answer) and Edit (on the last user message). Each
 * sends a new turn with `replace_last`: the server drops the last exchange,
 * so the question is kept once and the model never sees the discarded
 * answer. On the page the old answer (and, for Edit, the old question) is
 * replaced in place; no earlier version is kept.
 */
const followUps = {
  regenerate: h(
    'button',
    { type: 'button', class: 'btn btn--tiny', 'data-chatapp-regenerate': true, title: t('msg.regenerate_title') },
    icon('retry'),
    h('span', { text: t('msg.regenerate') }),
  ),
  edit: h(
    'button',
    { type: 'button', class: 'btn btn--tiny', 'data-chatapp-edit': true, 'aria-label': t('msg.edit_label') },
    icon('edit'),
    h('span', { text: t('msg.edit') }),
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
    const userNode = this.lastUser();
    if (!text || activeTurn || !composer.canSendNow()) return;
    const answer = this.lastAnswer();
    this.withdraw();
    if (answer) thread.remove(answer);
    // A new turn with a new Idempotency-Key, under the same question.
    startTurn(text, { userNode, replaceLast: Boolean(conversation.id) });
  },

  runEdit() {
    const text = this.questionText();
    if (!text) return;
    // Sending next replaces the last exchange instead of adding one.
    composer.editing = { userNode: this.lastUser(), answerNode: this.lastAnswer() };
    ui.input.value = text;
    composer.update();
    ui.input.focus();
    ui.input.setSelectionRange(text.length, text.length);
    announce(t('msg.edit_announce'));
  },
};

// ---------------------------------------------------------------- composer

const composer = {
  busy: false,
  editing: null, // after Edit: {userNode, answerNode} (or {replace: true}) that the next send replaces
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
        ui.send.setAttribute('aria-label', t('send.label'));
        ui.send.title = t('send.title');
        this.update();
        announce(t('chat.send_again'));
        return;
      }
      ui.sendWait.textContent = formatShortWait(left);
      ui.sendWait.hidden = false;
      ui.send.classList.add('is-waiting');
      // Disabled, so never focused: the changing name is not read out.
      ui.send.setAttribute('aria-label', t('send.waiting_label', { time: formatDuration(left) }));
      ui.send.title = t('send.waiting_title', { time: formatDuration(left) });
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
    const { editing } = this;
    this.editing = null;
    const stillLast = editing?.userNode?.isConnected && editing.userNode === followUps.lastUser();
    if (editing && conversation.id && (editing.replace || stillLast)) {
      followUps.withdraw();
      thread.remove(editing.answerNode);
      thread.remove(editing.userNode);
      startTurn(text, { replaceLast: true });
      return;
    }
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
      ui.counter.textContent = over ? t('counter.over', { n: -left }) : t('counter.left', { n: left });
    }
    // The counter is announced when it crosses a threshold, not per key.
    followUps.regenerate.disabled = !this.canSendNow();
    const level = over ? 'over' : showCounter ? 'near' : 'none';
    if (level !== this.level) {
      if (level === 'near') announce(`${ui.counter.textContent}.`);
      else if (level === 'over') announce(t('counter.shorten', { counter: ui.counter.textContent }));
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
      else if (message.role === 'assistant') {
        const answer = new AssistantMessage({
          text: message.content,
          finished: true,
          sources: readSources(message.sources),
        });
        if (typeof message.turn_id === 'string') feedback.attach(answer, message.turn_id);
        nodes.push(answer.node);
      }
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
      text: t('notice.restore_failed'),
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


// ------------------------------------------------------------- feedback

/** The turn id in a stream URL (…/api/chat/<id>/events?t=…). */
function turnIdOf(streamUrl) {
  return /\/chat\/([A-Za-z0-9_-]+)\/events/.exec(streamUrl ?? '')?.[1] ?? null;
}

/**
 * Thumbs up and down on each finished answer ([data-chatapp-feedback],
 * aria-pressed), and after a thumbs down an optional comment. A later
 * rating replaces the earlier one, on the server as here.
 */
const feedback = {
  attach(answer, turnId) {
    const actions = answer.node.querySelector('[data-chatapp-actions]');
    if (!actions || actions.querySelector('[data-chatapp-feedback]')) return;
    const buttons = {};
    for (const rating of ['up', 'down']) {
      buttons[rating] = h(
        'button',
        {
          type: 'button',
          class: 'btn btn--icon btn--subtle',
          'data-chatapp-feedback': rating,
          'aria-pressed': 'false',
          'aria-label': t(`feedback.${rating}`),
          title: t(`feedback.${rating}`),
        },
        icon(rating === 'up' ? 'thumbUp' : 'thumbDown'),
      );
      buttons[rating].addEventListener('click', () => this.rate(answer, turnId, rating, buttons));
    }
    // Before Copy, so that Copy stays one Shift+Tab from the message box.
    answer.copy.before(buttons.up, buttons.down);
  },

  async rate(answer, turnId, rating, buttons, comment = undefined) {
    const before = { up: buttons.up.getAttribute('aria-pressed'), down: buttons.down.getAttribute('aria-pressed') };
    for (const [name, button] of Object.entries(buttons)) button.setAttribute('aria-pressed', String(name === rating));
    if (rating === 'down' && comment === undefined) this.askComment(answer, turnId, buttons);
    else if (rating === 'up') answer.node.querySelector('[data-chatapp-feedback-form]')?.remove();
    try {
      await this.send(turnId, comment ? { rating, comment } : { rating });
      if (comment !== undefined) announce(t('feedback.thanks'));
    } catch {
      for (const [name, button] of Object.entries(buttons)) button.setAttribute('aria-pressed', before[name]);
      announce(t('feedback.failed'));
    }
  },

  send(turnId, body) {
    return session.authorised((token) => callApi(`${config.api}/chat/${encodeURIComponent(turnId)}/feedback`, {
      method: 'POST',
      headers: { 'X-Chat-Token': token },
      json: body,
    }));
  },

  askComment(answer, turnId, buttons) {
    if (answer.node.querySelector('[data-chatapp-feedback-form]')) return;
    const id = `chatapp-feedback-${turnId}`;
    const field = h('textarea', { id, class: 'feedback__field', rows: '2', maxlength: '1000' });
    const form = h(
      'form',
      { class: 'feedback', 'data-chatapp-feedback-form': true },
      h('label', { class: 'feedback__label', for: id, text: t('feedback.comment_label') }),
      field,
      h('button', { type: 'submit', class: 'btn btn--small', text: t('feedback.send') }),
    );
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      const comment = field.value.trim();
      form.remove();
      if (comment) this.rate(answer, turnId, 'down', buttons, comment);
      else announce(t('feedback.thanks'));
      ui.input.focus({ preventScroll: true });
    });
    thread.follow(() => answer.node.append(form));
  },
};

// ------------------------------------------------- the visitor's own data

/** "Download" (a Markdown transcript) and "Delete this conversation". */
const dataControls = {
  download: document.querySelector('[data-chatapp-download]'),
  remove: document.querySelector('[data-chatapp-delete]'),
  dialog: document.querySelector('[data-chatapp-confirm]'),

  init() {
    this.download?.addEventListener('click', () => this.runDownload());
    this.remove?.addEventListener('click', () => this.confirm());
    this.dialog?.addEventListener('close', () => {
      if (this.dialog.returnValue === 'delete') this.runDelete();
      else this.remove?.focus();
    });
    // Esc in the dialog closes the dialog only: not the widget around the chat.
    this.dialog?.addEventListener('keydown', (event) => {
      if (event.key === 'Escape') event.stopPropagation();
    });
  },

  update() {
    const has = Boolean(conversation.id);
    if (this.download) this.download.hidden = !has;
    if (this.remove) this.remove.hidden = !has;
  },

  confirm() {
    if (!conversation.id || !this.dialog) return;
    this.dialog.returnValue = '';
    this.dialog.showModal();
  },

  /** Ask with the page's token, renewing an expired one once. */
  async ask(path, method) {
    const url = `${config.api}/conversations/${encodeURIComponent(conversation.id)}${path}`;
    const attempt = (token) => fetch(url, { method, headers: { 'X-Chat-Token': token }, cache: 'no-store' });
    let response = await attempt(session.token);
    if (response.status === 403) {
      await session.refresh();
      response = await attempt(session.token);
    }
    return response;
  },

  async runDownload() {
    if (!conversation.id) return;
    try {
      const response = await this.ask('?format=markdown', 'GET');
      if (!response.ok) throw new Error(String(response.status));
      const url = URL.createObjectURL(await response.blob());
      const link = h('a', { href: url, download: `conversation-${conversation.id}.md`, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch {
      thread.add(new Notice({ text: t('download.failed') }).node);
    }
  },

  async runDelete() {
    if (!conversation.id) return;
    try {
      const response = await this.ask('', 'DELETE');
      // 404: already gone (expired): for the visitor, deleted all the same.
      if (response.status !== 204 && response.status !== 404) throw new Error(String(response.status));
    } catch {
      thread.add(new Notice({ text: t('delete.failed') }).node);
      return;
    }
    const turn = activeTurn;
    if (turn) {
      activeTurn = null;
      turn.ended = true;
      turn.stream?.close();
      clearTimeout(turn.cancelTimer);
      composer.setBusy(false);
    }
    composer.editing = null;
    conversation.forget();
    followUps.withdraw();
    undo.drop();
    thread.clear();
    ui.input.focus();
    announce(t('delete.done'));
  },
};

// ------------------------------------------------ driven by the host page

/** What a widget's host page may ask of the chat (through embed.js). */
const host = {
  ask(text) {
    if (typeof text !== 'string' || !text.trim()) return;
    if (activeTurn || !composer.canSendNow()) {
      this.prefill(text);
      return;
    }
    startTurn(text.trim()); // too long: refused and handed back like a typed one
  },

  prefill(text) {
    if (typeof text !== 'string') return;
    ui.input.value = text;
    composer.update();
    ui.input.focus({ preventScroll: true });
  },

  setup({ greeting, suggestions }) {
    const greetingNode = document.querySelector('[data-chatapp-greeting]');
    if (typeof greeting === 'string' && greeting.trim() && greetingNode) greetingNode.textContent = greeting.trim();
    const box = document.querySelector('[data-chatapp-suggestions]');
    if (!box || !Array.isArray(suggestions)) return;
    const questions = suggestions.filter((q) => typeof q === 'string' && q.trim()).slice(0, 6);
    box.replaceChildren(...questions.map((question) => {
      const button = h('button', { type: 'button', class: 'btn btn--small suggestion', 'data-chatapp-suggestion': true, text: question.trim() });
      button.addEventListener('click', () => this.ask(question));
      return button;
    }));
    box.hidden = questions.length === 0;
  },
};

// ---------------------------------------------------------------- start-up

thread.init();
composer.init();
undo.init();
followUps.init();
dataControls.init();
ui.newChat.addEventListener('click', newChat);
const embedded = initEmbed(host);
restoreConversation().finally(() => {
  // A hook for themes and tests: the page is wired up and any earlier
  // conversation is back on screen.
  ui.form.dataset.ready = 'true';
  embedded?.ready();
});
