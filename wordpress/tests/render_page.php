<?php
/**
 * Print a whole WordPress-like page holding the [ai_chat] shortcode, rendered
 * by the plugin's own code, for the browser tests.
 *
 * Usage: php render_page.php <home_url> <chatapp_url> <secret> <user_id> <name>
 *
 * A <user_id> of 0 renders for a logged-out visitor. The enqueued script is
 * printed as WordPress prints footer scripts, from <home_url>.
 *
 * @package ChatappEmbed
 */

error_reporting( E_ALL );
set_error_handler(
	static function ( int $errno, string $errstr, string $errfile, int $errline ): bool {
		throw new ErrorException( $errstr, 0, $errno, $errfile, $errline );
	}
);

if ( 6 !== count( $argv ) || ! ctype_digit( $argv[4] ) ) {
	fwrite( STDERR, "usage: php render_page.php <home_url> <chatapp_url> <secret> <user_id> <name>\n" );
	exit( 2 );
}
list( , $home, $chatapp, $secret, $user_id, $name ) = $argv;

define( 'CHATAPP_WP_SHARED_SECRET', $secret );
require __DIR__ . '/stubs.php';
require __DIR__ . '/../chatapp-embed/chatapp-embed.php';

$GLOBALS['chatapp_wp']['home'] = $home;
update_option( 'chatapp_url', $chatapp );
if ( '0' !== $user_id ) {
	chatapp_test_login( new WP_User( (int) $user_id, $name ) );
}

$body    = chatapp_test_shortcode( 'ai_chat', array( 'title' => 'Ask us' ) );
$scripts = '';
foreach ( $GLOBALS['chatapp_wp']['enqueued'] as $handle ) {
	$script   = $GLOBALS['chatapp_wp']['scripts'][ $handle ];
	$scripts .= '<script src="' . esc_url( $script['src'] ) . '"></script>' . "\n";
}

echo "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>A WordPress page</title></head>\n";
echo "<body><h1>Our help page</h1>\n" . $body . "\n" . $scripts . "</body></html>\n";
