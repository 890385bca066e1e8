/* Regenerate (on the last answer) and Edit (on the last user message). */
import { announce, h, icon } from './dom.js';
import { t } from './i18n.js';
import { thread, ui } from './thread.js';
import { activeTurn, conversation } from './conversation.js';
import { composer } from './composer.js';

// How a turn starts (turns.js's startTurn, given by app.js: turns.js sits above this module).
let startTurn = () => {};

/**
 * Regenerate (on the last answer) and Edit (on the last user message). Each
 * sends a new turn with `replace_last`: the server drops the last exchange,
 * so the question is kept once and the model never sees the discarded
 * answer. On the page the old answer (and, for Edit, the old question) is
 * replaced in place; no earlier version is kept.
 */
export const followUps = {
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

  /** `start(text, options)` starts a turn. */
  onStart(start) {
    startTurn = start;
  },

  /** Send the composer's text: after Edit, in place of the last exchange while it still is the last. */
  send(text, editing) {
    const stillLast = editing?.userNode?.isConnected && editing.userNode === this.lastUser();
    if (editing && conversation.id && (editing.replace || stillLast)) {
      this.withdraw();
      thread.remove(editing.answerNode);
      thread.remove(editing.userNode);
      startTurn(text, { replaceLast: true });
      return;
    }
    startTurn(text);
  },

  /** Regenerate only when a send could go now (after each composer update). */
  updateRegenerate() {
    this.regenerate.disabled = !composer.canSendNow();
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
