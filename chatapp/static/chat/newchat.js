/* New chat: forget the conversation (ending an answer being written), undoable for a while (undo.js). */
import { announce } from './dom.js';
import { t } from './i18n.js';
import { thread, ui } from './thread.js';
import { activeTurn, conversation } from './conversation.js';
import { abandonTurn } from './turns.js';
import { composer } from './composer.js';
import { followUps } from './followups.js';
import { undo } from './undo.js';

/** Forget the conversation (cancelling an answer being written); undoable for a while. */
export function newChat() {
  const turn = activeTurn;
  if (turn) {
    abandonTurn(turn);
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
