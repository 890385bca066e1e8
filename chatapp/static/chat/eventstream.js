/*
 * Reading an event stream from a fetch() body: one request per turn (POST
 * /api/chat with `Accept: text/event-stream`) reads the turn's events from
 * the POST's own response. The parser follows the WHATWG "Interpreting an
 * event stream" rules, as EventSource does, and hands on each event the
 * moment its blank line arrives, so the first word is never held back.
 */

/**
 * Read an event stream from `reader` (a body's ReadableStreamDefaultReader)
 * until it ends, calling `onEvent(type, lastEventId, data)` per event.
 * Rejects when the connection fails; resolves when the body ends.
 */
export async function readEventStream(reader, onEvent) {
  const decoder = new TextDecoder();
  let buffer = '';
  let type = '';
  let data = [];
  let lastEventId = '';

  const dispatch = () => {
    // NOTE(WHATWG): an event with an empty data buffer is not dispatched.
    if (data.length) onEvent(type || 'message', lastEventId, data.join('\n'));
    type = '';
    data = [];
  };
  const field = (line) => {
    if (line === '') return dispatch();
    if (line.startsWith(':')) return undefined; // a comment (keep-alive)
    const colon = line.indexOf(':');
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (name === 'event') type = value;
    else if (name === 'data') data.push(value);
    // NOTE(WHATWG): an id containing U+0000 is ignored.
    else if (name === 'id' && !value.includes('\0')) lastEventId = value;
    return undefined; // `retry` and unknown fields: nothing to do here
  };

  for (;;) {
    const { value, done } = await reader.read();
    // NOTE(WHATWG): UTF-8 decode, one leading BOM dropped (TextDecoder does both).
    buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
    // NOTE(WHATWG): a line ends at CRLF, LF or CR. A CR last in the buffer may
    // be the first half of a CRLF, so it waits for the next chunk.
    let start = 0;
    for (let i = 0; i < buffer.length; i += 1) {
      const c = buffer[i];
      if (c !== '\n' && c !== '\r') continue;
      if (c === '\r' && i === buffer.length - 1 && !done) break;
      field(buffer.slice(start, i));
      if (c === '\r' && buffer[i + 1] === '\n') i += 1;
      start = i + 1;
    }
    buffer = buffer.slice(start);
    // NOTE(WHATWG): at the end, an incomplete event is discarded.
    if (done) return;
  }
}
