<?php
/**
 * Drive a real WordPress (Debian's package) from the command line, for the end-to-end test.
 *
 * Usage: php wp_site.php <wordpress_root> <command> [args…]
 *
 *   install <chatapp_url>        wp_install(), activate the plugin, point it at chatapp
 *                                and turn chatapp_push_content on
 *   publish <title> <content>    publish a post as the admin; prints {"id", "status", "url"}
 *   edit <id> <content>          update the published post's content
 *   trash <id>                   move the post to the trash
 *   state                        the plugin's queue and WP-Cron's view of it, as JSON
 *   retry                        run the plugin's cron event as WP-Cron will at the retry's
 *                                scheduled time (the test cannot wait out the back-off)
 *
 * Everything goes through WordPress's own API, so its hooks (the plugin's
 * transition_post_status) fire as they do for the editor. Every command prints one JSON
 * object; any PHP notice or warning fails the command.
 *
 * @package ChatappEmbed
 */

error_reporting( E_ALL );
set_error_handler(
	static function ( int $errno, string $errstr, string $errfile, int $errline ): bool {
		// WordPress 6.1 predates PHP 8.2: its own deprecations are not the plugin's.
		if ( E_DEPRECATED === $errno && false === strpos( $errfile, 'chatapp-embed' ) ) {
			return true;
		}
		throw new ErrorException( $errstr, 0, $errno, $errfile, $errline );
	}
);

$args = array_slice( $argv, 1 );
if ( count( $args ) < 2 ) {
	fwrite( STDERR, "usage: php wp_site.php <wordpress_root> <command> [args…]\n" );
	exit( 2 );
}
list( $root, $command ) = $args;
$args                   = array_slice( $args, 2 );

if ( 'install' === $command ) {
	define( 'WP_INSTALLING', true );
	/**
	 * No mail on install: the test machine has no mail transport.
	 */
	function wp_new_blog_notification(): void {
	}
}
require $root . '/wp-load.php';
require_once ABSPATH . 'wp-admin/includes/upgrade.php';
require_once ABSPATH . 'wp-admin/includes/plugin.php';

/**
 * Print the command's result and stop.
 *
 * @param mixed $result JSON-serialisable.
 */
function wp_site_done( $result ): void {
	echo wp_json_encode( $result, JSON_UNESCAPED_SLASHES ), "\n";
	exit( 0 );
}

/**
 * Stop with a message on stderr.
 *
 * @param string $message What went wrong.
 */
function wp_site_fail( string $message ): void {
	fwrite( STDERR, $message . "\n" );
	exit( 1 );
}

/**
 * A post as the test sees it.
 *
 * @param int $id The post's id.
 * @return array
 */
function wp_site_post( int $id ): array {
	$post = get_post( $id );
	if ( ! $post ) {
		wp_site_fail( "no post {$id}" );
	}
	return array(
		'id'     => $id,
		'status' => $post->post_status,
		'url'    => get_permalink( $post ),
	);
}

if ( 'install' === $command ) {
	$installed = wp_install( 'Chatapp e2e', 'admin', 'admin@example.invalid', false, '', wp_generate_password( 24 ) );
	$activated = activate_plugin( 'chatapp-embed/chatapp-embed.php' );
	if ( is_wp_error( $activated ) ) {
		wp_site_fail( $activated->get_error_message() );
	}
	update_option( 'chatapp_url', $args[0] );
	update_option( 'chatapp_push_content', '1' );
	wp_site_done(
		array(
			'user_id' => $installed['user_id'],
			'active'  => is_plugin_active( 'chatapp-embed/chatapp-embed.php' ),
		)
	);
}

wp_set_current_user( 1 ); // The admin wp_install() made, as the editor would be.

switch ( $command ) {
	case 'publish':
		$id = wp_insert_post(
			array(
				'post_title'   => $args[0],
				'post_content' => $args[1],
				'post_status'  => 'publish',
				'post_type'    => 'post',
			),
			true
		);
		if ( is_wp_error( $id ) ) {
			wp_site_fail( $id->get_error_message() );
		}
		wp_site_done( wp_site_post( $id ) );
		break;
	case 'edit':
		$id = wp_update_post(
			array(
				'ID'           => (int) $args[0],
				'post_content' => $args[1],
			),
			true
		);
		if ( is_wp_error( $id ) ) {
			wp_site_fail( $id->get_error_message() );
		}
		wp_site_done( wp_site_post( $id ) );
		break;
	case 'trash':
		if ( ! wp_trash_post( (int) $args[0] ) ) {
			wp_site_fail( "could not trash post {$args[0]}" );
		}
		wp_site_done( wp_site_post( (int) $args[0] ) );
		break;
	case 'state':
		wp_site_done(
			array(
				'queue'      => (object) chatapp_embed_push_queue(), // {} when empty
				'next'       => wp_next_scheduled( CHATAPP_EMBED_PUSH_HOOK ),
				'doing_cron' => get_transient( 'doing_cron' ),
				'now'        => time(),
			)
		);
		break;
	case 'retry':
		$at = wp_next_scheduled( CHATAPP_EMBED_PUSH_HOOK );
		if ( false === $at ) {
			wp_site_fail( 'no retry scheduled' );
		}
		// What wp-cron.php does with a due event: unschedule it, then run its hook.
		wp_unschedule_event( $at, CHATAPP_EMBED_PUSH_HOOK );
		chatapp_embed_push_run( $at );
		wp_site_done( array( 'ran_at' => $at ) );
		break;
	default:
		wp_site_fail( "unknown command {$command}" );
}
