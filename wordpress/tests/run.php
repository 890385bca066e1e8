<?php
/**
 * Plain-PHP tests for the Chatapp Embed plugin, run against the stand-ins in stubs.php.
 *
 * Usage: php wordpress/tests/run.php
 *
 * Constants cannot be undefined, so each scenario (no constants, the shared secret, CHATAPP_URL,
 * uninstall) runs in its own PHP process. Any notice, warning or deprecation fails the case that
 * raised it; one raised while loading the plugin fails the whole scenario. The last line is
 * "N passed, M failed"; the exit status is non-zero when anything failed.
 *
 * @package ChatappEmbed
 */

error_reporting( E_ALL );
ini_set( 'display_errors', '1' );

const CHATAPP_TEST_PLUGIN_DIR = __DIR__ . '/../chatapp-embed';
const CHATAPP_TEST_SECRET     = 'test-secret-0123456789abcdef0123456789abcdef';
const CHATAPP_TEST_URL        = 'https://chat.example';

set_error_handler(
	static function ( int $errno, string $errstr, string $errfile, int $errline ): bool {
		throw new ErrorException( "PHP error {$errno}: {$errstr} at {$errfile}:{$errline}", 0, $errno, $errfile, $errline );
	}
);

/**
 * A failed expectation.
 */
class Chatapp_Test_Failure extends Exception {
}

$GLOBALS['chatapp_test_cases'] = array();

/** Register a test case for a scenario. */
function chatapp_test_case( string $scenario, string $name, callable $fn ): void {
	$GLOBALS['chatapp_test_cases'][ $scenario ][ $name ] = $fn;
}

/** Fail the current case unless $condition holds. */
function check( bool $condition, string $message ): void {
	if ( ! $condition ) {
		throw new Chatapp_Test_Failure( $message );
	}
}

/** Fail the current case unless $actual is identical to $expected. */
function check_same( $expected, $actual, string $message = '' ): void {
	if ( $expected !== $actual ) {
		throw new Chatapp_Test_Failure( ( '' !== $message ? $message . ': ' : '' ) . 'expected ' . var_export( $expected, true ) . ', got ' . var_export( $actual, true ) );
	}
}

/** Capture what a callable echoes. */
function chatapp_test_capture( callable $fn ): string {
	ob_start();
	try {
		$fn();
	} finally {
		$out = (string) ob_get_clean();
	}
	return $out;
}

/**
 * Every iframe in $html, each as a map of attribute name => decoded value.
 *
 * @return array<int, array<string, string>>
 */
function chatapp_test_iframes( string $html ): array {
	preg_match_all( '/<iframe\b([^>]*)>/i', $html, $matches );
	$frames = array();
	foreach ( $matches[1] as $raw ) {
		preg_match_all( '/\s([a-zA-Z][a-zA-Z0-9-]*)(?:="([^"]*)")?/', $raw, $attrs, PREG_SET_ORDER );
		$rest = trim( (string) preg_replace( '/\s([a-zA-Z][a-zA-Z0-9-]*)(?:="([^"]*)")?/', '', $raw ) );
		check( '' === $rest, 'iframe tag has unparseable text: ' . $rest );
		$frame = array();
		foreach ( $attrs as $attr ) {
			check( ! isset( $frame[ $attr[1] ] ), 'duplicate attribute ' . $attr[1] );
			$frame[ $attr[1] ] = html_entity_decode( $attr[2] ?? '', ENT_QUOTES | ENT_HTML5, 'UTF-8' );
		}
		$frames[] = $frame;
	}
	return $frames;
}

/** The one iframe in $html; fails unless there is exactly one. */
function chatapp_test_one_iframe( string $html ): array {
	$frames = chatapp_test_iframes( $html );
	check_same( 1, count( $frames ), 'number of iframes in ' . $html );
	check_same( 1, substr_count( strtolower( $html ), '</iframe>' ), 'closing iframe tags' );
	return $frames[0];
}

/** Render [ai_chat] with the given attributes ('' as WordPress passes when there are none). */
function chatapp_test_render( $atts = '' ): string {
	return chatapp_test_shortcode( 'ai_chat', $atts );
}

/** Decode base64url. */
function chatapp_test_b64url_decode( string $data ): string {
	check( 1 === preg_match( '/^[A-Za-z0-9_-]*$/', $data ), 'not base64url without padding: ' . $data );
	$decoded = base64_decode( strtr( $data, '-_', '+/' ) . str_repeat( '=', ( 4 - strlen( $data ) % 4 ) % 4 ), true );
	check( false !== $decoded, 'bad base64url' );
	return $decoded;
}

/**
 * Verify an HS256 JWT independently of the plugin's encoder; return array( header, claims ).
 */
function chatapp_test_jwt_verify( string $token, string $secret ): array {
	$parts = explode( '.', $token );
	check_same( 3, count( $parts ), 'JWT segments' );
	$expected = hash_hmac( 'sha256', $parts[0] . '.' . $parts[1], $secret, true );
	check( hash_equals( $expected, chatapp_test_b64url_decode( $parts[2] ) ), 'JWT signature does not verify' );
	$header = json_decode( chatapp_test_b64url_decode( $parts[0] ), true );
	$claims = json_decode( chatapp_test_b64url_decode( $parts[1] ), true );
	check( is_array( $header ) && is_array( $claims ), 'JWT header or claims are not JSON objects' );
	return array( $header, $claims );
}

/** Check every attribute an [ai_chat] iframe must carry. */
function chatapp_test_check_frame( array $frame, string $src, string $title, int $height, string $loading = 'lazy' ): void {
	check_same(
		array( 'allow', 'class', 'data-chatapp-embed', 'data-chatapp-origin', 'height', 'id', 'loading', 'referrerpolicy', 'src', 'style', 'title' ),
		( function ( array $names ): array {
			sort( $names );
			return $names;
		} )( array_keys( $frame ) ),
		'iframe attributes'
	);
	check_same( $src, $frame['src'], 'src' );
	check_same( $title, $frame['title'], 'title' );
	check_same( (string) $height, $frame['height'], 'height' );
	check_same( "width:100%;height:{$height}px;border:none;", $frame['style'], 'style' );
	check_same( $loading, $frame['loading'], 'loading' );
	check_same( 'clipboard-write', $frame['allow'], 'allow' );
	check_same( 'strict-origin-when-cross-origin', $frame['referrerpolicy'], 'referrerpolicy' );
	check_same( '', $frame['data-chatapp-embed'], 'data-chatapp-embed' );
	check( 1 === preg_match( '/^chatapp-embed-\d+$/', $frame['id'] ), 'id ' . $frame['id'] );
}

/** Load the plugin as WordPress would, with the stand-ins. */
function chatapp_test_load_plugin(): void {
	require_once __DIR__ . '/stubs.php';
	require_once CHATAPP_TEST_PLUGIN_DIR . '/chatapp-embed.php';
}

/** Run php with arguments; return array( exit code, stdout, stderr ). */
function chatapp_test_php( array $args ): array {
	$cmd  = array_merge( array( PHP_BINARY, '-d', 'error_reporting=' . E_ALL, '-d', 'display_errors=stderr' ), $args );
	$proc = proc_open( $cmd, array( 1 => array( 'pipe', 'w' ), 2 => array( 'pipe', 'w' ) ), $pipes, __DIR__ );
	check( is_resource( $proc ), 'cannot start ' . PHP_BINARY );
	$out = (string) stream_get_contents( $pipes[1] );
	$err = (string) stream_get_contents( $pipes[2] );
	fclose( $pipes[1] );
	fclose( $pipes[2] );
	return array( proc_close( $proc ), $out, $err );
}

// ---------------------------------------------------------------------------
// Scenario "plain": no constants defined.

chatapp_test_case(
	'plain',
	'anonymous visitor gets exactly one iframe of /embed without sso',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		$html  = chatapp_test_render();
		$frame = chatapp_test_one_iframe( $html );
		chatapp_test_check_frame( $frame, CHATAPP_TEST_URL . '/embed?lang=en_US', 'AI chat', 600 );
		check_same( CHATAPP_TEST_URL, $frame['data-chatapp-origin'], 'origin' );
		check( false === strpos( $html, 'sso=' ), 'anonymous src carries sso' );
		check( false === stripos( $html, '<script' ), 'inline script in output' );
	}
);

chatapp_test_case(
	'plain',
	'the iframe and the widget carry the site locale as lang',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		update_option( 'chatapp_widget', '1' );
		$GLOBALS['chatapp_wp']['locale'] = 'nb_NO';
		check_same( CHATAPP_TEST_URL . '/embed?lang=nb_NO', chatapp_test_one_iframe( chatapp_test_render() )['src'], 'src' );
		check( false !== strpos( chatapp_embed_widget_tag(), 'data-lang="nb_NO"' ), 'widget data-lang' );
		$GLOBALS['chatapp_wp']['locale'] = 'x" onload="alert(1)';
		$html = chatapp_test_render();
		check( false === strpos( $html, 'onload="' ), 'locale escaped in ' . $html );
	}
);

chatapp_test_case(
	'plain',
	'shortcode enqueues the resize script in the footer',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		check_same( array(), $GLOBALS['chatapp_wp']['enqueued'], 'enqueued before render' );
		chatapp_test_render( array() );
		check_same( array( 'chatapp-embed' ), $GLOBALS['chatapp_wp']['enqueued'], 'enqueued' );
		$script = $GLOBALS['chatapp_wp']['scripts']['chatapp-embed'];
		check_same( 'https://wp.example/wp-content/plugins/chatapp-embed/assets/chatapp-embed.js', $script['src'], 'script src' );
		check_same( true, $script['args'], 'in footer' );
		check_same( '1.0.0', $script['ver'], 'version' );
		check( is_file( CHATAPP_TEST_PLUGIN_DIR . '/assets/chatapp-embed.js' ), 'script file missing' );
		check_same( array(), $GLOBALS['chatapp_wp']['localized'], 'no localized inline data' );
	}
);

chatapp_test_case(
	'plain',
	'two shortcodes render two iframes with distinct ids',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		$frames = chatapp_test_iframes( chatapp_test_render() . chatapp_test_render( array( 'height' => '400' ) ) );
		check_same( 2, count( $frames ), 'iframes' );
		check( $frames[0]['id'] !== $frames[1]['id'], 'ids repeat: ' . $frames[0]['id'] );
		check_same( '400', $frames[1]['height'], 'second height' );
	}
);

chatapp_test_case(
	'plain',
	'base URL with a path and port keeps them; origin drops the path',
	static function (): void {
		update_option( 'chatapp_url', 'https://Example.COM:8443/chat/' );
		$frame = chatapp_test_one_iframe( chatapp_test_render() );
		check_same( 'https://example.com:8443/chat/embed?lang=en_US', $frame['src'], 'src' );
		check_same( 'https://example.com:8443', $frame['data-chatapp-origin'], 'origin' );
		check_same( 'https://example.com', chatapp_embed_origin( 'https://example.com:443/x' ), 'default https port' );
		check_same( 'http://example.com', chatapp_embed_origin( 'http://example.com:80' ), 'default http port' );
		check_same( 'http://127.0.0.1:8000', chatapp_embed_origin( 'http://127.0.0.1:8000' ), 'explicit port' );
	}
);

chatapp_test_case(
	'plain',
	'logged-in user without the secret is anonymous; only admins see a notice',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		chatapp_test_login( new WP_User( 7, 'Subscriber' ) );
		$html = chatapp_test_render();
		check_same( CHATAPP_TEST_URL . '/embed?lang=en_US', chatapp_test_one_iframe( $html )['src'], 'src' );
		check( false === strpos( $html, 'chatapp-embed-notice' ), 'notice shown to a non-admin' );

		chatapp_test_login( new WP_User( 1, 'Admin' ), array( 'manage_options' ) );
		$html = chatapp_test_render();
		check_same( CHATAPP_TEST_URL . '/embed?lang=en_US', chatapp_test_one_iframe( $html )['src'], 'admin src' );
		check( false !== strpos( $html, 'chatapp-embed-notice' ), 'no notice for the admin' );
		check( false !== strpos( $html, 'CHATAPP_WP_SHARED_SECRET' ), 'notice does not name the constant' );
	}
);

chatapp_test_case(
	'plain',
	'no URL configured renders only an HTML comment for visitors',
	static function (): void {
		foreach ( array( null, '', 'javascript:alert(1)', 'ftp://chat.example' ) as $stored ) {
			chatapp_test_reset();
			if ( null !== $stored ) {
				// Written straight to the database, bypassing the sanitize callback.
				$GLOBALS['chatapp_wp']['options']['chatapp_url'] = $stored;
			}
			$html = chatapp_test_render();
			check_same( array(), chatapp_test_iframes( $html ), 'iframes for ' . var_export( $stored, true ) );
			check_same( '', trim( (string) preg_replace( '/<!--.*?-->/s', '', $html ) ), 'visible output' );
			check( false !== strpos( $html, '<!--' ), 'no HTML comment' );
			check_same( array(), $GLOBALS['chatapp_wp']['enqueued'], 'script enqueued without an iframe' );
		}
		chatapp_test_login( new WP_User( 1, 'Admin' ), array( 'manage_options' ) );
		$html = chatapp_test_render();
		check_same( array(), chatapp_test_iframes( $html ), 'iframes for admin' );
		check( false !== strpos( $html, 'chatapp-embed-notice' ), 'no notice for the admin' );
	}
);

chatapp_test_case(
	'plain',
	'hostile title is escaped inside one attribute',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		$title = '"><script>alert(1)</script>';
		$html  = chatapp_test_render( array( 'title' => $title ) );
		$frame = chatapp_test_one_iframe( $html );
		chatapp_test_check_frame( $frame, CHATAPP_TEST_URL . '/embed?lang=en_US', $title, 600 );
		check( false === stripos( $html, '<script' ), 'script tag leaked: ' . $html );
		check( false !== strpos( $html, 'title="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' ), 'title not escaped as expected: ' . $html );

		$frame = chatapp_test_one_iframe( chatapp_test_render( array( 'title' => "x' onmouseover='alert(1)" ) ) );
		check_same( "x' onmouseover='alert(1)", $frame['title'], 'single quotes' );
		check_same( 'AI chat', chatapp_test_one_iframe( chatapp_test_render( array( 'title' => '   ' ) ) )['title'], 'blank title' );
	}
);

chatapp_test_case(
	'plain',
	'hostile and odd heights are clamped whole pixels',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		$html = chatapp_test_render( array( 'height' => '100 onload=alert(1)' ) );
		chatapp_test_check_frame( chatapp_test_one_iframe( $html ), CHATAPP_TEST_URL . '/embed?lang=en_US', 'AI chat', 200 );
		check( false === stripos( $html, 'onload' ), 'onload leaked: ' . $html );
		$table = array(
			array( '800', 800 ),
			array( '800px', 800 ),
			array( ' 750 ', 750 ),
			array( '199', 200 ),
			array( '2001', 2000 ),
			array( '99999999999999999999', 2000 ),
			array( '1e9', 2000 ),
			array( '-50', 200 ),
			array( '0', 600 ),
			array( '', 600 ),
			array( 'abc', 600 ),
			array( '"><img src=x onerror=alert(1)>', 600 ),
			array( array( 'nested' ), 600 ),
		);
		foreach ( $table as list( $given, $expected ) ) {
			$html  = chatapp_test_render( array( 'height' => $given ) );
			$frame = chatapp_test_one_iframe( $html );
			check_same( (string) $expected, $frame['height'], 'height for ' . var_export( $given, true ) );
			check( false === stripos( $html, 'onerror' ), 'onerror leaked' );
		}
	}
);

chatapp_test_case(
	'plain',
	'unknown attributes are ignored',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		$frame = chatapp_test_one_iframe( chatapp_test_render( array( 'src' => 'javascript:alert(1)', 'onload' => 'alert(1)', 0 => 'x' ) ) );
		chatapp_test_check_frame( $frame, CHATAPP_TEST_URL . '/embed?lang=en_US', 'AI chat', 600 );
	}
);

chatapp_test_case(
	'plain',
	'sanitize callback keeps only http(s) URLs without trailing slash',
	static function (): void {
		$table = array(
			array( 'https://chat.example/', 'https://chat.example' ),
			array( '  http://chat.example:8000//  ', 'http://chat.example:8000' ),
			array( 'HTTPS://Chat.Example/sub/path/?q=1#frag', 'https://chat.example/sub/path' ),
			array( 'https://user:pass@chat.example', 'https://chat.example' ),
			array( 'http://[::1]:8000', 'http://[::1]:8000' ),
			array( 'chat.example', 'http://chat.example' ),
			array( 'javascript:alert(1)', '' ),
			array( 'JaVaScRiPt:alert(1)', '' ),
			array( " java\tscript:alert(1)", '' ),
			array( 'data:text/html,<script>alert(1)</script>', '' ),
			array( 'ftp://chat.example', '' ),
			array( 'file:///etc/passwd', '' ),
			array( '//evil.example', '' ),
			array( '/relative', '' ),
			array( '', '' ),
			array( null, '' ),
			array( array( 'https://chat.example' ), '' ),
		);
		foreach ( $table as list( $given, $expected ) ) {
			chatapp_test_reset();
			check_same( $expected, chatapp_embed_sanitize_url( $given ), 'sanitize ' . var_export( $given, true ) );
		}
	}
);

chatapp_test_case(
	'plain',
	'a rejected URL keeps the previous value and reports a settings error',
	static function (): void {
		do_action( 'admin_init' );
		update_option( 'chatapp_url', 'https://good.example/' );
		check_same( 'https://good.example', get_option( 'chatapp_url' ), 'stored' );
		update_option( 'chatapp_url', 'javascript:alert(1)' );
		check_same( 'https://good.example', get_option( 'chatapp_url' ), 'after javascript:' );
		check_same( 1, count( $GLOBALS['chatapp_wp']['settings_errors'] ), 'settings errors' );
		update_option( 'chatapp_url', '' );
		check_same( '', get_option( 'chatapp_url' ), 'cleared' );
	}
);

chatapp_test_case(
	'plain',
	'settings are registered through the Settings API',
	static function (): void {
		do_action( 'admin_init' );
		do_action( 'admin_menu' );
		$setting = $GLOBALS['chatapp_wp']['settings']['chatapp_url'] ?? null;
		check( is_array( $setting ), 'chatapp_url not registered' );
		check_same( 'chatapp_embed_sanitize_url', $setting['sanitize_callback'], 'sanitize_callback' );
		check_same( 'string', $setting['type'], 'type' );
		// The shared secret is never among them: it lives in wp-config.php only.
		check_same( array( 'chatapp_url', 'chatapp_widget', 'chatapp_push_content' ), array_keys( $GLOBALS['chatapp_wp']['settings'] ), 'stored options' );
		check_same( 'chatapp_embed_sanitize_flag', $GLOBALS['chatapp_wp']['settings']['chatapp_widget']['sanitize_callback'], 'widget sanitize_callback' );
		$page = $GLOBALS['chatapp_wp']['pages']['chatapp-embed'] ?? null;
		check( is_array( $page ), 'options page not added' );
		check_same( 'manage_options', $page['capability'], 'capability' );
		check_same( 'Chatapp', $page['menu_title'], 'menu title' );
		check( isset( $GLOBALS['chatapp_wp']['fields']['chatapp-embed']['chatapp_embed_main']['chatapp_embed_url'] ), 'URL field' );
	}
);

chatapp_test_case(
	'plain',
	'widget is off by default and needs the chatapp URL',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		check_same( '', chatapp_test_capture( static fn() => do_action( 'wp_footer' ) ), 'footer with the widget off' );
		update_option( 'chatapp_url', '' );
		update_option( 'chatapp_widget', '1' );
		check_same( '', chatapp_test_capture( static fn() => do_action( 'wp_footer' ) ), 'footer without a URL' );
	}
);

chatapp_test_case(
	'plain',
	'widget on: one deferred script tag of <chatapp_url>/widget.js in the footer, no iframe',
	static function (): void {
		update_option( 'chatapp_url', 'https://Chat.example:8443/sub/' );
		update_option( 'chatapp_widget', chatapp_embed_sanitize_flag( '1' ) );
		$html = chatapp_test_capture( static fn() => do_action( 'wp_footer' ) );
		check_same( 1, preg_match_all( '/<script\b/', $html ), 'script tags' );
		check_same( "<script src=\"https://chat.example:8443/sub/widget.js\" defer data-title=\"AI chat\" data-lang=\"en_US\"></script>\n", $html, 'tag' );
		check_same( array(), chatapp_test_iframes( $html ), 'iframes' );
		check_same( '', chatapp_embed_sanitize_flag( 'yes' ), 'anything but 1 is off' );
		check_same( '', chatapp_embed_sanitize_flag( null ), 'unticked' );
	}
);

chatapp_test_case(
	'plain',
	'settings page offers the widget checkbox',
	static function (): void {
		do_action( 'admin_init' );
		chatapp_test_login( new WP_User( 1, 'Admin' ), array( 'manage_options' ) );
		update_option( 'chatapp_widget', '1' );
		$html = chatapp_test_capture( 'chatapp_embed_render_settings_page' );
		check( 1 === preg_match( '/<input type="checkbox" id="chatapp_embed_widget" name="chatapp_widget" value="1" checked="checked"/', $html ), 'ticked checkbox: ' . $html );
		check( false !== strpos( $html, '<label for="chatapp_embed_widget">' ), 'checkbox label' );
	}
);

chatapp_test_case(
	'plain',
	'settings page: editable URL, secret reported as not defined, frame origin shown',
	static function (): void {
		do_action( 'admin_init' );
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		check_same( '', chatapp_test_capture( 'chatapp_embed_render_settings_page' ), 'page for a non-admin' );
		chatapp_test_login( new WP_User( 1, 'Admin' ), array( 'manage_options' ) );
		$page = chatapp_test_capture( 'chatapp_embed_render_settings_page' );
		check( false !== strpos( $page, 'action="options.php"' ), 'form action' );
		check( false !== strpos( $page, 'name="option_page" value="chatapp-embed"' ), 'settings_fields group' );
		check( 1 === preg_match( '/<input type="url"[^>]*name="chatapp_url"[^>]*value="https:\/\/chat\.example"/', $page ), 'URL input: ' . $page );
		check( false === strpos( $page, 'readonly' ), 'field is read-only' );
		check( false !== strpos( $page, 'type="submit"' ), 'no submit button' );
		check( false !== strpos( $page, 'Not defined' ), 'secret status' );
		check( false !== strpos( $page, 'CHATAPP_EMBED_ORIGINS=https://wp.example' ), 'frame origin hint' );
	}
);

chatapp_test_case(
	'plain',
	'plugins screen links to the settings page',
	static function (): void {
		$links = apply_filters( 'plugin_action_links_chatapp-embed/chatapp-embed.php', array( 'deactivate' => '<a>Deactivate</a>' ) );
		check_same( 2, count( $links ), 'links' );
		check( false !== strpos( end( $links ), 'options-general.php?page=chatapp-embed' ), 'settings link' );
	}
);

chatapp_test_case(
	'plain',
	'JWT encoder matches the well-known jwt.io example token',
	static function (): void {
		check_same(
			'eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c',
			chatapp_embed_jwt_encode( array( 'sub' => '1234567890', 'name' => 'John Doe', 'iat' => 1516239022 ), 'your-256-bit-secret' )
		);
		check_same( '', chatapp_embed_jwt_encode( array( 'sub' => '1' ), '' ), 'empty secret' );
		check_same( '', chatapp_embed_secret(), 'secret without the constant' );
	}
);

chatapp_test_case(
	'plain',
	'SSO claims are exactly sub, name, site, iat, exp, aud',
	static function (): void {
		$claims = chatapp_embed_sso_claims( new WP_User( 42, 'Ada' ), 1700000000 );
		check_same(
			array( 'sub' => '42', 'name' => 'Ada', 'site' => 'https://wp.example', 'iat' => 1700000000, 'exp' => 1700000300, 'aud' => 'chatapp' ),
			$claims
		);
		$before = time();
		$claims = chatapp_embed_sso_claims( new WP_User( 42, 'Ada' ) );
		check( $claims['iat'] >= $before && $claims['iat'] <= time(), 'iat is not now' );
		check_same( 300, $claims['exp'] - $claims['iat'], 'lifetime' );
	}
);

chatapp_test_case(
	'plain',
	'SSO token is empty for a logged-out user and signs odd names',
	static function (): void {
		check_same( '', chatapp_embed_sso_token( new WP_User(), null, CHATAPP_TEST_SECRET ), 'logged out' );
		$name  = "Zoë \"<b>\" O'Brien \xff";
		$token = chatapp_embed_sso_token( new WP_User( 3, $name ), 1700000000, CHATAPP_TEST_SECRET );
		list( $header, $claims ) = chatapp_test_jwt_verify( $token, CHATAPP_TEST_SECRET );
		check_same( array( 'alg' => 'HS256', 'typ' => 'JWT' ), $header, 'header' );
		check_same( "Zoë \"<b>\" O'Brien \u{fffd}", $claims['name'], 'name' );
	}
);

// ---------------------------------------------------------------------------
// Scenario "secret": CHATAPP_WP_SHARED_SECRET is defined.

chatapp_test_case(
	'secret',
	'logged-in user gets ?sso= with a verifying JWT carrying exactly the contract claims',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		chatapp_test_login( new WP_User( 42, 'Ada "Countess" <Lovelace>' ), array( 'manage_options' ) );
		$before = time();
		$html   = chatapp_test_render();
		$frame  = chatapp_test_one_iframe( $html );
		check( false === strpos( $html, 'chatapp-embed-notice' ), 'notice despite the secret' );
		check( 1 === preg_match( '#^https://chat\.example/embed\?lang=en_US&sso=([A-Za-z0-9_.-]+)$#', $frame['src'], $m ), 'src ' . $frame['src'] );
		chatapp_test_check_frame( $frame, $frame['src'], 'AI chat', 600, 'eager' );
		list( $header, $claims ) = chatapp_test_jwt_verify( $m[1], CHATAPP_TEST_SECRET );
		check_same( array( 'alg' => 'HS256', 'typ' => 'JWT' ), $header, 'header' );
		check_same( array( 'sub', 'name', 'site', 'iat', 'exp', 'aud' ), array_keys( $claims ), 'claim names' );
		check_same( '42', $claims['sub'], 'sub is the user id as a string' );
		check_same( 'Ada "Countess" <Lovelace>', $claims['name'], 'name' );
		check_same( 'https://wp.example', $claims['site'], 'site' );
		check_same( 'chatapp', $claims['aud'], 'aud' );
		check( is_int( $claims['iat'] ) && $claims['iat'] >= $before && $claims['iat'] <= time(), 'iat is not now' );
		check( is_int( $claims['exp'] ) && $claims['exp'] > $claims['iat'] && $claims['exp'] - $claims['iat'] <= 600, 'exp not within 10 minutes of iat' );
	}
);

chatapp_test_case(
	'secret',
	'token does not verify with another secret',
	static function (): void {
		$token = chatapp_embed_sso_token( new WP_User( 42, 'Ada' ) );
		chatapp_test_jwt_verify( $token, CHATAPP_TEST_SECRET );
		try {
			chatapp_test_jwt_verify( $token, CHATAPP_TEST_SECRET . 'x' );
		} catch ( Chatapp_Test_Failure $expected ) {
			return;
		}
		check( false, 'verified with the wrong secret' );
	}
);

chatapp_test_case(
	'secret',
	'anonymous visitor gets no sso even when the secret is set',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		check_same( CHATAPP_TEST_URL . '/embed?lang=en_US', chatapp_test_one_iframe( chatapp_test_render() )['src'], 'src' );
	}
);

chatapp_test_case(
	'secret',
	'settings page says the secret is defined and never shows it',
	static function (): void {
		do_action( 'admin_init' );
		chatapp_test_login( new WP_User( 1, 'Admin' ), array( 'manage_options' ) );
		$page = chatapp_test_capture( 'chatapp_embed_render_settings_page' );
		check( false !== strpos( $page, 'Defined in wp-config.php' ), 'secret status' );
		check( false === strpos( $page, CHATAPP_TEST_SECRET ), 'secret shown' );
		check( false === strpos( $page, substr( CHATAPP_TEST_SECRET, 0, 8 ) ), 'part of the secret shown' );
		check( ! in_array( CHATAPP_TEST_SECRET, $GLOBALS['chatapp_wp']['options'], true ), 'secret stored as an option' );
	}
);

/** A published post whose permalink is https://wp.example/<slug>/. */
function chatapp_test_publish( int $id, string $slug, array $fields = array() ): WP_Post {
	$post = chatapp_test_post(
		array(
			'ID'           => $id,
			'post_name'    => $slug,
			'post_title'   => "Returns & refunds, O'Neill's way",
			'post_content' => '<p>Refunds take <b>five</b> days.</p>',
		) + $fields
	);
	chatapp_test_transition( $post, 'publish' );
	return $post;
}

/** The requests the plugin sent, as [method, url, decoded JSON body, headers]. */
function chatapp_test_sent(): array {
	$sent = array();
	foreach ( $GLOBALS['chatapp_wp']['http'] as $request ) {
		$body   = isset( $request['args']['body'] ) ? json_decode( $request['args']['body'], true ) : null;
		$sent[] = array( $request['args']['method'], $request['url'], $body, $request['args']['headers'] );
	}
	return $sent;
}

chatapp_test_case(
	'secret',
	'push is off by default: publishing sends and queues nothing',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		chatapp_test_publish( 5, 'returns' );
		chatapp_test_run_cron( 'chatapp_embed_push' );
		check_same( array(), $GLOBALS['chatapp_wp']['http'], 'requests' );
		check_same( array(), chatapp_embed_push_queue(), 'queue' );
		check_same( 0, $GLOBALS['chatapp_wp']['spawned'], 'cron spawned' );
	}
);

chatapp_test_case(
	'secret',
	'publishing queues the post without any request in the editor, then cron PUTs it',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		update_option( 'chatapp_push_content', '1' );
		$before = time();
		chatapp_test_publish( 5, 'returns' );
		check_same( array(), $GLOBALS['chatapp_wp']['http'], 'requests made while saving' );
		check_same( 1, $GLOBALS['chatapp_wp']['spawned'], 'cron spawned (non-blocking)' );
		check( false !== wp_next_scheduled( 'chatapp_embed_push' ), 'cron event' );
		check_same( 1, chatapp_test_run_cron( 'chatapp_embed_push' ), 'cron ran' );
		$sent = chatapp_test_sent();
		check_same( 1, count( $sent ), 'requests' );
		list( $method, $url, $body, $headers ) = $sent[0];
		check_same( 'PUT', $method, 'method' );
		check_same( CHATAPP_TEST_URL . '/api/knowledge/documents', $url, 'endpoint' );
		check_same(
			array(
				'url'          => 'https://wp.example/returns/',
				'title'        => "Returns & refunds, O\u{2019}Neill\u{2019}s way",
				// A whole page around the rendered post: chatapp finds no page in a lone <p>.
				'content'      => '<!DOCTYPE html><html><head><meta charset="utf-8"><title>'
					. "Returns &amp; refunds, O\u{2019}Neill\u{2019}s way</title></head>"
					. '<body><article><p>Refunds take <b>five</b> days.</p></article></body></html>',
				'content_type' => 'text/html',
				'modified'     => strtotime( '2026-12-01 10:00:00 UTC' ),
			),
			$body,
			'document'
		);
		check_same( 'application/json', $headers['Content-Type'], 'content type' );
		check( 1 === preg_match( '/^Bearer (\S+)$/', $headers['Authorization'], $m ), 'bearer' );
		list( $header, $claims ) = chatapp_test_jwt_verify( $m[1], CHATAPP_TEST_SECRET );
		check_same( 'HS256', $header['alg'], 'alg' );
		check_same( 'chatapp-knowledge', $claims['aud'], 'aud' );
		check( $claims['iat'] >= $before && $claims['exp'] - $claims['iat'] <= 300, 'lifetime at most 5 minutes' );
		check_same( 5, $GLOBALS['chatapp_wp']['http'][0]['args']['timeout'], 'short timeout' );
		check_same( 0, $GLOBALS['chatapp_wp']['http'][0]['args']['redirection'], 'no redirects' );
		check_same( array(), chatapp_embed_push_queue(), 'queue after success' );
	}
);

chatapp_test_case(
	'secret',
	'unpublishing, trashing and deleting remove the document at its last URL',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		update_option( 'chatapp_push_content', '1' );
		foreach ( array( 'draft', 'trash', 'private', 'pending' ) as $i => $status ) {
			$GLOBALS['chatapp_wp']['http'] = array();
			$post                          = chatapp_test_publish( 10 + $i, "page-{$i}", array( 'post_type' => 'page' ) );
			chatapp_test_run_cron( 'chatapp_embed_push' );
			chatapp_test_transition( $post, $status, array( 'post_name' => "page-{$i}__trashed" ) );
			chatapp_test_run_cron( 'chatapp_embed_push' );
			$sent = chatapp_test_sent();
			check_same( 2, count( $sent ), $status );
			check_same( 'DELETE', $sent[1][0], $status );
			check_same( CHATAPP_TEST_URL . '/api/knowledge/documents?url=' . rawurlencode( "https://wp.example/page-{$i}/" ), $sent[1][1], $status );
		}
		// Deleted for good without passing through the trash.
		$GLOBALS['chatapp_wp']['http'] = array();
		chatapp_test_publish( 20, 'gone' );
		chatapp_test_run_cron( 'chatapp_embed_push' );
		do_action( 'before_delete_post', 20 );
		chatapp_test_run_cron( 'chatapp_embed_push' );
		check_same( array( 'PUT', 'DELETE' ), array_column( chatapp_test_sent(), 0 ), 'delete for good' );
	}
);

chatapp_test_case(
	'secret',
	'an update pushes again; a new slug removes the old address',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		update_option( 'chatapp_push_content', '1' );
		$post = chatapp_test_publish( 7, 'old-name' );
		chatapp_test_run_cron( 'chatapp_embed_push' );
		chatapp_test_transition( $post, 'publish', array( 'post_name' => 'new-name', 'post_content' => 'Edited.' ) );
		chatapp_test_run_cron( 'chatapp_embed_push' );
		$sent = chatapp_test_sent();
		check_same( array( 'PUT', 'DELETE', 'PUT' ), array_column( $sent, 0 ), 'methods' );
		check( false !== strpos( $sent[1][1], rawurlencode( 'https://wp.example/old-name/' ) ), 'old address removed' );
		check_same( 'https://wp.example/new-name/', $sent[2][2]['url'], 'new address' );
		check( false !== strpos( $sent[2][2]['content'], '<article>Edited.</article>' ), 'edited content' );
	}
);

chatapp_test_case(
	'secret',
	'revisions, autosaves, other post types and protected posts are never pushed',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		update_option( 'chatapp_push_content', '1' );
		chatapp_test_publish( 30, 'rev', array( 'post_type' => 'revision', 'post_parent' => 5 ) );
		chatapp_test_publish( 31, 'menu', array( 'post_type' => 'nav_menu_item' ) );
		chatapp_test_publish( 32, 'secret-page', array( 'post_password' => 'hunter2' ) );
		chatapp_test_run_cron( 'chatapp_embed_push' );
		check_same( array(), $GLOBALS['chatapp_wp']['http'], 'requests' );
		// A public post that gets a password leaves the index.
		$post = chatapp_test_publish( 33, 'was-public' );
		chatapp_test_transition( $post, 'publish', array( 'post_password' => 'hunter2' ) );
		chatapp_test_run_cron( 'chatapp_embed_push' );
		check_same( array( 'DELETE' ), array_column( chatapp_test_sent(), 0 ), 'only the removal' );
	}
);

chatapp_test_case(
	'secret',
	'a failed push stays queued and WP-Cron retries it later, backing off',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		update_option( 'chatapp_push_content', '1' );
		$GLOBALS['chatapp_wp']['http_responses'] = array(
			new WP_Error( 'http_request_failed', 'cURL error 7: Connection refused' ),
			array( 'response' => array( 'code' => 503 ), 'body' => '{}' ),
		);
		chatapp_test_publish( 5, 'returns' );
		$now = time();
		wp_clear_scheduled_hook( 'chatapp_embed_push' ); // as wp-cron.php takes the event
		chatapp_embed_push_run( $now );
		$job = chatapp_embed_push_queue()['post:5'];
		check_same( 1, $job['attempts'], 'attempts after a refused connection' );
		check_same( $now + 60, $job['due'], 'first retry in a minute' );
		check_same( $now + 60, wp_next_scheduled( 'chatapp_embed_push' ), 'retry scheduled' );
		chatapp_embed_push_run( $now + 30 ); // not due yet: nothing sent
		check_same( 1, count( $GLOBALS['chatapp_wp']['http'] ), 'sent before due' );
		chatapp_embed_push_run( $now + 60 );
		check_same( 2, chatapp_embed_push_queue()['post:5']['attempts'], 'attempts after a 503' );
		check_same( $now + 60 + 120, chatapp_embed_push_queue()['post:5']['due'], 'backing off' );
		chatapp_embed_push_run( $now + 180 ); // answered 200 (the default)
		check_same( array(), chatapp_embed_push_queue(), 'queue after the retry' );
		check_same( 3, count( $GLOBALS['chatapp_wp']['http'] ), 'requests' );
	}
);

chatapp_test_case(
	'secret',
	'a save while its push is under way (another request, the same second) is pushed next',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		update_option( 'chatapp_push_content', '1' );
		$post = chatapp_test_publish( 5, 'returns' );
		chatapp_test_publish( 6, 'hours' );
		$GLOBALS['chatapp_wp']['http_responses'] = array(
			static function () use ( $post ): array {
				// The editor saves post 5 again, and publishes post 7, in their own requests.
				chatapp_test_other_request(
					static function () use ( $post ): void {
						chatapp_test_transition( $post, 'publish', array( 'post_content' => 'Edited.' ) );
						chatapp_test_publish( 7, 'new' );
					}
				);
				return array( 'response' => array( 'code' => 200 ), 'body' => '{}' );
			},
		);
		wp_schedule_single_event( time(), 'do_pings' ); // as WordPress does on publishing
		$now = time();
		wp_clear_scheduled_hook( 'chatapp_embed_push' ); // as wp-cron.php takes the event
		chatapp_embed_push_run( $now );
		// wp-cron.php goes on to its next due event, writing the schedule from its own copy.
		wp_clear_scheduled_hook( 'do_pings' );
		chatapp_test_other_request(
			static function (): void {
				check_same( array( 'post:5', 'post:7' ), array_keys( chatapp_embed_push_queue() ), 'queued meanwhile' );
				check( false !== wp_next_scheduled( 'chatapp_embed_push' ), 'scheduled' );
			}
		);
		$GLOBALS['chatapp_wp']['http'] = array();
		chatapp_embed_push_run( $now );
		$sent = chatapp_test_sent();
		check_same( array( 'https://wp.example/returns/', 'https://wp.example/new/' ), array_column( array_column( $sent, 2 ), 'url' ), 'pushed next' );
		check( false !== strpos( $sent[0][2]['content'], '<article>Edited.</article>' ), 'the edit' );
		check_same( array(), chatapp_embed_push_queue(), 'queue' );
	}
);

chatapp_test_case(
	'secret',
	'a queued job whose cron event was written away gets it back in wp-admin',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		update_option( 'chatapp_push_content', '1' );
		do_action( 'admin_init' ); // nothing queued: nothing scheduled
		check_same( false, wp_next_scheduled( 'chatapp_embed_push' ), 'no event for an empty queue' );
		chatapp_test_publish( 5, 'returns' );
		wp_clear_scheduled_hook( 'chatapp_embed_push' ); // a busy cron run's stale schedule
		do_action( 'admin_init' );
		check( false !== wp_next_scheduled( 'chatapp_embed_push' ), 'event back' );
		check_same( 1, chatapp_test_run_cron( 'chatapp_embed_push' ), 'cron ran' );
		check_same( array( 'PUT' ), array_column( chatapp_test_sent(), 0 ), 'pushed' );
	}
);

chatapp_test_case(
	'secret',
	'a job chatapp refuses for good is dropped; the latest job for a post wins',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		update_option( 'chatapp_push_content', '1' );
		$GLOBALS['chatapp_wp']['http_responses'] = array( array( 'response' => array( 'code' => 413 ), 'body' => '{}' ) );
		chatapp_test_publish( 5, 'huge' );
		chatapp_embed_push_run( time() );
		check_same( array(), chatapp_embed_push_queue(), 'a 413 is not retried' );
		$post = chatapp_test_publish( 6, 'flip' );
		chatapp_test_transition( $post, 'draft' );
		check_same( array( 'post:6' ), array_keys( chatapp_embed_push_queue() ), 'one job per post' );
		check_same( 'delete', chatapp_embed_push_queue()['post:6']['action'], 'the latest' );
	}
);

chatapp_test_case(
	'secret',
	'the settings page offers the push option, off until ticked',
	static function (): void {
		do_action( 'admin_init' );
		chatapp_test_login( new WP_User( 1, 'Admin' ), array( 'manage_options' ) );
		$page = chatapp_test_capture( 'chatapp_embed_render_settings_page' );
		check( 1 === preg_match( '/<input type="checkbox" id="chatapp_embed_push" name="chatapp_push_content" value="1" aria-describedby="chatapp_embed_push_help" \/>/', $page ), 'unticked checkbox' );
		update_option( 'chatapp_push_content', 'yes please' );
		check_same( '', get_option( 'chatapp_push_content' ), 'sanitised' );
		update_option( 'chatapp_push_content', '1' );
		check( false !== strpos( chatapp_test_capture( 'chatapp_embed_render_settings_page' ), 'name="chatapp_push_content" value="1" checked="checked"' ), 'ticked' );
	}
);

chatapp_test_case(
	'secret',
	"the shortcode passes the post's permalink as page_url",
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		$post                                  = chatapp_test_publish( 9, 'jackets' );
		$GLOBALS['chatapp_wp']['current_post'] = $post->ID;
		$src                                   = chatapp_test_one_iframe( chatapp_test_render() )['src'];
		check_same( CHATAPP_TEST_URL . '/embed?lang=en_US&page_url=' . rawurlencode( 'https://wp.example/jackets/' ), $src, 'anonymous src' );
		chatapp_test_login( new WP_User( 42, 'Ada' ) );
		$src = chatapp_test_one_iframe( chatapp_test_render() )['src'];
		check( 1 === preg_match( '#^https://chat\.example/embed\?lang=en_US&sso=[A-Za-z0-9_.-]+&page_url=https%3A%2F%2Fwp\.example%2Fjackets%2F$#', $src ), 'signed-in src ' . $src );
	}
);

// ---------------------------------------------------------------------------
// Scenario "url-constant": CHATAPP_URL overrides the option.

chatapp_test_case(
	'url-constant',
	'CHATAPP_URL overrides the chatapp_url option',
	static function (): void {
		update_option( 'chatapp_url', 'https://option.example' );
		$frame = chatapp_test_one_iframe( chatapp_test_render() );
		chatapp_test_check_frame( $frame, 'https://const.example/embed?lang=en_US', 'AI chat', 600 );
		check_same( 'https://const.example', $frame['data-chatapp-origin'], 'origin' );
	}
);

chatapp_test_case(
	'url-constant',
	'settings page shows the constant read-only and posts nothing back',
	static function (): void {
		do_action( 'admin_init' );
		update_option( 'chatapp_url', 'https://option.example' );
		chatapp_test_login( new WP_User( 1, 'Admin' ), array( 'manage_options' ) );
		$page = chatapp_test_capture( 'chatapp_embed_render_settings_page' );
		check( 1 === preg_match( '/<input type="url"[^>]*value="https:\/\/const\.example"[^>]*readonly/', $page ), 'read-only field: ' . $page );
		check( false === strpos( $page, 'name="chatapp_url"' ), 'constant value would be posted into the option' );
		check( false === strpos( $page, 'type="submit"' ), 'submit button despite nothing to save' );
		check( false !== strpos( $page, 'CHATAPP_URL' ), 'does not say the constant is in charge' );
	}
);

// ---------------------------------------------------------------------------
// Scenario "url-constant-invalid": a CHATAPP_URL that is not http(s).

chatapp_test_case(
	'url-constant-invalid',
	'a javascript: CHATAPP_URL renders no iframe',
	static function (): void {
		update_option( 'chatapp_url', 'https://option.example' );
		check_same( array(), chatapp_test_iframes( chatapp_test_render() ), 'iframes' );
	}
);

// ---------------------------------------------------------------------------
// Scenario "uninstall": WP_UNINSTALL_PLUGIN is defined, the plugin is not loaded.

chatapp_test_case(
	'uninstall',
	'uninstall deletes the plugin\'s options and nothing else',
	static function (): void {
		update_option( 'chatapp_url', CHATAPP_TEST_URL );
		update_option( 'chatapp_widget', '1' );
		update_option( 'chatapp_push_content', '1' );
		update_option( 'chatapp_push_queue', array( 'post:1' => array() ) );
		wp_schedule_single_event( time(), 'chatapp_embed_push' );
		update_option( 'blogname', 'Site' );
		require CHATAPP_TEST_PLUGIN_DIR . '/uninstall.php';
		check( ! array_key_exists( 'chatapp_push_content', $GLOBALS['chatapp_wp']['options'] ), 'chatapp_push_content left behind' );
		check( ! array_key_exists( 'chatapp_push_queue', $GLOBALS['chatapp_wp']['options'] ), 'chatapp_push_queue left behind' );
		check_same( false, wp_next_scheduled( 'chatapp_embed_push' ), 'cron event left behind' );
		check( ! array_key_exists( 'chatapp_url', $GLOBALS['chatapp_wp']['options'] ), 'chatapp_url left behind' );
		check( ! array_key_exists( 'chatapp_widget', $GLOBALS['chatapp_wp']['options'] ), 'chatapp_widget left behind' );
		check_same( 'Site', get_option( 'blogname' ), 'other option' );
	}
);

// ---------------------------------------------------------------------------
// Scenario "direct": each PHP file, requested directly, exits silently.

chatapp_test_case(
	'direct',
	'plugin files exit silently outside WordPress',
	static function (): void {
		foreach ( array( 'chatapp-embed.php', 'includes/jwt.php', 'includes/push.php', 'uninstall.php' ) as $file ) {
			list( $code, $out, $err ) = chatapp_test_php( array( CHATAPP_TEST_PLUGIN_DIR . '/' . $file ) );
			check_same( array( 0, '', '' ), array( $code, $out, $err ), $file );
		}
	}
);

chatapp_test_case(
	'direct',
	'uninstall.php deletes nothing without WP_UNINSTALL_PLUGIN',
	static function (): void {
		$code = 'require ' . var_export( __DIR__ . '/stubs.php', true ) . ';'
			. 'update_option("chatapp_url", "https://kept.example");'
			. 'register_shutdown_function(function () { echo get_option("chatapp_url", "deleted"); });'
			. 'require ' . var_export( CHATAPP_TEST_PLUGIN_DIR . '/uninstall.php', true ) . ';'
			. 'echo "not exited;";';
		check_same( array( 0, 'https://kept.example', '' ), chatapp_test_php( array( '-r', $code ) ) );
	}
);

// ---------------------------------------------------------------------------
// Runner.

$chatapp_test_setup = array(
	'plain'                => static function (): void {
		chatapp_test_load_plugin();
	},
	'secret'               => static function (): void {
		define( 'CHATAPP_WP_SHARED_SECRET', CHATAPP_TEST_SECRET );
		chatapp_test_load_plugin();
	},
	'url-constant'         => static function (): void {
		define( 'CHATAPP_URL', 'https://const.example/' );
		chatapp_test_load_plugin();
	},
	'url-constant-invalid' => static function (): void {
		define( 'CHATAPP_URL', 'javascript:alert(1)' );
		chatapp_test_load_plugin();
	},
	'uninstall'            => static function (): void {
		define( 'WP_UNINSTALL_PLUGIN', 'chatapp-embed/chatapp-embed.php' );
		require_once __DIR__ . '/stubs.php';
	},
	'direct'               => static function (): void {
	},
);

/** Run one scenario's cases in this process, printing "ok"/"not ok" lines and a count line. */
function chatapp_test_run_scenario( string $scenario, callable $setup ): void {
	define( 'WP_DEBUG', true );
	$setup();
	$passed = 0;
	$failed = 0;
	foreach ( $GLOBALS['chatapp_test_cases'][ $scenario ] as $name => $fn ) {
		chatapp_test_reset_if_loaded();
		try {
			$fn();
			++$passed;
			echo "ok - {$scenario}: {$name}\n";
		} catch ( Throwable $e ) {
			++$failed;
			echo "not ok - {$scenario}: {$name}\n    # " . str_replace( "\n", "\n    # ", $e->getMessage() ) . "\n";
		}
	}
	echo "#counts {$passed} {$failed}\n";
}

/** Reset the stand-ins' state between cases when they are loaded. */
function chatapp_test_reset_if_loaded(): void {
	if ( function_exists( 'chatapp_test_reset' ) ) {
		chatapp_test_reset();
	}
}

$chatapp_test_args = isset( $argv ) ? array_slice( $argv, 1 ) : array();
if ( isset( $chatapp_test_args[0] ) && 0 === strpos( $chatapp_test_args[0], '--scenario=' ) ) {
	$chatapp_test_scenario = substr( $chatapp_test_args[0], strlen( '--scenario=' ) );
	chatapp_test_run_scenario( $chatapp_test_scenario, $chatapp_test_setup[ $chatapp_test_scenario ] );
	exit( 0 );
}

$chatapp_test_passed = 0;
$chatapp_test_failed = 0;
foreach ( array_keys( $chatapp_test_setup ) as $chatapp_test_scenario ) {
	list( $code, $out, $err ) = chatapp_test_php( array( __FILE__, '--scenario=' . $chatapp_test_scenario ) );
	$counted = preg_match( '/^#counts (\d+) (\d+)$/m', $out, $m );
	echo (string) preg_replace( '/^#counts.*\n?/m', '', $out );
	if ( 0 !== $code || 1 !== $counted || '' !== $err ) {
		++$chatapp_test_failed;
		echo "not ok - {$chatapp_test_scenario}: scenario crashed (exit {$code})\n    # " . str_replace( "\n", "\n    # ", trim( $err ) ) . "\n";
	}
	if ( 1 === $counted ) {
		$chatapp_test_passed += (int) $m[1];
		$chatapp_test_failed += (int) $m[2];
	}
}
echo "{$chatapp_test_passed} passed, {$chatapp_test_failed} failed\n";
exit( 0 === $chatapp_test_failed ? 0 : 1 );
