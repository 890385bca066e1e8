/* A turn's lifecycle: send, accept, read its stream, end, stop, and the refusals and failures worded. */
import { config } from './config.js';
import { formatDuration, t } from './i18n.js';
import { hostPage, reloadChat, tellAnswer } from './embed.js';
import { AssistantMessage, Notice, userMessage } from './messages.js';
import { thread } from './thread.js';
import { callApi, newKey, postForEvents } from './transport.js';
import { TurnStream } from './turnstream.js';
import { botCheck } from './altcha.js';
import { showAllowance } from './ratelimit.js';
import { onAnswering, onReasoning, onStatus } from './thinking.js';
import { readSources, withPageUrl } from './sources.js';
import { activeTurn, conversation, session, setActiveTurn } from './conversation.js';
import { composer } from './composer.js';
import { followUps } from './followups.js';
import { undo } from './undo.js';
import { feedback, turnIdOf } from './feedback.js';

// After Stop, the stream normally ends with done/cancelled within a second;
// past this, end the turn locally so the composer can never stay locked.
const CANCEL_GRACE_MS = 5000;

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
export function beginTurn({ text, key, userNode, ids = null, replaceLast = false }) {
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
    describe: null, // asks for the turn's URLs again, while the POST's stream has not named them
  };
  setActiveTurn(turn);
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
export async function startTurn(text, { userNode = null, key = newKey(), replaceLast = false } = {}) {
  if (activeTurn) return;
  const turn = beginTurn({ text, key, userNode: userNode ?? thread.add(userMessage(text)), replaceLast });

  let opened;
  let altcha = await botCheck.solution(); // ready by now unless typed in a flash
  // A single-page host may have moved on since the frame loaded: ask now.
  const pageUrl = await hostPage();
  const request = (token) => ({
    headers: altcha ? { 'Idempotency-Key': key, 'X-Altcha': altcha } : { 'Idempotency-Key': key },
    onResponse: (response) => { if (response.ok) showAllowance(response.headers); },
    json: withPageUrl(turn.conversationId
      ? { message: text, token, conversation_id: turn.conversationId, ...(turn.replaceLast ? { replace_last: true } : {}) }
      : { message: text, token }, pageUrl),
  });
  // One request per turn: the answer streams in the POST's own response.
  const post = () => session.authorised((token) => postForEvents(`${config.api}/chat`, request(token)));
  // The same key again, as JSON: the same turn's URLs, never a second turn.
  const describe = () => session.authorised((token) => callApi(`${config.api}/chat`, { method: 'POST', ...request(token) }))
    .then((accepted) => (accept(turn, accepted) ? accepted.stream_url : null));
  try {
    try {
      opened = await post();
    } catch (err) {
      // Verified, we thought; but the bot check vouches for one address and
      // an hour: after a move (or a long stay) solve again, then send.
      if (err.code !== 'challenge_required' || altcha) throw err;
      botCheck.required();
      altcha = await botCheck.solution();
      if (!altcha) throw err;
      opened = await post();
    }
  } catch (err) {
    if (altcha) botCheck.spent({ verified: false });
    if (activeTurn !== turn) return; // "New chat" was pressed meanwhile
    setActiveTurn(null);
    thread.remove(turn.answer.node);
    composer.setBusy(false);
    if (!turn.stopRequested) refuse(turn, err);
    return;
  }
  botCheck.spent({ verified: true }); // accepted: no other solution is asked
  if (opened.response && activeTurn !== turn) {
    // "New chat" was pressed while the POST was in flight: the turn's own
    // stream may be held back (a buffering proxy), so ask for its URLs.
    opened.response.body?.cancel().catch(() => {});
    describe().catch(() => {}); // accept() cancels it
  } else if (opened.response) {
    readTurn(turn, { body: opened.response, describe });
  } else if (accept(turn, opened.accepted)) {
    readTurn(turn);
  }
}

/**
 * "New chat" while `turn` runs: end it here and cancel it on the server,
 * also when its URLs are not known yet (the POST's 200 came, its `start`
 * event not yet): the same Idempotency-Key asks for them, and accept()
 * cancels. A POST still in flight is cancelled by startTurn once answered.
 */
export function abandonTurn(turn) {
  setActiveTurn(null);
  turn.ended = true;
  clearTimeout(turn.cancelTimer);
  turn.stream?.close();
  if (turn.ids) cancelQuietly(turn.ids.cancel_url);
  else if (turn.describe) turn.describe().catch(() => {});
  turn.answer.finish('stopped', t('msg.stopped'), 'stopped');
}

/**
 * The turn was accepted: keep its URLs (from a 201, or the `start` event of
 * the POST's own stream). False when "New chat" abandoned it meanwhile.
 */
function accept(turn, accepted) {
  if (turn.ids) return activeTurn === turn;
  if (accepted.token) session.use(accepted.token); // now marked as verified
  if (activeTurn !== turn) {
    // Abandoned by "New chat" while the request was in flight.
    cancelQuietly(accepted.cancel_url);
    turn.stream?.close();
    return false;
  }
  turn.ids = accepted;
  conversation.pending = { text: turn.text, stream_url: accepted.stream_url, cancel_url: accepted.cancel_url };
  conversation.set(accepted.conversation_id);
  if (turn.stopRequested) requestCancel(turn);
  return true;
}
export function readTurn(turn, { body = null, describe = null } = {}) {
  turn.describe = describe;
  turn.stream = new TurnStream(turn.ids?.stream_url ?? null, {
    body,
    describe,
    onEvent: (type, data) => {
      if (type === 'start' && typeof data.stream_url === 'string' && !accept(turn, data)) return;
      onTurnEvent(turn, type, data);
    },
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
    setActiveTurn(null);
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
export function stop() {
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
export function cancelQuietly(cancelUrl) {
  session.authorised((token) => callApi(cancelUrl, { method: 'POST', json: { token } })).catch(() => {});
}
