// The tab's one EventSource on /api/v1/events, shared by every view: views subscribe to
// event types and unsubscribe when they leave. A reconnection counts as a resync, since
// events may have been missed while the connection was down.

const EVENT_TYPES = ['hello', 'incident', 'grid', 'source', 'detections', 'patrol', 'resync'];
const RETRY_AFTER_CLOSE_MS = 5000;

const handlers = new Map(EVENT_TYPES.map((type) => [type, new Set()]));
const statusHandlers = new Set();
let source = null;
let helloCount = 0;
let retryTimer = null;
let closedHandler = async () => true;

/** Runs `handler(data)` for each event of `type`; returns the function that unsubscribes. */
export function onEvent(type, handler) {
  handlers.get(type).add(handler);
  return () => handlers.get(type).delete(handler);
}

/** Delivers an event to the subscribers as if the server had sent it (e.g. our own ack's answer). */
export function emitLocal(type, data) {
  for (const handler of [...handlers.get(type)]) {
    try {
      handler(data);
    } catch (error) {
      console.warn(`handler of ${type} failed`, error);
    }
  }
}

/** Subscribes to 'live' / 'reconnecting' changes of the connection. */
export function onConnectionStatus(handler) {
  statusHandlers.add(handler);
  return () => statusHandlers.delete(handler);
}

function setStatus(status) {
  for (const handler of statusHandlers) handler(status);
}

/**
 * `check` runs when the server closed the stream for good (an HTTP error): it answers
 * whether to try again (false when the session has ended).
 */
export function startEvents(check) {
  if (source) return;
  closedHandler = check ?? closedHandler;
  source = new EventSource('/api/v1/events');
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (message) => {
      let data;
      try {
        data = JSON.parse(message.data || '{}');
      } catch {
        return;
      }
      if (type === 'hello') {
        helloCount += 1;
        setStatus('live');
        emitLocal('hello', data);
        // Every hello after the first follows a reconnection: lists may be stale.
        if (helloCount > 1) emitLocal('resync', {});
        return;
      }
      emitLocal(type, data);
    });
  }
  source.addEventListener('error', () => {
    if (!source) return;
    setStatus('reconnecting');
    if (source.readyState !== EventSource.CLOSED) return; // the browser retries by itself
    source = null;
    retryTimer = setTimeout(async () => {
      retryTimer = null;
      if (await closedHandler()) startEvents();
    }, RETRY_AFTER_CLOSE_MS);
  });
}

export function stopEvents() {
  clearTimeout(retryTimer);
  retryTimer = null;
  source?.close();
  source = null;
  helloCount = 0;
}
