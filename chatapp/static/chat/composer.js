/* The composer: the message box, Enter and Esc, Send and Stop, the length counter, a refusal's wait. */
import { config } from './config.js';
import { announce, codePoints } from './dom.js';
import { formatDuration, formatShortWait, t } from './i18n.js';
import { thread, ui } from './thread.js';
import { activeTurn } from './conversation.js';

const COUNTER_FROM = 0.8; // show the length counter from 80 % of the limit

// What Send and Stop do, and who follows the composer's state: given by
// app.js, since the modules that act on them (followups.js, turns.js) sit above this one.
const hooks = { send: () => {}, stop: () => {}, updated: [] };

export const composer = {
  busy: false,
  editing: null, // after Edit: {userNode, answerNode} (or {replace: true}) that the next send replaces
  restoring: false,
  waitUntil: 0, // a refusal's Retry-After: no sending before this (ms epoch)
  waitTimer: 0,
  level: 'none', // the length counter's last announced threshold

  init() {
    ui.form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.submit();
    });
    ui.input.addEventListener('keydown', (event) => {
      // isComposing / 229: Enter that confirms an IME composition is not "send".
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
        event.preventDefault();
        this.submit();
      }
    });
    // Esc stops an answer from anywhere on the page (before embed.js's
    // listener, which closes a widget only when Esc stopped nothing).
    document.addEventListener('keydown', (event) => {
      if (event.key === 'Escape' && activeTurn && !event.defaultPrevented && !event.isComposing) {
        event.preventDefault();
        hooks.stop();
      }
    });
    ui.input.addEventListener('input', () => this.update());
    ui.stop.addEventListener('click', () => hooks.stop());
    if (!CSS.supports('field-sizing', 'content')) {
      // Grow with the text where CSS cannot (CSSOM writes are CSP-safe).
      ui.input.addEventListener('input', () => {
        ui.input.style.height = 'auto';
        ui.input.style.height = `${ui.input.scrollHeight}px`;
      });
    }
    this.update();
  },

  /** `send(text, editing)`: the text to send, and what Edit left to replace (or null). */
  onSend(send) {
    hooks.send = send;
  },

  onStop(stop) {
    hooks.stop = stop;
  },

  /** Called after every update(), e.g. to enable Regenerate only when a send could go now. */
  onUpdate(listener) {
    hooks.updated.push(listener);
  },

  text() {
    return ui.input.value.trim();
  },

  /** Nothing stops a send but the text itself. */
  canSendNow() {
    return !this.busy && !this.restoring && !this.waitUntil;
  },

  canSend() {
    const length = codePoints(this.text());
    return this.canSendNow() && length > 0 && length <= config.maxChars;
  },

  /** A refusal asked to wait: Send shows the wait, and says once when it is over. */
  wait(seconds) {
    this.waitUntil = Math.max(this.waitUntil, Date.now() + seconds * 1000);
    clearInterval(this.waitTimer);
    const tick = () => {
      const left = Math.max(0, Math.ceil((this.waitUntil - Date.now()) / 1000));
      if (left === 0) {
        clearInterval(this.waitTimer);
        this.waitUntil = 0;
        ui.send.classList.remove('is-waiting');
        ui.sendWait.hidden = true;
        ui.send.setAttribute('aria-label', t('send.label'));
        ui.send.title = t('send.title');
        this.update();
        announce(t('chat.send_again'));
        return;
      }
      ui.sendWait.textContent = formatShortWait(left);
      ui.sendWait.hidden = false;
      ui.send.classList.add('is-waiting');
      // Disabled, so never focused: the changing name is not read out.
      ui.send.setAttribute('aria-label', t('send.waiting_label', { time: formatDuration(left) }));
      ui.send.title = t('send.waiting_title', { time: formatDuration(left) });
      this.update();
    };
    tick();
    this.waitTimer = setInterval(tick, 500);
  },

  submit() {
    if (!this.canSend()) return;
    const text = this.text();
    ui.input.value = '';
    this.update();
    const { editing } = this;
    this.editing = null;
    hooks.send(text, editing);
  },

  /** Put refused text back, unless the person has already typed something new. */
  restore(text) {
    if (!ui.input.value.trim()) {
      ui.input.value = text;
      this.update();
    }
    ui.input.focus();
  },

  setBusy(busy) {
    const controlHadFocus = document.activeElement === ui.send || document.activeElement === ui.stop;
    this.busy = busy;
    thread.setBusy(busy);
    ui.send.hidden = busy;
    ui.stop.hidden = !busy;
    this.update();
    // The focused button just disappeared; keep the keyboard in the text box.
    if (controlHadFocus) ui.input.focus({ preventScroll: true });
  },

  setRestoring(restoring) {
    this.restoring = restoring;
    this.update();
  },

  update() {
    const length = codePoints(this.text());
    const over = length > config.maxChars;
    ui.send.disabled = !this.canSend();
    if (over) ui.input.setAttribute('aria-invalid', 'true');
    else ui.input.removeAttribute('aria-invalid');
    const showCounter = length >= config.maxChars * COUNTER_FROM;
    ui.counter.hidden = !showCounter;
    ui.counter.classList.toggle('is-over', over);
    if (showCounter) {
      const left = config.maxChars - length;
      ui.counter.textContent = over ? t('counter.over', { n: -left }) : t('counter.left', { n: left });
    }
    for (const listener of hooks.updated) listener();
    // The counter is announced when it crosses a threshold, not per key.
    const level = over ? 'over' : showCounter ? 'near' : 'none';
    if (level !== this.level) {
      if (level === 'near') announce(`${ui.counter.textContent}.`);
      else if (level === 'over') announce(t('counter.shorten', { counter: ui.counter.textContent }));
      this.level = level;
    }
  },
};
