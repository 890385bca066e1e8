<?php
/**
 * Plugin Name:       Chatapp Embed
 * Description:       Embed a self-hosted chatapp AI chat with the [ai_chat] shortcode, signing in logged-in users with a short-lived token, or show chatapp's chat widget on every page.
 * Version:           1.0.0
 * Requires at least: 6.0
 * Requires PHP:      7.4
 * License:           GPL-2.0-or-later
 * License URI:       https://www.gnu.org/licenses/gpl-2.0.html
 * Text Domain:       chatapp-embed
 *
 * @package ChatappEmbed
 */

defined( 'ABSPATH' ) || exit;

const CHATAPP_EMBED_VERSION       = '1.0.0';
const CHATAPP_EMBED_OPTION        = 'chatapp_url';
const CHATAPP_EMBED_WIDGET_OPTION = 'chatapp_widget';
const CHATAPP_EMBED_SETTINGS_PAGE = 'chatapp-embed';
const CHATAPP_EMBED_HEIGHT        = 600;
const CHATAPP_EMBED_MIN_HEIGHT    = 200;
const CHATAPP_EMBED_MAX_HEIGHT    = 2000;

define( 'CHATAPP_EMBED_FILE', __FILE__ );

require_once __DIR__ . '/includes/jwt.php';
require_once __DIR__ . '/includes/push.php';

/**
 * Reduce a URL to scheme://host[:port][/path] when it is http(s), else ''.
 *
 * Query, fragment, credentials and the trailing slash are dropped, so '/embed' can be appended.
 *
 * @param mixed $value Candidate URL.
 * @return string
 */
function chatapp_embed_normalize_url( $value ): string {
	if ( ! is_string( $value ) ) {
		return '';
	}
	$url = esc_url_raw( trim( $value ), array( 'http', 'https' ) );
	if ( '' === $url ) {
		return '';
	}
	$parts = wp_parse_url( $url );
	if ( ! is_array( $parts ) || empty( $parts['scheme'] ) || empty( $parts['host'] ) ) {
		return '';
	}
	$scheme = strtolower( $parts['scheme'] );
	if ( 'http' !== $scheme && 'https' !== $scheme ) {
		return '';
	}
	$normalized = $scheme . '://' . strtolower( $parts['host'] );
	if ( isset( $parts['port'] ) ) {
		$normalized .= ':' . (int) $parts['port'];
	}
	if ( isset( $parts['path'] ) ) {
		$normalized .= $parts['path'];
	}
	return rtrim( $normalized, '/' );
}

/**
 * Sanitise the chatapp_url option on save; an invalid URL keeps the previous value.
 *
 * @param mixed $value Submitted value.
 * @return string
 */
function chatapp_embed_sanitize_url( $value ): string {
	if ( null === $value || ( is_string( $value ) && '' === trim( $value ) ) ) {
		return '';
	}
	$url = chatapp_embed_normalize_url( $value );
	if ( '' !== $url ) {
		return $url;
	}
	if ( function_exists( 'add_settings_error' ) ) {
		add_settings_error(
			CHATAPP_EMBED_OPTION,
			'chatapp_embed_invalid_url',
			__( 'The chatapp URL must be an http:// or https:// address. The previous value was kept.', 'chatapp-embed' )
		);
	}
	return chatapp_embed_normalize_url( get_option( CHATAPP_EMBED_OPTION, '' ) );
}

/**
 * Whether the chatapp URL is fixed by the CHATAPP_URL constant.
 *
 * @return bool
 */
function chatapp_embed_url_is_constant(): bool {
	return defined( 'CHATAPP_URL' );
}

/**
 * The chatapp base URL (no trailing slash), or '' when none is configured.
 *
 * @return string
 */
function chatapp_embed_url(): string {
	if ( chatapp_embed_url_is_constant() ) {
		return chatapp_embed_normalize_url( CHATAPP_URL );
	}
	return chatapp_embed_normalize_url( get_option( CHATAPP_EMBED_OPTION, '' ) );
}

/**
 * The browser origin (scheme://host[:port]) of a URL, as event.origin reports it.
 *
 * @param string $url An http(s) URL.
 * @return string
 */
function chatapp_embed_origin( string $url ): string {
	$parts = wp_parse_url( $url );
	if ( ! is_array( $parts ) || empty( $parts['scheme'] ) || empty( $parts['host'] ) ) {
		return '';
	}
	$scheme        = strtolower( $parts['scheme'] );
	$origin        = $scheme . '://' . strtolower( $parts['host'] );
	$default_ports = array(
		'http'  => 80,
		'https' => 443,
	);
	if ( isset( $parts['port'] ) && ( ! isset( $default_ports[ $scheme ] ) || (int) $parts['port'] !== $default_ports[ $scheme ] ) ) {
		$origin .= ':' . (int) $parts['port'];
	}
	return $origin;
}

/**
 * Parse the height attribute: whole pixels, clamped to a sane range.
 *
 * @param mixed $value Attribute value.
 * @return int
 */
function chatapp_embed_height( $value ): int {
	$height = is_scalar( $value ) ? absint( $value ) : 0;
	if ( 0 === $height ) {
		return CHATAPP_EMBED_HEIGHT;
	}
	return max( CHATAPP_EMBED_MIN_HEIGHT, min( CHATAPP_EMBED_MAX_HEIGHT, $height ) );
}

/**
 * A notice shown only to users who can fix the configuration.
 *
 * @param string $message Plain-text message.
 * @return string
 */
function chatapp_embed_admin_notice( string $message ): string {
	if ( ! current_user_can( 'manage_options' ) ) {
		return '';
	}
	return '<p class="chatapp-embed-notice" role="status">' . esc_html( $message ) . '</p>';
}

/**
 * Render [ai_chat]: one iframe of <chatapp_url>/embed, signed in for logged-in users.
 *
 * @param array|string $atts Shortcode attributes ('' when there are none).
 * @return string
 */
function chatapp_embed_shortcode( $atts = array() ): string {
	$atts = shortcode_atts(
		array(
			'height' => (string) CHATAPP_EMBED_HEIGHT,
			'title'  => __( 'AI chat', 'chatapp-embed' ),
		),
		is_array( $atts ) ? $atts : array(),
		'ai_chat'
	);

	$base = chatapp_embed_url();
	if ( '' === $base ) {
		return '<!-- chatapp-embed: no chatapp URL configured -->'
			. chatapp_embed_admin_notice( __( 'Chatapp: set the chatapp URL under Settings → Chatapp to show the chat here.', 'chatapp-embed' ) );
	}

	$src     = $base . '/embed';
	// The chat speaks the site's language (its locale, e.g. de_DE).
	$query   = array( 'lang=' . rawurlencode( get_locale() ) );
	$notice  = '';
	$loading = 'lazy';
	if ( is_user_logged_in() ) {
		$token = chatapp_embed_sso_token( wp_get_current_user() );
		if ( '' !== $token ) {
			$query[] = 'sso=' . rawurlencode( $token );
			// The SSO token lives minutes; a lazy frame far down the page could
			// load after it expired and sign the user in anonymously.
			$loading = 'eager';
		} else {
			$notice = chatapp_embed_admin_notice( __( 'Chatapp: CHATAPP_WP_SHARED_SECRET is not defined in wp-config.php, so logged-in users chat anonymously.', 'chatapp-embed' ) );
		}
	}

	// The post's permalink: chatapp's site knowledge favours the page the visitor reads.
	$permalink = get_permalink();
	if ( is_string( $permalink ) && '' !== $permalink && strlen( $permalink ) <= 2048 ) {
		$query[] = 'page_url=' . rawurlencode( $permalink );
	}
	if ( array() !== $query ) {
		$src .= '?' . implode( '&', $query );
	}

	$title = is_scalar( $atts['title'] ) ? trim( (string) $atts['title'] ) : '';
	if ( '' === $title ) {
		$title = __( 'AI chat', 'chatapp-embed' );
	}
	$height = chatapp_embed_height( $atts['height'] );

	wp_enqueue_script(
		'chatapp-embed',
		plugins_url( 'assets/chatapp-embed.js', CHATAPP_EMBED_FILE ),
		array(),
		CHATAPP_EMBED_VERSION,
		true
	);

	return $notice . sprintf(
		'<iframe id="%1$s" class="chatapp-embed" src="%2$s" title="%3$s" height="%4$d" style="width:100%%;height:%4$dpx;border:none;" loading="%6$s" allow="clipboard-write" referrerpolicy="strict-origin-when-cross-origin" data-chatapp-embed data-chatapp-origin="%5$s"></iframe>',
		esc_attr( wp_unique_id( 'chatapp-embed-' ) ),
		esc_url( $src, array( 'http', 'https' ) ),
		esc_attr( $title ),
		$height,
		esc_attr( chatapp_embed_origin( $base ) ),
		esc_attr( $loading )
	);
}
add_shortcode( 'ai_chat', 'chatapp_embed_shortcode' );

/**
 * Whether chatapp's chat widget is shown on every front-end page.
 *
 * @return bool
 */
function chatapp_embed_widget_enabled(): bool {
	return '1' === get_option( CHATAPP_EMBED_WIDGET_OPTION, '' );
}

/**
 * Sanitise the widget checkbox on save: '1' when ticked, else ''.
 *
 * @param mixed $value Submitted value.
 * @return string
 */
function chatapp_embed_sanitize_flag( $value ): string {
	return ( '1' === $value || 1 === $value || true === $value ) ? '1' : '';
}

/**
 * The widget's script tag (<chatapp_url>/widget.js), or '' when off or unconfigured.
 *
 * The widget is chatapp's own launcher and panel; its chat is anonymous, so sites that
 * sign users in keep [ai_chat] where that matters.
 *
 * @return string
 */
function chatapp_embed_widget_tag(): string {
	$base = chatapp_embed_url();
	if ( '' === $base || ! chatapp_embed_widget_enabled() ) {
		return '';
	}
	return wp_get_script_tag(
		array(
			'src'        => esc_url_raw( $base . '/widget.js', array( 'http', 'https' ) ),
			'defer'      => true,
			'data-title' => __( 'AI chat', 'chatapp-embed' ),
			'data-lang'  => get_locale(),
		)
	);
}

/**
 * Print the widget's script tag in the footer of every front-end page.
 */
function chatapp_embed_print_widget(): void {
	echo chatapp_embed_widget_tag(); // phpcs:ignore WordPress.Security.EscapeOutput.OutputNotEscaped -- wp_get_script_tag() escapes every attribute.
}
add_action( 'wp_footer', 'chatapp_embed_print_widget' );

/**
 * Register the chatapp_url setting, its section and fields.
 */
function chatapp_embed_register_settings(): void {
	register_setting(
		CHATAPP_EMBED_SETTINGS_PAGE,
		CHATAPP_EMBED_OPTION,
		array(
			'type'              => 'string',
			'description'       => __( 'Base URL of the chatapp service.', 'chatapp-embed' ),
			'sanitize_callback' => 'chatapp_embed_sanitize_url',
			'show_in_rest'      => false,
			'default'           => '',
		)
	);
	register_setting(
		CHATAPP_EMBED_SETTINGS_PAGE,
		CHATAPP_EMBED_WIDGET_OPTION,
		array(
			'type'              => 'string',
			'description'       => __( 'Show the chat widget on every page.', 'chatapp-embed' ),
			'sanitize_callback' => 'chatapp_embed_sanitize_flag',
			'show_in_rest'      => false,
			'default'           => '',
		)
	);
	register_setting(
		CHATAPP_EMBED_SETTINGS_PAGE,
		CHATAPP_EMBED_PUSH_OPTION,
		array(
			'type'              => 'string',
			'description'       => __( "Keep chatapp's knowledge of the site in step with published posts and pages.", 'chatapp-embed' ),
			'sanitize_callback' => 'chatapp_embed_sanitize_flag',
			'show_in_rest'      => false,
			'default'           => '',
		)
	);
	add_settings_section(
		'chatapp_embed_main',
		__( 'Connection', 'chatapp-embed' ),
		'chatapp_embed_render_section',
		CHATAPP_EMBED_SETTINGS_PAGE
	);
	add_settings_field(
		'chatapp_embed_url',
		__( 'Chatapp URL', 'chatapp-embed' ),
		'chatapp_embed_render_url_field',
		CHATAPP_EMBED_SETTINGS_PAGE,
		'chatapp_embed_main',
		array( 'label_for' => 'chatapp_embed_url' )
	);
	add_settings_field(
		'chatapp_embed_widget',
		__( 'Chat widget', 'chatapp-embed' ),
		'chatapp_embed_render_widget_field',
		CHATAPP_EMBED_SETTINGS_PAGE,
		'chatapp_embed_main',
		array( 'label_for' => 'chatapp_embed_widget' )
	);
	add_settings_field(
		'chatapp_embed_push',
		__( 'Site knowledge', 'chatapp-embed' ),
		'chatapp_embed_render_push_field',
		CHATAPP_EMBED_SETTINGS_PAGE,
		'chatapp_embed_main',
		array( 'label_for' => 'chatapp_embed_push' )
	);
	add_settings_field(
		'chatapp_embed_secret',
		__( 'Shared secret', 'chatapp-embed' ),
		'chatapp_embed_render_secret_field',
		CHATAPP_EMBED_SETTINGS_PAGE,
		'chatapp_embed_main'
	);
}
add_action( 'admin_init', 'chatapp_embed_register_settings' );

/**
 * Add Settings → Chatapp.
 */
function chatapp_embed_add_settings_page(): void {
	add_options_page(
		__( 'Chatapp', 'chatapp-embed' ),
		__( 'Chatapp', 'chatapp-embed' ),
		'manage_options',
		CHATAPP_EMBED_SETTINGS_PAGE,
		'chatapp_embed_render_settings_page'
	);
}
add_action( 'admin_menu', 'chatapp_embed_add_settings_page' );

/**
 * Link to the settings page from the Plugins screen.
 *
 * @param array $links Existing action links.
 * @return array
 */
function chatapp_embed_action_links( $links ): array {
	$links   = is_array( $links ) ? $links : array();
	$links[] = '<a href="' . esc_url( admin_url( 'options-general.php?page=' . CHATAPP_EMBED_SETTINGS_PAGE ) ) . '">' . esc_html__( 'Settings', 'chatapp-embed' ) . '</a>';
	return $links;
}
add_filter( 'plugin_action_links_' . plugin_basename( CHATAPP_EMBED_FILE ), 'chatapp_embed_action_links' );

/**
 * Render the settings page.
 */
function chatapp_embed_render_settings_page(): void {
	if ( ! current_user_can( 'manage_options' ) ) {
		return;
	}
	echo '<div class="wrap"><h1>' . esc_html__( 'Chatapp', 'chatapp-embed' ) . '</h1>';
	echo '<form action="options.php" method="post">';
	settings_fields( CHATAPP_EMBED_SETTINGS_PAGE );
	do_settings_sections( CHATAPP_EMBED_SETTINGS_PAGE );
	if ( ! chatapp_embed_url_is_constant() ) {
		submit_button();
	}
	echo '</form></div>';
}

/**
 * Introduce the settings section.
 */
function chatapp_embed_render_section(): void {
	$origin = chatapp_embed_origin( (string) home_url() );
	echo '<p>' . esc_html__( 'Put [ai_chat] on any page to show the chat. Optional attributes: height (pixels, default 600) and title.', 'chatapp-embed' ) . '</p>';
	if ( '' !== $origin ) {
		echo '<p>' . esc_html__( 'On the chatapp server, allow this site to frame the chat:', 'chatapp-embed' )
			. ' <code>CHATAPP_EMBED_ORIGINS=' . esc_html( $origin ) . '</code></p>';
	}
}

/**
 * Render the chatapp URL field, read-only when CHATAPP_URL is defined.
 */
function chatapp_embed_render_url_field(): void {
	if ( chatapp_embed_url_is_constant() ) {
		// No name attribute: a read-only value must not be posted back into the option.
		printf(
			'<input type="url" id="chatapp_embed_url" class="regular-text code" value="%s" readonly aria-describedby="chatapp_embed_url_help" />',
			esc_attr( chatapp_embed_url() )
		);
		echo '<p class="description" id="chatapp_embed_url_help">' . esc_html__( 'Set by the CHATAPP_URL constant in wp-config.php; it overrides this setting.', 'chatapp-embed' ) . '</p>';
		if ( '' === chatapp_embed_url() ) {
			echo '<p class="description">' . esc_html__( 'CHATAPP_URL is not a valid http:// or https:// address.', 'chatapp-embed' ) . '</p>';
		}
		return;
	}
	printf(
		'<input type="url" id="chatapp_embed_url" name="%1$s" class="regular-text code" value="%2$s" placeholder="https://chat.example.com" aria-describedby="chatapp_embed_url_help" />',
		esc_attr( CHATAPP_EMBED_OPTION ),
		esc_attr( chatapp_embed_url() )
	);
	echo '<p class="description" id="chatapp_embed_url_help">' . esc_html__( 'Where chatapp runs, e.g. https://chat.example.com. The chat is loaded from its /embed page.', 'chatapp-embed' ) . '</p>';
}

/**
 * Render the widget checkbox: chatapp's launcher on every page, as an alternative to [ai_chat].
 */
function chatapp_embed_render_widget_field(): void {
	printf(
		'<input type="checkbox" id="chatapp_embed_widget" name="%1$s" value="1"%2$s aria-describedby="chatapp_embed_widget_help" /> <label for="chatapp_embed_widget">%3$s</label>',
		esc_attr( CHATAPP_EMBED_WIDGET_OPTION ),
		chatapp_embed_widget_enabled() ? ' checked="checked"' : '',
		esc_html__( 'Show a chat button on every page', 'chatapp-embed' )
	);
	echo '<p class="description" id="chatapp_embed_widget_help">' . esc_html__( 'Loads the chat widget from the chatapp URL: a button in the corner opens the chat in a panel. Visitors chat anonymously there; use [ai_chat] where logged-in users should be signed in.', 'chatapp-embed' ) . '</p>';
}

/**
 * Render the push checkbox: published posts and pages sent to chatapp's knowledge index.
 */
function chatapp_embed_render_push_field(): void {
	printf(
		'<input type="checkbox" id="chatapp_embed_push" name="%1$s" value="1"%2$s aria-describedby="chatapp_embed_push_help" /> <label for="chatapp_embed_push">%3$s</label>',
		esc_attr( CHATAPP_EMBED_PUSH_OPTION ),
		chatapp_embed_push_enabled() ? ' checked="checked"' : '',
		esc_html__( 'Send published posts and pages to chatapp, so the chat answers from them', 'chatapp-embed' )
	);
	echo '<p class="description" id="chatapp_embed_push_help">' . esc_html__( 'Publishing or updating a post or page sends it to chatapp within seconds; unpublishing or trashing it removes it. Needs CHATAPP_WP_SHARED_SECRET and site knowledge on in chatapp. Sending happens in the background (WP-Cron) and is retried when chatapp cannot be reached.', 'chatapp-embed' ) . '</p>';
}

/**
 * Say whether the shared secret is defined, never what it is.
 */
function chatapp_embed_render_secret_field(): void {
	if ( '' !== chatapp_embed_secret() ) {
		echo '<p>' . esc_html__( 'Defined in wp-config.php (CHATAPP_WP_SHARED_SECRET). Logged-in users are signed in to the chat.', 'chatapp-embed' ) . '</p>';
		return;
	}
	echo '<p>' . esc_html__( 'Not defined. Logged-in users chat anonymously until you add this line to wp-config.php, with the same value as CHATAPP_WP_SHARED_SECRET on the chatapp server:', 'chatapp-embed' ) . '</p>';
	echo '<p><code>' . esc_html( "define( 'CHATAPP_WP_SHARED_SECRET', '…' );" ) . '</code></p>';
}
