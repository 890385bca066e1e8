/*
 * How many messages the visitor has left, from the RateLimit and
 * RateLimit-Policy fields (IETF httpapi draft) on an accepted message: shown
 * under the message box only when few are left, and said to screen readers.
 */

import { announce, h } from './dom.js';
import { formatDuration, t } from './i18n.js';

const FIELD = /^"([^"]*)";r=(\d+);t=(\d+)$/;
const POLICY = /;q=(\d+);w=(\d+)$/;
const MOST_SHOWN = 3; // say nothing while more than this many are left

const WINDOWS = { 60: 'allowance.minute', 3600: 'allowance.hour', 86400: 'allowance.day' };

/** Read the fields; null when they are absent or malformed. */
export function parseAllowance(headers) {
  const field = FIELD.exec(headers.get('RateLimit') ?? '');
  const policy = POLICY.exec(headers.get('RateLimit-Policy') ?? '');
  if (!field || !policy) return null;
  return {
    left: Number(field[2]),
    resetSeconds: Number(field[3]),
    quota: Number(policy[1]),
    window: Number(policy[2]),
  };
}

/** Words for an allowance worth mentioning, or null while plenty is left. */
export function describeAllowance(allowance) {
  if (!allowance) return null;
  const { left, resetSeconds, quota, window } = allowance;
  if (left > Math.min(MOST_SHOWN, Math.ceil(quota / 5))) return null;
  if (left === 0) {
    return t('allowance.last', { time: formatDuration(resetSeconds) });
  }
  return t(WINDOWS[window] ?? 'allowance.window', { n: left, time: formatDuration(window) });
}

let line = null;

/** Show (or clear) what is left after an accepted message. */
export function showAllowance(headers) {
  const text = describeAllowance(parseAllowance(headers));
  if (!line) {
    const foot = document.querySelector('[data-chatapp-form] .composer__foot');
    if (!foot) return;
    line = h('p', { class: 'composer__hint', 'data-chatapp-allowance': true, hidden: true });
    foot.append(line);
  }
  line.hidden = !text;
  line.textContent = text ?? '';
  if (text) announce(text);
}
