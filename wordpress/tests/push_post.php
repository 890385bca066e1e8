<?php
/**
 * Publish, then trash, a post through the plugin's push code against a real chatapp.
 *
 * Usage: php push_post.php <chatapp_url> <secret> <title> <content> <publish|trash>
 *
 * The WordPress stand-ins send the plugin's requests for real (PHP's HTTP streams); the
 * post is https://wp.example/chatapp-push-test/. Prints one line per request sent:
 * "<method> <status>" (status 0 when chatapp could not be reached), then the queue size.
 *
 * @package ChatappEmbed
 */

error_reporting( E_ALL );
set_error_handler(
	static function ( int $errno, string $errstr, string $errfile, int $errline ): bool {
		throw new ErrorException( $errstr, 0, $errno, $errfile, $errline );
	}
);

$args = array_slice( $argv, 1 );
if ( 5 !== count( $args ) || ! in_array( $args[4], array( 'publish', 'trash' ), true ) ) {
	fwrite( STDERR, "usage: php push_post.php <chatapp_url> <secret> <title> <content> <publish|trash>\n" );
	exit( 2 );
}
list( $chatapp, $secret, $title, $content, $action ) = $args;
define( 'CHATAPP_WP_SHARED_SECRET', $secret );
define( 'CHATAPP_URL', $chatapp );

require __DIR__ . '/stubs.php';
require __DIR__ . '/../chatapp-embed/chatapp-embed.php';

$GLOBALS['chatapp_wp']['http_live'] = true;
update_option( 'chatapp_push_content', '1' );
$post = chatapp_test_post(
	array(
		'ID'           => 77,
		'post_type'    => 'page',
		'post_name'    => 'chatapp-push-test',
		'post_title'   => $title,
		'post_content' => $content,
	)
);
chatapp_test_transition( $post, 'publish' );
if ( 'trash' === $action ) {
	chatapp_test_transition( $post, 'trash', array( 'post_name' => 'chatapp-push-test__trashed' ) );
}
chatapp_test_run_cron( 'chatapp_embed_push' );

foreach ( $GLOBALS['chatapp_wp']['http'] as $request ) {
	echo $request['args']['method'], ' ', (int) wp_remote_retrieve_response_code( $request['response'] ), "\n";
}
echo 'queued ', count( chatapp_embed_push_queue() ), "\n";
