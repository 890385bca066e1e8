/*
 * A model that thinks before it answers: the `status` and `reasoning` events.
 * "Thinking…" counts the seconds until the first words; the reasoning (only
 * sent with CHATAPP_SHOW_REASONING=1) goes into a folded disclosure, never
 * into the answer; a retry shows a quiet note. Screen readers hear
 * "Thinking" once per answer, not per token or per second.
 */
import { announce, h } from './dom.js';
import { t } from './i18n.js';

// The page's English words for this module, in one place (catalogues later).
export const WORDS = {
  get thinking() { return t('thinking.thinking'); },
  get announced() { return t('thinking.announced'); },
  seconds: (n) => t('thinking.seconds', { n }),
  get reasoning() { return t('thinking.reasoning'); },
  reasoningFor: (n) => t('thinking.reasoning_for', { n }),
  get retrying() { return t('thinking.retrying'); },
};

const views = new WeakMap();

/** The thinking state of one answer, made when its first such event comes. */
class Thinking {
  constructor(answer) {
    this.answer = answer;
    this.since = answer.createdAt ?? performance.now();
    this.timer = 0;
    this.time = null;
    this.details = null;
    this.text = null;
    this.announced = false;
  }

  seconds() {
    return Math.max(0, Math.round((performance.now() - this.since) / 1000));
  }

  /** Show the seconds next to the answer's "Thinking…", until it answers. */
  start() {
    if (!this.announced) {
      this.announced = true;
      announce(WORDS.announced);
    }
    const indicator = this.answer.thinking;
    if (!indicator || this.time) return;
    this.time = h('span', { class: 'thinking__time', 'data-chatapp-thinking-time': true });
    // The seconds change every second: not read out (the log is live).
    this.time.setAttribute('aria-hidden', 'true');
    indicator.append(this.time);
    this.tick();
    this.timer = setInterval(() => this.tick(), 1000);
  }

  tick() {
    if (!this.answer.thinking) {
      this.stop();
      return;
    }
    this.time.textContent = WORDS.seconds(this.seconds());
  }

  stop() {
    clearInterval(this.timer);
    this.timer = 0;
    if (this.details && this.summary) this.summary.textContent = WORDS.reasoningFor(this.seconds());
  }

  /** Add reasoning text to the folded disclosure (closed by default). */
  reason(text) {
    if (!this.details) {
      this.summary = h('summary', { text: WORDS.reasoning });
      this.text = h('div', { class: 'reasoning__text' });
      this.details = h(
        'details',
        // Growing text inside the live log would be read token by token.
        { class: 'reasoning', 'data-chatapp-reasoning': true, 'aria-live': 'off' },
        this.summary,
        this.text,
      );
      this.answer.heading.after(this.details);
    }
    // Plain text, never Markdown or HTML: it is the model's scratch work.
    this.text.append(text);
  }
}

function view(answer) {
  let thinking = views.get(answer);
  if (!thinking) {
    thinking = new Thinking(answer);
    views.set(answer, thinking);
  }
  return thinking;
}

/** Handle a `status` event for an answer still running. */
export function onStatus(answer, data) {
  if (data?.state === 'thinking') {
    view(answer).start();
  } else if (data?.state === 'retrying' && answer.running && !answer.text) {
    answer.setNote(WORDS.retrying, 'muted');
  }
}

/** Handle a `reasoning` event: shown folded, never as answer text. */
export function onReasoning(answer, data) {
  if (typeof data?.text === 'string' && data.text) view(answer).reason(data.text);
}

/** The first words or the end came: stop counting, clear a retry note. */
export function onAnswering(answer) {
  const thinking = views.get(answer);
  if (thinking?.timer) thinking.stop();
  if (answer.note.textContent === WORDS.retrying) answer.setNote('');
}
