<?php
/**
 * Signed single sign-on tokens for chatapp: a minimal HS256 JWT encoder.
 *
 * Only what the plugin needs: encode and sign. The chatapp server verifies.
 *
 * @package ChatappEmbed
 */

defined( 'ABSPATH' ) || exit;

/**
 * Seconds an SSO token stays valid. The server refuses more than 600.
 */
const CHATAPP_EMBED_SSO_TTL = 300;

/**
 * Audience claim the chatapp server expects.
 */
const CHATAPP_EMBED_SSO_AUDIENCE = 'chatapp';

/**
 * Encode bytes as base64url without padding (RFC 7515, section 2).
 *
 * @param string $data Raw bytes.
 * @return string
 */
function chatapp_embed_base64url_encode( string $data ): string {
	return rtrim( strtr( base64_encode( $data ), '+/', '-_' ), '=' ); // phpcs:ignore WordPress.PHP.DiscouragedPHPFunctions.obfuscation_base64_encode -- JWT encoding, not obfuscation.
}

/**
 * Encode and sign claims as an HS256 JSON Web Token.
 *
 * @param array  $claims JSON-serialisable claims.
 * @param string $secret Shared HMAC secret.
 * @return string The token, or '' when the claims cannot be encoded or the secret is empty.
 */
function chatapp_embed_jwt_encode( array $claims, string $secret ): string {
	if ( '' === $secret ) {
		return '';
	}
	$header  = wp_json_encode( array( 'alg' => 'HS256', 'typ' => 'JWT' ) );
	$payload = wp_json_encode( $claims, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE );
	if ( ! is_string( $header ) || ! is_string( $payload ) ) {
		return '';
	}
	$signing_input = chatapp_embed_base64url_encode( $header ) . '.' . chatapp_embed_base64url_encode( $payload );
	$signature     = hash_hmac( 'sha256', $signing_input, $secret, true );
	return $signing_input . '.' . chatapp_embed_base64url_encode( $signature );
}

/**
 * The shared secret from wp-config.php, or '' when it is not defined.
 *
 * It is read only from the CHATAPP_WP_SHARED_SECRET constant and never stored in the database.
 *
 * @return string
 */
function chatapp_embed_secret(): string {
	if ( ! defined( 'CHATAPP_WP_SHARED_SECRET' ) || ! is_scalar( CHATAPP_WP_SHARED_SECRET ) ) {
		return '';
	}
	return (string) CHATAPP_WP_SHARED_SECRET;
}

/**
 * The SSO claims that identify a WordPress user to chatapp.
 *
 * @param WP_User  $user The user to identify.
 * @param int|null $now  Unix time to issue at; defaults to the current time.
 * @return array
 */
function chatapp_embed_sso_claims( WP_User $user, ?int $now = null ): array {
	$issued_at = null === $now ? time() : $now;
	return array(
		'sub'  => (string) $user->ID,
		'name' => (string) $user->display_name,
		'site' => (string) home_url(),
		'iat'  => $issued_at,
		'exp'  => $issued_at + CHATAPP_EMBED_SSO_TTL,
		'aud'  => CHATAPP_EMBED_SSO_AUDIENCE,
	);
}

/**
 * A signed SSO token for a logged-in user.
 *
 * @param WP_User     $user   The user to identify; must be logged in (ID above 0).
 * @param int|null    $now    Unix time to issue at; defaults to the current time.
 * @param string|null $secret HMAC secret; defaults to CHATAPP_WP_SHARED_SECRET.
 * @return string The token, or '' for a logged-out user or a missing secret.
 */
function chatapp_embed_sso_token( WP_User $user, ?int $now = null, ?string $secret = null ): string {
	if ( (int) $user->ID <= 0 ) {
		return '';
	}
	$key = null === $secret ? chatapp_embed_secret() : $secret;
	return chatapp_embed_jwt_encode( chatapp_embed_sso_claims( $user, $now ), $key );
}
