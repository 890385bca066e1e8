<?php
/**
 * Minimal stand-ins for the WordPress functions the plugin calls.
 *
 * Escaping stand-ins really escape, so tests about escaping mean something.
 * All state lives in $GLOBALS['chatapp_wp'] and is reset by chatapp_test_reset().
 *
 * @package ChatappEmbed
 */

if ( ! defined( 'ABSPATH' ) ) {
	define( 'ABSPATH', __DIR__ . '/' );
}

/**
 * A WordPress user, as much of one as the plugin reads.
 */
class WP_User {
	/** @var int */
	public $ID = 0;
	/** @var string */
	public $display_name = '';
	/** @var string */
	public $user_login = '';

	public function __construct( int $id = 0, string $display_name = '', string $user_login = '' ) {
		$this->ID           = $id;
		$this->display_name = $display_name;
		$this->user_login   = $user_login;
	}

	public function exists(): bool {
		return $this->ID > 0;
	}
}

/**
 * Forget every option, user, hook, script and setting registered so far.
 */
function chatapp_test_reset(): void {
	$shortcodes = $GLOBALS['chatapp_wp']['shortcodes'] ?? array();
	$actions    = $GLOBALS['chatapp_wp']['actions'] ?? array();
	$filters    = $GLOBALS['chatapp_wp']['filters'] ?? array();
	$GLOBALS['chatapp_wp'] = array(
		// Registrations made when the plugin file loads survive a reset.
		'shortcodes'      => $shortcodes,
		'actions'         => $actions,
		'filters'         => $filters,
		'options'         => array(),
		'option_cache'    => array(),
		'user'            => new WP_User(),
		'caps'            => array(),
		'home'            => 'https://wp.example',
		'scripts'         => array(),
		'enqueued'        => array(),
		'localized'       => array(),
		'settings'        => array(),
		'sections'        => array(),
		'fields'          => array(),
		'pages'           => array(),
		'settings_errors' => array(),
		'unique_id'       => 0,
		'posts'           => array(),
		'meta'            => array(),
		'current_post'    => 0,
		'http'            => array(),
		'http_responses'  => array(),
		'http_live'       => false,
		'spawned'         => 0,
		'locale'          => 'en_US',
	);
}
chatapp_test_reset();

/** Log a user in with the given capabilities. */
function chatapp_test_login( WP_User $user, array $caps = array() ): void {
	$GLOBALS['chatapp_wp']['user'] = $user;
	$GLOBALS['chatapp_wp']['caps'] = $caps;
}

// Hooks and shortcodes.

function add_action( $hook, $callback, $priority = 10, $accepted_args = 1 ) {
	$GLOBALS['chatapp_wp']['actions'][ $hook ][] = $callback;
	return true;
}

function do_action( $hook, ...$args ) {
	foreach ( $GLOBALS['chatapp_wp']['actions'][ $hook ] ?? array() as $callback ) {
		call_user_func_array( $callback, $args );
	}
}

function add_filter( $hook, $callback, $priority = 10, $accepted_args = 1 ) {
	$GLOBALS['chatapp_wp']['filters'][ $hook ][] = $callback;
	return true;
}

function apply_filters( $hook, $value, ...$args ) {
	foreach ( $GLOBALS['chatapp_wp']['filters'][ $hook ] ?? array() as $callback ) {
		$value = call_user_func( $callback, $value, ...$args );
	}
	return $value;
}

function add_shortcode( $tag, $callback ) {
	$GLOBALS['chatapp_wp']['shortcodes'][ $tag ] = $callback;
}

/** Run a registered shortcode the way do_shortcode() would. */
function chatapp_test_shortcode( string $tag, $atts = '', $content = '' ) {
	return call_user_func( $GLOBALS['chatapp_wp']['shortcodes'][ $tag ], $atts, $content, $tag );
}

function shortcode_atts( $pairs, $atts, $shortcode = '' ) {
	$atts = (array) $atts;
	$out  = array();
	foreach ( $pairs as $name => $default ) {
		$out[ $name ] = array_key_exists( $name, $atts ) ? $atts[ $name ] : $default;
	}
	if ( $shortcode ) {
		$out = apply_filters( "shortcode_atts_{$shortcode}", $out, $pairs, $atts, $shortcode );
	}
	return $out;
}

// Translation: identity.

function __( $text, $domain = 'default' ) {
	return $text;
}

function esc_html__( $text, $domain = 'default' ) {
	return esc_html( $text );
}

function esc_attr__( $text, $domain = 'default' ) {
	return esc_attr( $text );
}

// Escaping and sanitising: real escaping, close to WordPress's own.

function esc_html( $text ) {
	return htmlspecialchars( (string) $text, ENT_QUOTES | ENT_SUBSTITUTE, 'UTF-8', false );
}

function esc_attr( $text ) {
	return htmlspecialchars( (string) $text, ENT_QUOTES | ENT_SUBSTITUTE, 'UTF-8', false );
}

function get_locale() {
	return $GLOBALS['chatapp_wp']['locale'];
}

function wp_allowed_protocols() {
	return array( 'http', 'https', 'ftp', 'ftps', 'mailto', 'news', 'irc', 'irc6', 'ircs', 'gopher', 'nntp', 'feed', 'telnet', 'mms', 'rtsp', 'sms', 'svn', 'tel', 'fax', 'xmpp', 'webcal', 'urn' );
}

function esc_url( $url, $protocols = null, $_context = 'display' ) {
	$url = trim( (string) $url );
	if ( '' === $url ) {
		return '';
	}
	// Like WordPress: drop every character that cannot appear in a URL (spaces, quotes, angle brackets, controls).
	$url = str_replace( ' ', '%20', ltrim( $url ) );
	$url = (string) preg_replace( '|[^a-z0-9-~+_.?#=!&;,/:%@$\|*\'()\[\]\x80-\xff]|i', '', $url );
	if ( '' === $url ) {
		return '';
	}
	if ( false === strpos( $url, ':' ) && ! in_array( $url[0], array( '/', '#', '?' ), true ) && ! preg_match( '/^[a-z0-9-]+?\.php/i', $url ) ) {
		$url = 'http://' . $url;
	}
	$protocols = null === $protocols ? wp_allowed_protocols() : $protocols;
	if ( preg_match( '/^([^:\/?#]+):/', $url, $m ) && ! in_array( strtolower( $m[1] ), $protocols, true ) ) {
		return '';
	}
	if ( 'display' === $_context ) {
		$url = str_replace( array( '&amp;', '&', "'" ), array( '&#038;', '&#038;', '&#039;' ), $url );
	}
	return $url;
}

function esc_url_raw( $url, $protocols = null ) {
	return esc_url( $url, $protocols, 'db' );
}

function absint( $maybeint ) {
	return abs( (int) $maybeint );
}

function wp_parse_url( $url, $component = -1 ) {
	return parse_url( (string) $url, $component );
}

function wp_json_encode( $data, $options = 0, $depth = 512 ) {
	return json_encode( $data, $options | JSON_INVALID_UTF8_SUBSTITUTE, $depth );
}

function wp_unique_id( $prefix = '' ) {
	return $prefix . (string) ++$GLOBALS['chatapp_wp']['unique_id'];
}

// Options: the database ('options') and this request's cache of it ('option_cache'), as
// WordPress keeps one: an option read once is not read again in the same request until the
// request writes it or wp_cache_delete( $option, 'options' ) drops it.
// chatapp_test_other_request() runs code as another request, leaving this cache stale.

function get_option( $option, $default_value = false ) {
	$cache = &$GLOBALS['chatapp_wp']['option_cache'];
	if ( ! array_key_exists( $option, $cache ) ) {
		$stored           = $GLOBALS['chatapp_wp']['options'];
		$cache[ $option ] = array_key_exists( $option, $stored ) ? array( $stored[ $option ] ) : array();
	}
	return array() === $cache[ $option ] ? $default_value : $cache[ $option ][0];
}

function update_option( $option, $value, $autoload = null ) {
	$value  = apply_filters( "sanitize_option_{$option}", $value, $option, $value );
	$stored = $GLOBALS['chatapp_wp']['options'];
	// As in WordPress: a value equal to this request's copy is not written, and neither is one
	// the database holds already (no row changes, so the call "fails" and this request's
	// copy stays as it was, however stale).
	if ( get_option( $option, null ) === $value || ( array_key_exists( $option, $stored ) && $stored[ $option ] === $value ) ) {
		return false;
	}
	$GLOBALS['chatapp_wp']['options'][ $option ]      = $value;
	$GLOBALS['chatapp_wp']['option_cache'][ $option ] = array( $value );
	return true;
}

function delete_option( $option ) {
	$existed = array_key_exists( $option, $GLOBALS['chatapp_wp']['options'] );
	unset( $GLOBALS['chatapp_wp']['options'][ $option ] );
	$GLOBALS['chatapp_wp']['option_cache'][ $option ] = array();
	return $existed;
}

function wp_cache_delete( $key, $group = '' ) {
	if ( 'options' === $group && 'alloptions' === $key ) {
		$GLOBALS['chatapp_wp']['option_cache'] = array(); // every option here is autoloaded
	} elseif ( 'options' === $group ) {
		unset( $GLOBALS['chatapp_wp']['option_cache'][ $key ] );
	}
	return true;
}

function wp_cache_get( $key, $group = '', $force = false, &$found = null ) {
	$found = false;
	return false;
}

function wp_cache_set( $key, $data, $group = '', $expire = 0 ) {
	return true;
}

/** Run $fn as another request would: its own option cache, the same database. */
function chatapp_test_other_request( callable $fn ): void {
	$mine                                   = $GLOBALS['chatapp_wp']['option_cache'];
	$GLOBALS['chatapp_wp']['option_cache'] = array();
	try {
		$fn();
	} finally {
		$GLOBALS['chatapp_wp']['option_cache'] = $mine;
	}
}

function wp_generate_uuid4() {
	$hex = bin2hex( random_bytes( 16 ) );
	return substr( $hex, 0, 8 ) . '-' . substr( $hex, 8, 4 ) . '-4' . substr( $hex, 13, 3 ) . '-a' . substr( $hex, 17, 3 ) . '-' . substr( $hex, 20, 12 );
}

// Users.

function wp_get_current_user() {
	return $GLOBALS['chatapp_wp']['user'];
}

function is_user_logged_in() {
	return wp_get_current_user()->exists();
}

function current_user_can( $capability, ...$args ) {
	return in_array( $capability, $GLOBALS['chatapp_wp']['caps'], true );
}

// URLs and paths.

function home_url( $path = '', $scheme = null ) {
	return rtrim( $GLOBALS['chatapp_wp']['home'], '/' ) . ( $path ? '/' . ltrim( $path, '/' ) : '' );
}

function admin_url( $path = '', $scheme = 'admin' ) {
	return home_url( '/wp-admin/' . ltrim( $path, '/' ) );
}

function plugin_basename( $file ) {
	return basename( dirname( $file ) ) . '/' . basename( $file );
}

function plugin_dir_path( $file ) {
	return rtrim( dirname( $file ), '/' ) . '/';
}

function plugin_dir_url( $file ) {
	return home_url( '/wp-content/plugins/' . basename( dirname( $file ) ) . '/' );
}

function plugins_url( $path = '', $plugin = '' ) {
	$base = $plugin ? rtrim( plugin_dir_url( $plugin ), '/' ) : home_url( '/wp-content/plugins' );
	return $base . ( $path ? '/' . ltrim( $path, '/' ) : '' );
}

// Scripts.

function wp_register_script( $handle, $src, $deps = array(), $ver = false, $args = array() ) {
	$GLOBALS['chatapp_wp']['scripts'][ $handle ] = compact( 'src', 'deps', 'ver', 'args' );
	return true;
}

function wp_enqueue_script( $handle, $src = '', $deps = array(), $ver = false, $args = array() ) {
	if ( $src ) {
		wp_register_script( $handle, $src, $deps, $ver, $args );
	}
	$GLOBALS['chatapp_wp']['enqueued'][] = $handle;
}

function wp_get_script_tag( $attributes ) {
	$tag = '<script';
	foreach ( $attributes as $name => $value ) {
		if ( is_bool( $value ) ) {
			$tag .= $value ? ' ' . esc_attr( $name ) : '';
		} else {
			$tag .= sprintf( ' %s="%s"', esc_attr( $name ), esc_attr( $value ) );
		}
	}
	return $tag . "></script>\n";
}

function wp_localize_script( $handle, $object_name, $l10n ) {
	$GLOBALS['chatapp_wp']['localized'][ $handle ][ $object_name ] = $l10n;
	return true;
}

// Settings API.

function register_setting( $option_group, $option_name, $args = array() ) {
	$GLOBALS['chatapp_wp']['settings'][ $option_name ] = array( 'group' => $option_group ) + $args;
	if ( ! empty( $args['sanitize_callback'] ) ) {
		add_filter( "sanitize_option_{$option_name}", $args['sanitize_callback'] );
	}
}

function add_options_page( $page_title, $menu_title, $capability, $menu_slug, $callback = '', $position = null ) {
	$GLOBALS['chatapp_wp']['pages'][ $menu_slug ] = compact( 'page_title', 'menu_title', 'capability', 'callback' );
	return 'settings_page_' . $menu_slug;
}

function add_settings_section( $id, $title, $callback, $page, $args = array() ) {
	$GLOBALS['chatapp_wp']['sections'][ $page ][ $id ] = compact( 'title', 'callback' );
}

function add_settings_field( $id, $title, $callback, $page, $section = 'default', $args = array() ) {
	$GLOBALS['chatapp_wp']['fields'][ $page ][ $section ][ $id ] = compact( 'title', 'callback', 'args' );
}

function add_settings_error( $setting, $code, $message, $type = 'error' ) {
	$GLOBALS['chatapp_wp']['settings_errors'][] = compact( 'setting', 'code', 'message', 'type' );
}

function settings_fields( $option_group ) {
	echo '<input type="hidden" name="option_page" value="' . esc_attr( $option_group ) . '" />';
}

function do_settings_sections( $page ) {
	foreach ( $GLOBALS['chatapp_wp']['sections'][ $page ] ?? array() as $id => $section ) {
		echo '<h2>' . esc_html( $section['title'] ) . '</h2>';
		if ( $section['callback'] ) {
			call_user_func( $section['callback'], $section );
		}
		foreach ( $GLOBALS['chatapp_wp']['fields'][ $page ][ $id ] ?? array() as $field ) {
			echo '<div class="field"><span>' . esc_html( $field['title'] ) . '</span>';
			call_user_func( $field['callback'], $field['args'] );
			echo '</div>';
		}
	}
}

function submit_button( $text = null, $type = 'primary', $name = 'submit', $wrap = true, $other_attributes = null ) {
	echo '<input type="submit" name="' . esc_attr( $name ) . '" class="button button-' . esc_attr( $type ) . '" value="' . esc_attr( $text ? $text : 'Save Changes' ) . '" />';
}

// Posts and their meta.

/**
 * A post, as much of one as the plugin reads.
 */
class WP_Post {
	/** @var int */
	public $ID = 0;
	/** @var string */
	public $post_type = 'post';
	/** @var string */
	public $post_status = 'draft';
	/** @var string */
	public $post_title = '';
	/** @var string */
	public $post_name = '';
	/** @var string */
	public $post_content = '';
	/** @var string */
	public $post_password = '';
	/** @var string */
	public $post_modified_gmt = '2026-12-01 10:00:00';
	/** @var int */
	public $post_parent = 0;

	public function __construct( array $fields = array() ) {
		foreach ( $fields as $name => $value ) {
			$this->$name = $value;
		}
	}
}

/** Store a post (as wp_insert_post would) and return it. */
function chatapp_test_post( array $fields ): WP_Post {
	$post = new WP_Post( $fields );
	$GLOBALS['chatapp_wp']['posts'][ $post->ID ] = $post;
	return $post;
}

/** Change a post's status as WordPress does: store it, then fire transition_post_status. */
function chatapp_test_transition( WP_Post $post, string $new_status, array $changes = array() ): void {
	$old_status = $post->post_status;
	foreach ( $changes as $name => $value ) {
		$post->$name = $value;
	}
	$post->post_status = $new_status;
	$GLOBALS['chatapp_wp']['posts'][ $post->ID ] = $post;
	do_action( 'transition_post_status', $new_status, $old_status, $post );
}

function get_post( $post = null ) {
	if ( $post instanceof WP_Post ) {
		return $post;
	}
	$id = null === $post ? $GLOBALS['chatapp_wp']['current_post'] : (int) $post;
	return $GLOBALS['chatapp_wp']['posts'][ $id ] ?? null;
}

function get_permalink( $post = 0 ) {
	$post = get_post( 0 === $post ? null : $post );
	if ( ! $post instanceof WP_Post ) {
		return false;
	}
	if ( 'publish' !== $post->post_status || '' === $post->post_name ) {
		return home_url( '/?p=' . $post->ID );
	}
	return home_url( '/' . $post->post_name . '/' );
}

function get_the_title( $post = 0 ) {
	$post = get_post( $post );
	return $post instanceof WP_Post ? str_replace( "'", '&#8217;', $post->post_title ) : '';
}

function get_post_modified_time( $format = 'U', $gmt = false, $post = null, $translate = false ) {
	$post = get_post( $post );
	return $post instanceof WP_Post ? strtotime( $post->post_modified_gmt . ' UTC' ) : false;
}

function wp_is_post_revision( $post ) {
	$post = get_post( $post );
	return $post instanceof WP_Post && 'revision' === $post->post_type ? $post->post_parent : false;
}

function wp_is_post_autosave( $post ) {
	$post = get_post( $post );
	return $post instanceof WP_Post && 'revision' === $post->post_type && false !== strpos( $post->post_name, 'autosave' ) ? $post->post_parent : false;
}

function wp_strip_all_tags( $text, $remove_breaks = false ) {
	return trim( strip_tags( (string) preg_replace( '@<(script|style)[^>]*?>.*?</\\1>@si', '', (string) $text ) ) );
}

function get_post_meta( $post_id, $key = '', $single = false ) {
	$value = $GLOBALS['chatapp_wp']['meta'][ $post_id ][ $key ] ?? null;
	return null === $value ? ( $single ? '' : array() ) : ( $single ? $value : array( $value ) );
}

function update_post_meta( $post_id, $meta_key, $meta_value, $prev_value = '' ) {
	$GLOBALS['chatapp_wp']['meta'][ $post_id ][ $meta_key ] = $meta_value;
	return true;
}

function delete_post_meta( $post_id, $meta_key, $meta_value = '' ) {
	unset( $GLOBALS['chatapp_wp']['meta'][ $post_id ][ $meta_key ] );
	return true;
}

// HTTP: recorded, answered from a queue (default 200), or sent for real when http_live is on.

/**
 * An error, as WordPress returns one.
 */
class WP_Error {
	/** @var string */
	public $code;
	/** @var string */
	public $message;

	public function __construct( string $code = '', string $message = '' ) {
		$this->code    = $code;
		$this->message = $message;
	}
}

function is_wp_error( $thing ) {
	return $thing instanceof WP_Error;
}

function wp_remote_request( $url, $args = array() ) {
	if ( $GLOBALS['chatapp_wp']['http_live'] ) {
		$response = chatapp_test_http_live( $url, $args );
	} else {
		$response = array_shift( $GLOBALS['chatapp_wp']['http_responses'] );
	}
	if ( $response instanceof Closure ) {
		$response = $response(); // What happens elsewhere while the request is under way.
	}
	if ( null === $response ) {
		$response = array( 'response' => array( 'code' => 200 ), 'body' => '{}' );
	}
	$GLOBALS['chatapp_wp']['http'][] = array( 'url' => $url, 'args' => $args, 'response' => $response );
	return $response;
}

/** Send a request over the network with PHP's own HTTP streams (tests against a real chatapp). */
function chatapp_test_http_live( string $url, array $args ) {
	$headers = array();
	foreach ( $args['headers'] ?? array() as $name => $value ) {
		$headers[] = $name . ': ' . $value;
	}
	$context = stream_context_create(
		array(
			'http' => array(
				'method'          => $args['method'] ?? 'GET',
				'header'          => implode( "\r\n", $headers ),
				'content'         => $args['body'] ?? '',
				'timeout'         => (float) ( $args['timeout'] ?? 5 ),
				'ignore_errors'   => true,
				'follow_location' => 0,
			),
		)
	);
	// A refused connection is a warning; WordPress turns it into a WP_Error, so do we.
	set_error_handler( static function (): bool { return true; } );
	try {
		$body = file_get_contents( $url, false, $context ); // phpcs:ignore -- a test stand-in.
	} finally {
		restore_error_handler();
	}
	if ( false === $body || ! isset( $http_response_header[0] ) ) {
		return new WP_Error( 'http_request_failed', 'no response from ' . $url );
	}
	preg_match( '#^HTTP/\S+\s+(\d{3})#', $http_response_header[0], $m );
	return array( 'response' => array( 'code' => (int) ( $m[1] ?? 0 ) ), 'body' => $body );
}

function wp_remote_retrieve_response_code( $response ) {
	return is_array( $response ) ? ( $response['response']['code'] ?? '' ) : '';
}

// WP-Cron: the schedule is the 'cron' option, cached per request like any other (so a cron
// run works on its own, possibly stale, copy of it, as in WordPress).

function chatapp_test_cron_events(): array {
	return get_option( 'cron', array() );
}

function wp_schedule_single_event( $timestamp, $hook, $args = array(), $wp_error = false ) {
	$events   = chatapp_test_cron_events();
	$events[] = array( 'time' => (int) $timestamp, 'hook' => $hook );
	update_option( 'cron', $events );
	return true;
}

function wp_next_scheduled( $hook, $args = array() ) {
	$times = array();
	foreach ( chatapp_test_cron_events() as $event ) {
		if ( $event['hook'] === $hook ) {
			$times[] = $event['time'];
		}
	}
	return array() === $times ? false : min( $times );
}

function wp_clear_scheduled_hook( $hook, $args = array(), $wp_error = false ) {
	$before = chatapp_test_cron_events();
	$kept   = array_values(
		array_filter(
			$before,
			static function ( $event ) use ( $hook ) {
				return $event['hook'] !== $hook;
			}
		)
	);
	update_option( 'cron', $kept );
	return count( $before ) - count( $kept );
}

function spawn_cron( $gmt_time = 0 ) {
	++$GLOBALS['chatapp_wp']['spawned'];
}

/** Run the due WP-Cron events of a hook, as wp-cron.php would. */
function chatapp_test_run_cron( string $hook, ?int $now = null ): int {
	$now  = null === $now ? time() : $now;
	$due  = 0;
	$kept = array();
	foreach ( chatapp_test_cron_events() as $event ) {
		if ( $event['hook'] === $hook && $event['time'] <= $now ) {
			++$due;
		} else {
			$kept[] = $event;
		}
	}
	update_option( 'cron', $kept );
	for ( $i = 0; $i < $due; $i++ ) {
		do_action( $hook );
	}
	return $due;
}
