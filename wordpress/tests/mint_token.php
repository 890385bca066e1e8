<?php
/**
 * Print an SSO token minted by the plugin's own code, for cross-language tests.
 *
 * Usage: php mint_token.php <secret> <sub> <name> <site> [ttl_seconds]
 *
 * <sub> is a WordPress user id (a positive integer); <site> becomes home_url().
 * Without ttl_seconds the token is exactly what the shortcode would embed; with it,
 * exp is iat + ttl_seconds (negative for an already expired token).
 *
 * @package ChatappEmbed
 */

error_reporting( E_ALL );
set_error_handler(
	static function ( int $errno, string $errstr, string $errfile, int $errline ): bool {
		throw new ErrorException( $errstr, 0, $errno, $errfile, $errline );
	}
);

require __DIR__ . '/stubs.php';
require __DIR__ . '/../chatapp-embed/includes/jwt.php';

$args = array_slice( $argv, 1 );
if ( count( $args ) < 4 || count( $args ) > 5 || ! ctype_digit( $args[1] ) || (int) $args[1] <= 0
	|| ( isset( $args[4] ) && 1 !== preg_match( '/^-?\d+$/', $args[4] ) ) ) {
	fwrite( STDERR, "usage: php mint_token.php <secret> <sub> <name> <site> [ttl_seconds]\n" );
	exit( 2 );
}
list( $secret, $sub, $name, $site ) = $args;

$GLOBALS['chatapp_wp']['home'] = $site;
$user                          = new WP_User( (int) $sub, $name );

if ( isset( $args[4] ) ) {
	$claims        = chatapp_embed_sso_claims( $user );
	$claims['exp'] = $claims['iat'] + (int) $args[4];
	$token         = chatapp_embed_jwt_encode( $claims, $secret );
} else {
	$token = chatapp_embed_sso_token( $user, null, $secret );
}

if ( '' === $token ) {
	fwrite( STDERR, "no token: the secret is empty\n" );
	exit( 1 );
}
echo $token, "\n";
