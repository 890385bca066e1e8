/* The visitor's own data: Download (a Markdown transcript) and Delete this conversation. */
import { config } from './config.js';
import { announce, h } from './dom.js';
import { t } from './i18n.js';
import { Notice } from './messages.js';
import { thread, ui } from './thread.js';
import { activeTurn, conversation, session, setActiveTurn } from './conversation.js';
import { composer } from './composer.js';
import { followUps } from './followups.js';
import { undo } from './undo.js';

/** "Download" (a Markdown transcript) and "Delete this conversation". */
export const dataControls = {
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
      setActiveTurn(null);
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
