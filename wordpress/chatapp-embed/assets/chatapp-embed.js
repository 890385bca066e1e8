/**
 * Chatapp Embed: resize [ai_chat] iframes on request from the chatapp page,
 * and reload the page when the chat's sign-in has ended for good.
 *
 * Accepts only {type: "chatapp:resize", height: n} and {type: "chatapp:reload"}
 * posted by the iframe's own window from the chatapp origin named in its
 * data-chatapp-origin attribute. A reload renders the shortcode again, with a
 * fresh sign-in token for the logged-in user (a chat identity lasts 8 hours).
 */
( function () {
	'use strict';

	var MIN_HEIGHT = 200;
	var MAX_HEIGHT = 2000;

	function frameFor( source ) {
		var frames = document.querySelectorAll( 'iframe[data-chatapp-embed]' );
		for ( var i = 0; i < frames.length; i++ ) {
			if ( source && frames[ i ].contentWindow === source ) {
				return frames[ i ];
			}
		}
		return null;
	}

	window.addEventListener( 'message', function ( event ) {
		var data = event.data;
		if ( ! data || typeof data !== 'object' ) {
			return;
		}
		if ( data.type !== 'chatapp:resize' && data.type !== 'chatapp:reload' ) {
			return;
		}
		var frame = frameFor( event.source );
		if ( ! frame || ! event.origin || event.origin !== frame.getAttribute( 'data-chatapp-origin' ) ) {
			return;
		}
		if ( data.type === 'chatapp:reload' ) {
			window.location.reload();
			return;
		}
		if ( typeof data.height !== 'number' || ! isFinite( data.height ) ) {
			return;
		}
		var height = Math.min( MAX_HEIGHT, Math.max( MIN_HEIGHT, Math.round( data.height ) ) );
		frame.style.height = height + 'px';
	} );
}() );
