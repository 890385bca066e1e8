<?php
/**
 * Keep chatapp's knowledge index in step with the site's posts and pages.
 *
 * Off until the owner ticks it (option chatapp_push_content = '1'). Publishing or updating a
 * post or page pushes it (PUT <chatapp_url>/api/knowledge/documents, its permalink as the
 * document's URL); unpublishing, trashing or deleting it removes it. Each call carries a
 * short-lived HS256 JWT for the 'chatapp-knowledge' audience, signed with
 * CHATAPP_WP_SHARED_SECRET.
 *
 * The editor never waits on chatapp: a change only records a job (one per post, the latest
 * wins) and asks WP-Cron to run at once (spawn_cron() is a non-blocking loopback request).
 * The cron run sends the jobs with a short timeout; one that fails stays queued and is
 * retried later, backing off, by WP-Cron.
 *
 * @package ChatappEmbed
 */

defined( 'ABSPATH' ) || exit;

const CHATAPP_EMBED_PUSH_OPTION   = 'chatapp_push_content';
const CHATAPP_EMBED_PUSH_QUEUE    = 'chatapp_push_queue';
const CHATAPP_EMBED_PUSH_HOOK     = 'chatapp_embed_push';
const CHATAPP_EMBED_PUSH_URL_META = '_chatapp_pushed_url';
const CHATAPP_EMBED_PUSH_AUDIENCE = 'chatapp-knowledge';
// The server accepts at most 300 seconds between iat and exp.
const CHATAPP_EMBED_PUSH_TTL = 120;
// Seconds one call to chatapp may take, in the cron run (never in the editor's request).
const CHATAPP_EMBED_PUSH_TIMEOUT = 5;
// A job that failed this many times is dropped; retries back off from 1 minute to 1 hour.
const CHATAPP_EMBED_PUSH_MAX_ATTEMPTS = 12;
const CHATAPP_EMBED_PUSH_RETRY_MIN    = 60;
const CHATAPP_EMBED_PUSH_RETRY_MAX    = 3600;

/**
 * Whether the owner turned pushing on.
 *
 * @return bool
 */
function chatapp_embed_push_enabled(): bool {
	return '1' === get_option( CHATAPP_EMBED_PUSH_OPTION, '' );
}

/**
 * The post types whose posts are pushed (filter: chatapp_embed_push_post_types).
 *
 * @return string[]
 */
function chatapp_embed_push_post_types(): array {
	$types = apply_filters( 'chatapp_embed_push_post_types', array( 'post', 'page' ) );
	return is_array( $types ) ? array_map( 'strval', $types ) : array( 'post', 'page' );
}

/**
 * Whether visitors can read the post: published, not password-protected.
 *
 * @param WP_Post $post The post.
 * @param string  $status Its status.
 * @return bool
 */
function chatapp_embed_push_is_public( $post, string $status ): bool {
	return 'publish' === $status && '' === (string) $post->post_password;
}

/**
 * The URL the post is (or was last) known by in chatapp's index.
 *
 * @param WP_Post $post The post.
 * @return string
 */
function chatapp_embed_push_known_url( $post ): string {
	$url = get_post_meta( $post->ID, CHATAPP_EMBED_PUSH_URL_META, true );
	return is_string( $url ) ? $url : '';
}

/**
 * Record what chatapp must do about a post after a status change (transition_post_status).
 *
 * @param string  $new_status The post's new status.
 * @param string  $old_status Its status before.
 * @param WP_Post $post       The post.
 */
function chatapp_embed_push_on_transition( $new_status, $old_status, $post ): void {
	if ( ! chatapp_embed_push_enabled() || ! is_object( $post ) || empty( $post->ID ) ) {
		return;
	}
	if ( wp_is_post_revision( $post ) || wp_is_post_autosave( $post ) ) {
		return;
	}
	if ( ! in_array( (string) $post->post_type, chatapp_embed_push_post_types(), true ) ) {
		return;
	}
	$known = chatapp_embed_push_known_url( $post );
	if ( chatapp_embed_push_is_public( $post, (string) $new_status ) ) {
		$url = (string) get_permalink( $post );
		if ( '' !== $known && $known !== $url ) {
			// A new slug: the old address leaves the index.
			chatapp_embed_push_enqueue( 'delete', 0, $known );
		}
		update_post_meta( $post->ID, CHATAPP_EMBED_PUSH_URL_META, $url );
		chatapp_embed_push_enqueue( 'put', (int) $post->ID, $url );
	} elseif ( '' !== $known ) {
		delete_post_meta( $post->ID, CHATAPP_EMBED_PUSH_URL_META );
		chatapp_embed_push_enqueue( 'delete', (int) $post->ID, $known );
	}
}
add_action( 'transition_post_status', 'chatapp_embed_push_on_transition', 10, 3 );

/**
 * Remove a post deleted for good (before_delete_post) that chatapp still holds.
 *
 * @param int $post_id The post's id.
 */
function chatapp_embed_push_on_delete( $post_id ): void {
	if ( ! chatapp_embed_push_enabled() ) {
		return;
	}
	$post = get_post( $post_id );
	if ( ! is_object( $post ) ) {
		return;
	}
	$known = chatapp_embed_push_known_url( $post );
	if ( '' !== $known ) {
		chatapp_embed_push_enqueue( 'delete', (int) $post->ID, $known );
	}
}
add_action( 'before_delete_post', 'chatapp_embed_push_on_delete', 10, 1 );

/**
 * The queued jobs, by key ('post:<id>' or 'url:<url>'), as stored now.
 *
 * Read from the database, never from this request's cache of the option: a cron run lasts
 * as long as its pushes, and an editor's save meanwhile queues a job in another request.
 * From a stale copy the run would write that job away.
 *
 * @return array<string, array>
 */
function chatapp_embed_push_queue(): array {
	wp_cache_delete( CHATAPP_EMBED_PUSH_QUEUE, 'options' );
	$missing = wp_cache_get( 'notoptions', 'options' );
	if ( is_array( $missing ) && isset( $missing[ CHATAPP_EMBED_PUSH_QUEUE ] ) ) {
		unset( $missing[ CHATAPP_EMBED_PUSH_QUEUE ] );
		wp_cache_set( 'notoptions', $missing, 'options' );
	}
	$queue = get_option( CHATAPP_EMBED_PUSH_QUEUE, array() );
	return is_array( $queue ) ? $queue : array();
}

/**
 * Queue a job (the latest one for a post replaces the earlier) and ask WP-Cron to run now.
 *
 * @param string $action  'put' or 'delete'.
 * @param int    $post_id The post (0 for an address alone).
 * @param string $url     The document's URL.
 */
function chatapp_embed_push_enqueue( string $action, int $post_id, string $url ): void {
	$queue = chatapp_embed_push_queue();
	$key   = $post_id > 0 ? 'post:' . $post_id : 'url:' . $url;
	// A delete for an address the same post is now put at again would undo that put.
	if ( 'put' === $action ) {
		unset( $queue[ 'url:' . $url ] );
	}
	$queue[ $key ] = array(
		// A save within the same second as the last is still a new job (see forget).
		'id'       => wp_generate_uuid4(),
		'action'   => $action,
		'post_id'  => $post_id,
		'url'      => $url,
		'attempts' => 0,
		'due'      => time(),
	);
	update_option( CHATAPP_EMBED_PUSH_QUEUE, $queue, false );
	chatapp_embed_push_schedule( time() );
	// A non-blocking request to wp-cron.php: the push happens now, in another request.
	spawn_cron();
}

/**
 * Make sure the cron event runs at $when (or earlier, if it is already due sooner).
 *
 * @param int $when Unix time.
 */
function chatapp_embed_push_schedule( int $when ): void {
	$next = wp_next_scheduled( CHATAPP_EMBED_PUSH_HOOK );
	if ( false !== $next && $next <= $when ) {
		return;
	}
	if ( false !== $next ) {
		wp_clear_scheduled_hook( CHATAPP_EMBED_PUSH_HOOK );
	}
	wp_schedule_single_event( $when, CHATAPP_EMBED_PUSH_HOOK );
}

/**
 * The short-lived token that authorises a push.
 *
 * @param int|null $now Unix time to issue at; defaults to the current time.
 * @return string '' without the shared secret.
 */
function chatapp_embed_push_token( ?int $now = null ): string {
	$issued_at = null === $now ? time() : $now;
	return chatapp_embed_jwt_encode(
		array(
			'iss' => (string) home_url(),
			'sub' => 'wordpress',
			'iat' => $issued_at,
			'exp' => $issued_at + CHATAPP_EMBED_PUSH_TTL,
			'aud' => CHATAPP_EMBED_PUSH_AUDIENCE,
		),
		chatapp_embed_secret()
	);
}

/**
 * A post's rendered content as a whole HTML page.
 *
 * chatapp reads the main content of a page. A bare fragment is not one: a post of a single
 * paragraph renders as one <p>, which parses as no page at all and would be indexed empty.
 *
 * @param string $title The post's title, as text.
 * @param string $body  Its rendered content (the_content).
 * @return string
 */
function chatapp_embed_push_page( string $title, string $body ): string {
	return '<!DOCTYPE html><html><head><meta charset="utf-8"><title>' . esc_html( $title ) . '</title></head>'
		. '<body><article>' . $body . '</article></body></html>';
}

/**
 * The document chatapp indexes for a post: its permalink, title, rendered page, modified time.
 *
 * @param WP_Post $post The post.
 * @param string  $url  Its permalink.
 * @return array
 */
function chatapp_embed_push_document( $post, string $url ): array {
	$title = html_entity_decode( wp_strip_all_tags( (string) get_the_title( $post ) ), ENT_QUOTES, 'UTF-8' );
	$body  = (string) apply_filters( 'the_content', (string) $post->post_content );
	return array(
		'url'          => $url,
		'title'        => $title,
		'content'      => chatapp_embed_push_page( $title, $body ),
		'content_type' => 'text/html',
		'modified'     => (int) get_post_modified_time( 'U', true, $post ),
	);
}

/**
 * Send one job to chatapp; true when it is done with (sent, or no longer needed).
 *
 * @param array $job A queued job.
 * @return bool
 */
function chatapp_embed_push_send( array $job ): bool {
	$base  = chatapp_embed_url();
	$token = chatapp_embed_push_token();
	if ( '' === $base || '' === $token ) {
		return false; // Not configured yet: keep it for when it is.
	}
	$endpoint = $base . '/api/knowledge/documents';
	$args     = array(
		'timeout'     => CHATAPP_EMBED_PUSH_TIMEOUT,
		'redirection' => 0,
		'headers'     => array( 'Authorization' => 'Bearer ' . $token ),
	);
	if ( 'put' === $job['action'] ) {
		$post = get_post( (int) $job['post_id'] );
		if ( ! is_object( $post ) || ! chatapp_embed_push_is_public( $post, (string) $post->post_status ) ) {
			return true; // Gone or unpublished since: its own delete job follows.
		}
		$body = wp_json_encode( chatapp_embed_push_document( $post, (string) $job['url'] ), JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE );
		if ( ! is_string( $body ) ) {
			return true; // Nothing we could ever send.
		}
		$args['method']                  = 'PUT';
		$args['headers']['Content-Type'] = 'application/json';
		$args['body']                    = $body;
	} else {
		$args['method'] = 'DELETE';
		$endpoint      .= '?url=' . rawurlencode( (string) $job['url'] );
	}
	$response = wp_remote_request( $endpoint, $args );
	if ( is_wp_error( $response ) ) {
		return false;
	}
	$status = (int) wp_remote_retrieve_response_code( $response );
	if ( $status >= 200 && $status < 300 ) {
		return true;
	}
	// A delete of what chatapp does not hold is done; a document it refuses (400, 413)
	// will be refused again. Anything else (401/403 while the secret is being fixed, 404
	// while knowledge is off, 408, 429, 5xx) is worth another try.
	return ( 'delete' === $job['action'] && 404 === $status ) || 400 === $status || 413 === $status;
}

/**
 * Run the due jobs (the WP-Cron event); what failed is tried again later.
 *
 * @param int|null $now Unix time; defaults to the current time.
 */
function chatapp_embed_push_run( $now = null ): void {
	$now = is_int( $now ) ? $now : time();
	foreach ( chatapp_embed_push_queue() as $key => $job ) {
		if ( ! is_array( $job ) || ! isset( $job['action'], $job['url'] ) ) {
			chatapp_embed_push_forget( $key, null );
			continue;
		}
		if ( (int) ( $job['due'] ?? 0 ) > $now ) {
			continue;
		}
		if ( chatapp_embed_push_send( $job ) ) {
			chatapp_embed_push_forget( $key, $job );
			continue;
		}
		$attempts = (int) ( $job['attempts'] ?? 0 ) + 1;
		if ( $attempts >= CHATAPP_EMBED_PUSH_MAX_ATTEMPTS ) {
			chatapp_embed_push_forget( $key, $job );
			continue;
		}
		$due = $now + min( CHATAPP_EMBED_PUSH_RETRY_MAX, CHATAPP_EMBED_PUSH_RETRY_MIN * ( 2 ** ( $attempts - 1 ) ) );
		chatapp_embed_push_update( $key, $job, array( 'attempts' => $attempts, 'due' => $due ) );
	}
	// What is left: retries, and jobs queued while this run sent. Their save scheduled this
	// event in its own request; this cron run still holds the schedule as it loaded it, and
	// wp-cron.php, unscheduling its next event, would write that copy back over the save's.
	// So it reads the schedule afresh, then makes sure the event is in it.
	wp_cache_delete( 'alloptions', 'options' );
	wp_cache_delete( 'cron', 'options' );
	chatapp_embed_push_schedule_queued( $now );
}
add_action( CHATAPP_EMBED_PUSH_HOOK, 'chatapp_embed_push_run' );

/**
 * Schedule the cron event for the earliest queued job, if any job is queued.
 *
 * @param int $now Unix time; a job already due runs at the next cron run.
 */
function chatapp_embed_push_schedule_queued( int $now ): void {
	$dues = array();
	foreach ( chatapp_embed_push_queue() as $job ) {
		if ( is_array( $job ) ) {
			$dues[] = (int) ( $job['due'] ?? 0 );
		}
	}
	if ( array() !== $dues ) {
		chatapp_embed_push_schedule( max( $now, min( $dues ) ) );
	}
}

/**
 * Give queued jobs their cron event back if it was lost (admin_init: an editor is about).
 *
 * A save made while a cron run is busy with WordPress's own slower events, past this
 * plugin's, schedules the event in its own request; that run then writes back the schedule
 * as it loaded it, without the event. The job stays queued; here it gets its event again.
 */
function chatapp_embed_push_reschedule_lost(): void {
	if ( false === wp_next_scheduled( CHATAPP_EMBED_PUSH_HOOK ) ) {
		chatapp_embed_push_schedule_queued( time() );
	}
}
add_action( 'admin_init', 'chatapp_embed_push_reschedule_lost' );

/**
 * Drop a job, unless a newer one for the same key replaced it meanwhile.
 *
 * @param string     $key Its key.
 * @param array|null $job The job as it was sent.
 */
function chatapp_embed_push_forget( string $key, ?array $job ): void {
	$queue = chatapp_embed_push_queue();
	if ( null === $job || ( isset( $queue[ $key ] ) && $queue[ $key ] == $job ) ) { // phpcs:ignore Universal.Operators.StrictComparisons -- same fields, same values.
		unset( $queue[ $key ] );
		update_option( CHATAPP_EMBED_PUSH_QUEUE, $queue, false );
	}
}

/**
 * Update a job's retry state, unless a newer one for the same key replaced it meanwhile.
 *
 * @param string $key     Its key.
 * @param array  $job     The job as it was sent.
 * @param array  $changes The fields to change.
 */
function chatapp_embed_push_update( string $key, array $job, array $changes ): void {
	$queue = chatapp_embed_push_queue();
	if ( isset( $queue[ $key ] ) && $queue[ $key ] == $job ) { // phpcs:ignore Universal.Operators.StrictComparisons -- same fields, same values.
		$queue[ $key ] = array_merge( $job, $changes );
		update_option( CHATAPP_EMBED_PUSH_QUEUE, $queue, false );
	}
}
