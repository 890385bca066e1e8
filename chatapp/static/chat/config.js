/*
 * The page's settings, read once from the meta tags the service renders.
 */

const readMeta = (name) =>
  document.querySelector(`meta[name="${name}"]`)?.getAttribute('content') ?? '';

/** Parse a space-separated list of origins, skipping malformed entries. */
export function normaliseOrigins(value) {
  const origins = [];
  for (const item of value.split(/\s+/)) {
    try {
      if (item) origins.push(new URL(item).origin);
    } catch {
      // A malformed entry can never match a real parent; skip it.
    }
  }
  return origins;
}

export const config = Object.freeze({
  api: readMeta('chatapp-api') || '/api',
  token: readMeta('chatapp-token'),
  embed: readMeta('chatapp-embed') === 'true',
  embedOrigins: normaliseOrigins(readMeta('chatapp-embed-origins')),
  maxChars: Number.parseInt(readMeta('chatapp-max-message-chars'), 10) || 4000,
  // An SSO page speaks for a WordPress user: its conversations belong to
  // that user, never to a token remembered from an anonymous visit.
  sso: new URLSearchParams(window.location.search).has('sso'),
});
