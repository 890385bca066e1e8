/*
 * The conversation's views: the thread, user and assistant messages, and
 * notices (refusals and failures) with their buttons.
 */
import { copyButton, dressBlocks } from './blocks.js';
import { announce, h, icon } from './dom.js';
import { t } from './i18n.js';
import { renderMarkdown, StreamRenderer } from './render.js';
import { showSources } from './sources.js';

// Within this of the end counts as "at the end": reaching it resumes following.
const AT_END_PX = 8;
// The "Jump to latest" button shows once this much of the thread is below the view.
const JUMP_FROM_PX = 48;
const SCROLL_UP_KEYS = new Set(['ArrowUp', 'PageUp', 'Home']);

export const ui = {
  scroller: document.querySelector('[data-chatapp-scroller]'),
  thread: document.querySelector('[data-chatapp-thread]'),
  welcome: document.querySelector('[data-chatapp-welcome]'),
  log: document.querySelector('[data-chatapp-log]'),
  bar: document.querySelector('.bar'),
  composer: document.querySelector('[data-chatapp-composer]'),
  form: document.querySelector('[data-chatapp-form]'),
  input: document.querySelector('[data-chatapp-form] textarea[name="message"]'),
  tokenField: document.querySelector('[data-chatapp-form] input[name="token"]'),
  send: document.querySelector('[data-chatapp-form] [type="submit"]'),
  stop: document.querySelector('[data-chatapp-stop]'),
  counter: document.querySelector('[data-chatapp-counter]'),
  newChat: document.querySelector('[data-chatapp-new]'),
  jump: document.querySelector('[data-chatapp-jump]'),
  undo: document.querySelector('[data-chatapp-undo]'),
  undoButton: document.querySelector('[data-chatapp-undo] button'),
  sendWait: document.querySelector('[data-chatapp-wait]'),
};

const editable = (node) => node instanceof Element && Boolean(node.closest('textarea, input, [contenteditable]'));

/**
 * The scrolling thread. It follows a growing answer only while the reader
 * wants it to: any move up (wheel, touch, keys, scrollbar) stops following,
 * reaching the end again resumes it, and "Jump to latest" goes back there.
 */
export const thread = {
  following: true,
  lastTop: 0,
  settling: 0,
  settleObserver: null,

  init() {
    const { scroller } = ui;
    scroller.addEventListener('wheel', (event) => {
      if (event.deltaY < 0) this.release();
    }, { passive: true });
    let touchY = null;
    scroller.addEventListener('touchstart', (event) => { touchY = event.touches[0]?.clientY ?? null; }, { passive: true });
    scroller.addEventListener('touchmove', (event) => {
      const y = event.touches[0]?.clientY;
      // A finger moving down drags the content down: the reader looks back.
      if (touchY !== null && y !== undefined && y > touchY + 2) this.release();
    }, { passive: true });
    document.addEventListener('keydown', (event) => {
      if (editable(event.target)) return;
      if (SCROLL_UP_KEYS.has(event.key) || (event.key === ' ' && event.shiftKey)) this.release();
    });
    // The scrollbar: a press on the scroller itself (not on its content).
    let dragging = false;
    scroller.addEventListener('pointerdown', (event) => { dragging = event.target === scroller; });
    window.addEventListener('pointerup', () => { dragging = false; });
    window.addEventListener('pointercancel', () => { dragging = false; });
    scroller.addEventListener('scroll', () => {
      const top = scroller.scrollTop;
      if (top < this.lastTop - 1) {
        // Up by the reader's hand on the scrollbar stops following. Up by
        // the page itself (a block that shrank, scroll anchoring) does not;
        // the next change pins the end again. (A wheel or touch scroll may
        // be reported before its own wheel or touch event, which then stops
        // following: so no pinning back here.)
        if (dragging) this.release();
      } else if (top > this.lastTop + 1 && !this.following && this.distanceToEnd() <= AT_END_PX) {
        // Moving down to the end resumes following. Only a move down: a
        // key or wheel that stopped following may not have moved the view
        // yet (its scroll is animated), and a scroll event that finds the
        // view still at the end must not undo it. (Layout is read only
        // when not following: reading it on every scroll would cost a
        // layout of the whole thread per frame.)
        this.following = true;
      }
      this.lastTop = top;
      this.updateJump();
    }, { passive: true });
    if (typeof ResizeObserver === 'function') {
      // The view resized (a phone's keyboard, a rotated screen): stay at the
      // end while following. (Not the thread: pinning after every layout of
      // a streaming answer cost frames; follow() pins as it changes.)
      new ResizeObserver(() => {
        if (this.following) this.pin();
        else this.updateJump();
      }).observe(scroller);
    }
    ui.jump.addEventListener('click', () => {
      this.scrollToEnd();
      ui.input.focus({ preventScroll: true });
    });
  },

  distanceToEnd() {
    const { scrollTop, scrollHeight, clientHeight } = ui.scroller;
    return scrollHeight - scrollTop - clientHeight;
  },

  /** The reader looked back: leave the view where they put it. */
  release() {
    this.following = false;
    // Where the view is now, pins included: a scroll event still on its way
    // from a pin made just before is no move down by the reader.
    this.lastTop = ui.scroller.scrollTop;
    this.updateJump();
  },

  pin() {
    const { scroller } = ui;
    // Read, then write, and never read back: a read after the write would
    // lay the whole thread out a second time (content-visibility: auto
    // depends on the scroll position).
    // (lastTop stays what the last scroll event saw: the browser may place
    // the view a pixel or two from the end computed here, and a scroll
    // event finding it there is no move by the reader.)
    scroller.scrollTop = Math.max(0, scroller.scrollHeight - scroller.clientHeight);
    this.showJump(false);
  },

  scrollToEnd() {
    this.following = true;
    this.pin();
    this.keepPinned();
  },

  /**
   * For a while, pin again whenever the thread changes size, while
   * following: blocks skipped by content-visibility take their real size
   * once they near the view (the browser finds that out a few frames
   * later, so a long stretch of them grows the thread well after the
   * pin), and code tools arrive when the page is idle. Only for a while:
   * pinning after every layout of a streaming answer cost frames, and
   * follow() pins as the answer changes.
   */
  keepPinned(ms = 2000) {
    if (typeof ResizeObserver !== 'function') return;
    clearTimeout(this.settling);
    this.settleObserver?.disconnect();
    const observer = new ResizeObserver(() => {
      if (this.following) this.pin();
      else observer.disconnect();
    });
    observer.observe(ui.thread);
    this.settleObserver = observer;
    this.settling = setTimeout(() => observer.disconnect(), ms);
  },

  updateJump() {
    this.showJump(!this.following && this.distanceToEnd() > JUMP_FROM_PX);
  },

  showJump(show) {
    if (ui.jump.hidden === show) ui.jump.hidden = !show;
  },

  /** Run a DOM change, keeping the view at the end while following. */
  follow(change) {
    change();
    if (this.following) this.pin();
    else this.updateJump();
  },

  add(node) {
    this.follow(() => {
      ui.log.append(node);
      this.update();
    });
    return node;
  },

  remove(node) {
    this.follow(() => {
      node?.remove();
      this.update();
    });
  },

  clear() {
    ui.log.replaceChildren();
    this.update();
    this.scrollToEnd();
  },

  update() {
    ui.welcome.hidden = ui.log.childElementCount > 0;
  },

  /** Tell assistive technology that an answer is being written (or not). */
  setBusy(busy) {
    if (busy) ui.log.setAttribute('aria-busy', 'true');
    else ui.log.removeAttribute('aria-busy');
  },
};

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
