/* The conversation back on reload: its history, with whichever token owns it, and an answer still running. */
import { config } from './config.js';
import { t } from './i18n.js';
import { AssistantMessage, Notice, userMessage } from './messages.js';
import { thread, ui } from './thread.js';
import { ApiError, callApi, newKey } from './transport.js';
import { conversation, session, storage } from './conversation.js';
import { beginTurn, readTurn } from './turns.js';
import { composer } from './composer.js';
import { followUps } from './followups.js';
import { feedback } from './feedback.js';
import { readSources } from './sources.js';

export async function restoreConversation() {
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
