/* New chat's Undo: the earlier conversation back, as it was, for a while. */
import { announce } from './dom.js';
import { t } from './i18n.js';
import { thread, ui } from './thread.js';
import { activeTurn, conversation } from './conversation.js';
import { followUps } from './followups.js';

const UNDO_MS = 10_000; // how long New chat can be undone

/** "Undo" after New chat: the earlier conversation back, as it was. */
export const undo = {
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
