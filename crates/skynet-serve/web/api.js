// The console's only door to the server: same-origin JSON calls carrying the HttpOnly
// session cookie (the token itself never reaches JavaScript).

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message || code);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

let unauthorizedHandler = () => {};

/** Called when a call answers 401: the session ended (expired, revoked, logged out elsewhere). */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

async function call(path, { method = 'GET', body, signal } = {}) {
  const headers = { Accept: 'application/json' };
  // Every mutating call is JSON, even without a body: the server may refuse other types
  // (a form post from another site cannot send application/json without CORS).
  if (method !== 'GET') {
    headers['Content-Type'] = 'application/json';
    body ??= {};
  }
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      signal,
    });
  } catch (error) {
    if (error.name === 'AbortError') throw error;
    throw new ApiError(0, 'network', error.message);
  }
  const isJson = (response.headers.get('Content-Type') ?? '').includes('json');
  const payload = response.status === 204 || !isJson ? null : await response.json().catch(() => null);
  if (!response.ok) {
    if (response.status === 401 && path !== '/api/v1/login') unauthorizedHandler();
    throw new ApiError(response.status, payload?.error ?? `http_${response.status}`,
      payload?.message ?? response.statusText, response.headers.get('Retry-After'));
  }
  return payload;
}

/** "?a=1&b=x,y" from an object, leaving out empty values; arrays are joined by commas. */
function query(params = {}) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value == null || value === '' || (Array.isArray(value) && value.length === 0)) continue;
    search.set(key, Array.isArray(value) ? value.join(',') : String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}

const id = (value) => encodeURIComponent(value);

export const api = {
  login: (username, password) => call('/api/v1/login', { method: 'POST', body: { username, password } }),
  logout: () => call('/api/v1/logout', { method: 'POST' }),
  me: () => call('/api/v1/me'),

  incidents: (params, signal) => call(`/api/v1/incidents${query(params)}`, { signal }),
  incident: (incidentId, signal) => call(`/api/v1/incidents/${id(incidentId)}`, { signal }),
  acknowledge: (incidentId, note) =>
    call(`/api/v1/incidents/${id(incidentId)}/ack`, { method: 'POST', body: note ? { note } : {} }),
  addNote: (incidentId, text) => call(`/api/v1/incidents/${id(incidentId)}/notes`, { method: 'POST', body: { text } }),
  setStatus: (incidentId, status, note) =>
    call(`/api/v1/incidents/${id(incidentId)}/status`, { method: 'POST', body: note ? { status, note } : { status } }),

  grids: (signal) => call('/api/v1/grids', { signal }),
  cameras: (signal) => call('/api/v1/cameras', { signal }),
  sensors: (signal) => call('/api/v1/sensors', { signal }),
  platforms: (signal) => call('/api/v1/platforms', { signal }),
  setThresholds: (cameraId, thresholds) =>
    call(`/api/v1/cameras/${id(cameraId)}/thresholds`, { method: 'PUT', body: thresholds }),
  thresholdsWhatIf: (cameraId, thresholds) =>
    call(`/api/v1/cameras/${id(cameraId)}/thresholds/what-if`, { method: 'POST', body: thresholds }),

  patrols: (signal) => call('/api/v1/patrols', { signal }),
  patrolGrids: (signal) => call('/api/v1/patrols/grids', { signal }),
  patrolRounds: (patrol, limit, signal) => call(`/api/v1/patrols/${id(patrol)}/rounds${query({ limit })}`, { signal }),

  tickets: (signal) => call('/api/v1/tickets', { signal }),
  audit: (params, signal) => call(`/api/v1/audit${query(params)}`, { signal }),
};
