/*
 * The conversation's views: the thread, user and assistant messages, and
 * notices (refusals and failures) with their buttons.
 */
import { announce, h, icon } from './dom.js';
import { renderMarkdown, StreamRenderer } from './render.js';

const FOLLOW_SLACK_PX = 96; // "at the bottom" for auto-scroll purposes

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
};

export const thread = {
  atBottom() {
    const { scrollTop, scrollHeight, clientHeight } = ui.scroller;
    return scrollHeight - scrollTop - clientHeight < FOLLOW_SLACK_PX;
  },

  scrollToEnd() {
    ui.scroller.scrollTop = ui.scroller.scrollHeight;
  },

  /** Run a DOM change, keeping the view pinned to the end if it was there. */
  follow(change) {
    const pinned = this.atBottom();
    change();
    if (pinned) this.scrollToEnd();
  },

  add(node) {
    this.follow(() => {
      ui.log.append(node);
      this.update();
    });
    return node;
  },

  remove(node) {
    node?.remove();
    this.update();
  },

  clear() {
    ui.log.replaceChildren();
    this.update();
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

export function userMessage(text) {
  return h(
    'article',
    { class: 'msg msg--user', 'data-role': 'user', 'aria-label': 'You' },
    h('div', { class: 'msg__body', text }),
  );
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No async clipboard (plain http, or an iframe without clipboard-write):
    // fall back to the old selection-based copy.
  }
  const returnFocus = document.activeElement;
  const proxy = h('textarea', { class: 'clipboard-proxy', readonly: true, 'aria-hidden': 'true', tabindex: '-1' });
  proxy.value = text;
  document.body.append(proxy);
  proxy.select();
  let copied = false;
  try {
    copied = document.execCommand('copy');
  } catch {
    copied = false;
  }
  proxy.remove();
  returnFocus?.focus?.({ preventScroll: true });
  return copied;
}

/** A copy button; `visibleLabel` adds text next to the icon. */
function copyButton(label, getText, visibleLabel = '') {
  const face = (name, text) => [icon(name), ...(visibleLabel ? [h('span', { text })] : [])];
  const button = h('button', {
    type: 'button',
    class: visibleLabel ? 'btn btn--tiny' : 'btn btn--icon btn--subtle',
    'aria-label': label,
    title: label,
  }, ...face('copy', visibleLabel));
  let timer = 0;
  button.addEventListener('click', async () => {
    const copied = await copyText(getText());
    clearTimeout(timer);
    button.replaceChildren(...face(copied ? 'check' : 'alert', copied ? 'Copied' : 'Failed'));
    button.classList.toggle('is-done', copied);
    announce(copied ? 'Copied to the clipboard.' : 'Copying failed; select the text and copy it by hand.');
    timer = setTimeout(() => {
      button.replaceChildren(...face('copy', visibleLabel));
      button.classList.remove('is-done');
    }, 1800);
  });
  return button;
}

/**
 * Put each code block under a small bar naming its language. The copy
 * button joins once the answer is complete; the bar is there from the start
 * so the layout does not jump when the answer finishes. A block wider than
 * the answer scrolls, so it takes keyboard focus to be scrollable by keys.
 */
function enhanceCodeBlocks(body) {
  for (const pre of body.querySelectorAll('pre')) {
    const code = pre.querySelector('code') ?? pre;
    const language = /(?:^|\s)language-([\w+#.-]+)/.exec(code.className)?.[1] ?? '';
    pre.setAttribute('tabindex', '0');
    const bar = h(
      'div',
      { class: 'codeblock__bar' },
      h('span', { class: 'codeblock__lang', text: language || 'code' }),
    );
    const wrapper = h('div', { class: 'codeblock' }, bar);
    pre.replaceWith(wrapper);
    wrapper.append(pre);
  }
  // Wide tables scroll too.
  for (const table of body.querySelectorAll('table')) table.setAttribute('tabindex', '0');
}

/** Give every code block's bar its Copy button, once the answer is complete. */
function addCodeCopyButtons(body) {
  for (const block of body.querySelectorAll('.codeblock')) {
    const bar = block.querySelector('.codeblock__bar');
    const code = block.querySelector('pre code') ?? block.querySelector('pre');
    if (!bar || !code || bar.querySelector('button')) continue;
    bar.append(copyButton('Copy code', () => code.textContent, 'Copy'));
  }
}

const RECONNECTING = 'Reconnecting…';

export class AssistantMessage {
  constructor({ text = '', finished = false } = {}) {
    this.text = text;
    this.frame = 0;
    this.ending = null; // [state, note, kind] once finished, until drawn
    this.offline = false;
    this.body = h('div', { class: 'msg__body markdown' });
    this.note = h('p', { class: 'msg__note', hidden: true });
    this.copy = copyButton('Copy answer', () => this.text);
    this.copy.hidden = true;
    this.node = h(
      'article',
      { class: 'msg msg--assistant', 'data-role': 'assistant', 'aria-label': 'Assistant' },
      this.body,
      h('div', { class: 'msg__foot' }, this.note, this.copy),
    );
    if (finished) {
      this.finish('done');
      return;
    }
    this.view = new StreamRenderer(this.body, enhanceCodeBlocks);
    this.thinking = h(
      'div',
      { class: 'thinking' },
      h('span', { class: 'thinking__dots', 'aria-hidden': 'true' }, h('i'), h('i'), h('i')),
      h('span', { text: 'Thinking…' }),
    );
    this.node.prepend(this.thinking);
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
      announce('Connection lost. Reconnecting…');
    } else {
      if (this.note.textContent === RECONNECTING) this.setNote('');
      delete this.node.dataset.connection;
      announce('Reconnected.');
    }
  }

  finish(state, note = '', noteKind = '') {
    this.thinking?.remove();
    this.thinking = null;
    delete this.node.dataset.connection;
    if (!this.view) {
      renderMarkdown(this.text, this.body, enhanceCodeBlocks);
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
      addCodeCopyButtons(this.body);
      // Shown to screen readers now that it is complete: the polite log
      // reads the whole answer once instead of every token.
      this.body.removeAttribute('aria-hidden');
      this.node.dataset.state = state;
      this.node.removeAttribute('aria-busy');
      this.setNote(note, noteKind);
      this.copy.hidden = !this.text;
    });
  }
}

/**
 * A refusal or failure in the log (data-role="error"), with an optional
 * action button and an optional live countdown from Retry-After.
 */
export class Notice {
  constructor({ text, waitSeconds = null, action = null, kind = 'error' }) {
    this.text = text; // string, or (secondsLeft) => string while counting down
    this.textNode = h('p', { class: 'notice__text' });
    this.button = action
      ? h('button', { type: 'button', class: 'btn btn--small' }, icon(action.icon), h('span', { text: action.label }))
      : null;
    this.button?.addEventListener('click', () => {
      action.run(this);
      // The button just left the page with its notice; keep the keyboard
      // where the conversation continues.
      if (!this.node.isConnected) ui.input.focus({ preventScroll: true });
    });
    this.node = h(
      'article',
      { class: `msg notice notice--${kind}`, 'data-role': 'error', 'aria-label': kind === 'info' ? 'Note' : 'Problem' },
      icon(waitSeconds ? 'clock' : kind === 'info' ? 'info' : 'alert'),
      h('div', { class: 'notice__main' }, this.textNode, this.button),
    );
    if (waitSeconds) this.countDown(waitSeconds);
    else this.show(0);
  }

  show(secondsLeft) {
    this.textNode.textContent = typeof this.text === 'function' ? this.text(secondsLeft) : this.text;
    if (this.button) this.button.disabled = secondsLeft > 0;
  }

  countDown(seconds) {
    const deadline = Date.now() + seconds * 1000;
    const secondsLeft = () => Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
    this.show(secondsLeft());
    const timer = setInterval(() => {
      const left = secondsLeft();
      this.show(left);
      // Stop at zero, or once the notice has left the page (retry, New chat).
      if (left === 0 || !this.node.isConnected) clearInterval(timer);
    }, 500);
  }

  remove() {
    thread.remove(this.node);
  }
}
