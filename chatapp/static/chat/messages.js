/* The conversation's messages: the person's, the assistant's, and notices (refusals, failures) with their buttons. */
import { copyButton, dressBlocks } from './blocks.js';
import { announce, h, icon } from './dom.js';
import { t } from './i18n.js';
import { renderMarkdown, StreamRenderer } from './render.js';
import { showSources } from './sources.js';
import { thread, ui } from './thread.js';

/**
 * The person's own message. aria-live="off": they just wrote it, so the
 * log does not read it back to them.
 */
export function userMessage(text) {
  return h(
    'article',
    { class: 'msg msg--user', 'data-role': 'user', 'aria-label': t('msg.you'), 'aria-live': 'off' },
    h('h2', { class: 'visually-hidden', text: t('msg.you_said') }),
    h('div', { class: 'msg__body', text }),
    h('div', { class: 'msg__actions', 'data-chatapp-actions': true }),
  );
}

const RECONNECTING = t('msg.reconnecting');

export class AssistantMessage {
  constructor({ text = '', finished = false, sources = null } = {}) {
    this.text = text;
    // What the answer may cite (site knowledge): from its `sources` event,
    // or from history on a reload; shown once the answer is done.
    this.sources = sources;
    this.createdAt = performance.now(); // "Thinking…" counts from here
    this.frame = 0;
    this.ending = null; // [state, note, kind] once finished, until drawn
    this.offline = false;
    this.body = h('div', { class: 'msg__body markdown' });
    this.note = h('p', { class: 'msg__note', hidden: true });
    this.copy = copyButton(t('msg.copy_answer'), () => this.text);
    this.copy.hidden = true;
    this.heading = h('h2', { class: 'visually-hidden', text: t('msg.assistant_said') });
    this.node = h(
      'article',
      { class: 'msg msg--assistant', 'data-role': 'assistant', 'aria-label': t('msg.assistant') },
      this.heading,
      this.body,
      h(
        'div',
        { class: 'msg__foot' },
        this.note,
        // Buttons come and go here without being read out.
        h('span', { class: 'msg__actions', 'aria-live': 'off', 'data-chatapp-actions': true }, this.copy),
      ),
    );
    this.node.chatappMessage = this;
    if (finished) {
      this.finish('done');
      return;
    }
    this.view = new StreamRenderer(this.body, dressBlocks);
    this.thinking = h(
      'div',
      { class: 'thinking' },
      h('span', { class: 'thinking__dots', 'aria-hidden': 'true' }, h('i'), h('i'), h('i')),
      h('span', { text: t('msg.thinking') }),
    );
    this.heading.after(this.thinking);
    this.node.dataset.state = 'thinking';
    this.node.setAttribute('aria-busy', 'true');
    // Hidden from screen readers while it grows: the polite log then reads
    // the finished answer once instead of every token (see finish()).
    this.body.setAttribute('aria-hidden', 'true');
  }

  append(text) {
    if (!text) return;
    if (this.thinking) {
      this.thinking.remove();
      this.thinking = null;
      this.node.dataset.state = 'streaming';
    }
    this.text += text;
    this.schedule();
  }

  /** Render at most once a frame, however fast the deltas come. */
  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      let caughtUp = false;
      thread.follow(() => { caughtUp = this.view.update(this.text); });
      if (!caughtUp) this.schedule();
      else if (this.ending) this.settle(...this.ending);
    });
  }

  setNote(text, kind = '') {
    this.note.textContent = text;
    this.note.hidden = !text;
    this.note.className = kind ? `msg__note msg__note--${kind}` : 'msg__note';
  }

  get running() {
    return this.node.dataset.state === 'thinking' || this.node.dataset.state === 'streaming';
  }

  /** Show a quiet connection note while the turn is still running. */
  setConnection(online) {
    if (!this.running || this.offline === !online) return;
    this.offline = !online;
    if (!online) {
      this.setNote(RECONNECTING, 'muted');
      this.node.dataset.connection = 'reconnecting';
      announce(t('msg.connection_lost'));
    } else {
      if (this.note.textContent === RECONNECTING) this.setNote('');
      delete this.node.dataset.connection;
      announce(t('msg.reconnected'));
    }
  }

  finish(state, note = '', noteKind = '') {
    this.over = true; // the turn has ended; the last frames may still be drawing
    this.thinking?.remove();
    this.thinking = null;
    delete this.node.dataset.connection;
    if (!this.view) {
      renderMarkdown(this.text, this.body, dressBlocks);
      this.settle(state, note, noteKind);
      return;
    }
    // The streamed blocks stay (rendering 30,000 characters again would
    // block the page); once the last frames have caught up, it is done.
    this.ending = [state, note, noteKind];
    cancelAnimationFrame(this.frame);
    this.frame = 0;
    this.schedule();
  }

  settle(state, note, noteKind) {
    this.view = null;
    this.ending = null;
    thread.follow(() => {
      // The last block settles now: highlighting and tools for its code.
      dressBlocks(this.body, true);
      if (state === 'done') showSources(this); // site knowledge: [n] links, the list
      // Shown to screen readers now that it is complete: the polite log
      // reads the whole answer once instead of every token.
      this.body.removeAttribute('aria-hidden');
      this.node.dataset.state = state;
      this.node.removeAttribute('aria-busy');
      this.setNote(note, noteKind);
      this.copy.hidden = !this.text;
    });
    thread.keepPinned();
  }
}

const notices = new Set();

/**
 * A refusal or failure in the log (data-role="error"), with an optional
 * action button and an optional countdown from Retry-After. The log reads
 * the notice once when it appears; the ticking number is kept out of the
 * live region (the composer says once when sending works again).
 */
export class Notice {
  constructor({ text, waitSeconds = null, action = null, kind = 'error' }) {
    this.text = text; // string, or (secondsLeft) => string while counting down
    this.retired = false;
    this.textNode = h('p', { class: 'notice__text' });
    this.button = action
      ? h('button', { type: 'button', class: 'btn btn--small' }, icon(action.icon), h('span', { text: action.label }))
      : null;
    this.button?.addEventListener('click', () => {
      if (this.retired) return;
      action.run(this);
      // The button just left the page with its notice; keep the keyboard
      // where the conversation continues.
      if (!this.node.isConnected) ui.input.focus({ preventScroll: true });
    });
    this.node = h(
      'article',
      { class: `msg notice notice--${kind}`, 'data-role': 'error', 'aria-label': t(kind === 'info' ? 'notice.note' : 'notice.problem') },
      icon(waitSeconds ? 'clock' : kind === 'info' ? 'info' : 'alert'),
      h('div', { class: 'notice__main' }, this.textNode, this.button),
    );
    if (this.button) notices.add(this);
    if (waitSeconds) this.countDown(waitSeconds);
    else this.show(0);
  }

  /** A newer turn has started: this notice's action would land out of order. */
  static retireAll() {
    for (const notice of notices) notice.retire();
    notices.clear();
  }

  retire() {
    this.retired = true;
    if (this.button) {
      this.button.disabled = true;
      this.button.title = t('notice.retired');
    }
  }

  show(secondsLeft) {
    this.textNode.textContent = typeof this.text === 'function' ? this.text(secondsLeft) : this.text;
    if (this.button) this.button.disabled = this.retired || secondsLeft > 0;
  }

  countDown(seconds) {
    const deadline = Date.now() + seconds * 1000;
    const secondsLeft = () => Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
    this.show(secondsLeft());
    const timer = setInterval(() => {
      // Read once when it appeared; from now on the number ticks silently.
      this.textNode.setAttribute('aria-live', 'off');
      const left = secondsLeft();
      this.show(left);
      // Stop at zero, or once the notice has left the page (retry, New chat).
      if (left === 0 || !this.node.isConnected) clearInterval(timer);
    }, 500);
  }

  remove() {
    notices.delete(this);
    thread.remove(this.node);
  }
}
