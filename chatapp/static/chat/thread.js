/* The page's parts (`ui`) and the scrolling thread: following the stream, "Jump to latest". */

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
