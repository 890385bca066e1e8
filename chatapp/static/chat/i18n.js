/*
 * The page's words in the visitor's language. The server picked the language
 * (<html lang>) and names its catalogue (static/i18n/<lang>.json, the same
 * file it rendered the markup from); plural forms follow Intl.PluralRules,
 * and numbers and durations are written by Intl.
 */

export const language = document.documentElement.lang || 'en';

async function loadCatalogue() {
  const url = document.querySelector('meta[name="chatapp-i18n"]')?.getAttribute('content');
  if (!url) return {};
  try {
    const response = await fetch(url, { credentials: 'same-origin' });
    return response.ok ? await response.json() : {};
  } catch {
    return {}; // keys show instead of words: wrong, but the chat still works
  }
}

const words = await loadCatalogue();
const plurals = new Intl.PluralRules(language);
const numbers = new Intl.NumberFormat(language);

/** Format a number as the visitor writes numbers. */
export const formatNumber = (n) => numbers.format(n);

/**
 * The word for `key`, its {placeholders} filled from `params`. A key with
 * plural forms picks the form for `params.n`; numbers are formatted by Intl.
 */
export function t(key, params = {}) {
  let entry = words[key] ?? key;
  if (typeof entry === 'object' && entry !== null) {
    entry = entry[plurals.select(params.n ?? 0)] ?? entry.other ?? key;
  }
  return entry.replace(/\{(\w+)\}/g, (whole, name) => {
    if (!(name in params)) return whole;
    const value = params[name];
    return typeof value === 'number' ? numbers.format(value) : String(value);
  });
}

const unitFormats = new Map();

function unit(n, name, display) {
  const id = `${name}:${display}`;
  if (!unitFormats.has(id)) {
    unitFormats.set(id, new Intl.NumberFormat(language, { style: 'unit', unit: name, unitDisplay: display }));
  }
  return unitFormats.get(id).format(n);
}

/** "2 minutes 5 seconds" (or "2 min, 5 s" with display 'short') in the visitor's language. */
export function formatDuration(totalSeconds, display = 'long') {
  const s = Math.max(0, Math.ceil(totalSeconds));
  const parts = [];
  if (s < 60) parts.push(unit(s, 'second', display));
  else if (s < 3600) {
    parts.push(unit(Math.floor(s / 60), 'minute', display));
    if (s % 60) parts.push(unit(s % 60, 'second', display));
  } else {
    parts.push(unit(Math.floor(s / 3600), 'hour', display));
    const minutes = Math.floor((s % 3600) / 60);
    if (minutes) parts.push(unit(minutes, 'minute', display));
  }
  return new Intl.ListFormat(language, { style: 'narrow', type: 'unit' }).format(parts);
}

/** The shortest way to say a wait: "5s", "3 min", "2h", for a button's badge. */
export function formatShortWait(seconds) {
  if (seconds < 60) return unit(seconds, 'second', 'narrow');
  if (seconds < 3600) return unit(Math.ceil(seconds / 60), 'minute', 'narrow');
  return unit(Math.ceil(seconds / 3600), 'hour', 'narrow');
}
