<?php
/**
 * Remove the plugin's data when it is deleted from the Plugins screen.
 *
 * The shared secret lives only in wp-config.php, so there is nothing else to remove.
 *
 * @package ChatappEmbed
 */

defined( 'WP_UNINSTALL_PLUGIN' ) || exit;

delete_option( 'chatapp_url' );
delete_option( 'chatapp_widget' );
delete_option( 'chatapp_push_content' );
delete_option( 'chatapp_push_queue' );
wp_clear_scheduled_hook( 'chatapp_embed_push' );
