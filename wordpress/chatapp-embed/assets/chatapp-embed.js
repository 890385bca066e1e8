/**
 * Chatapp Embed: resize [ai_chat] iframes on request from the chatapp page.
 *
 * Accepts only {type: "chatapp:resize", height: n} posted by the iframe's own
 * window from the chatapp origin named in its data-chatapp-origin attribute.
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
		if ( ! data || typeof data !== 'object' || data.type !== 'chatapp:resize' ) {
			return;
		}
		if ( typeof data.height !== 'number' || ! isFinite( data.height ) ) {
			return;
		}
		var frame = frameFor( event.source );
		if ( ! frame || ! event.origin || event.origin !== frame.getAttribute( 'data-chatapp-origin' ) ) {
			return;
		}
		var height = Math.min( MAX_HEIGHT, Math.max( MIN_HEIGHT, Math.round( data.height ) ) );
		frame.style.height = height + 'px';
	} );
}() );
