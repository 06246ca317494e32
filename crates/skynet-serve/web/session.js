// Who is signed in, and what the console may show them. The server enforces the same
// permissions; the console only hides what would be refused.

let currentUser = null;

// The session cookie is HttpOnly, so JavaScript cannot see it. This flag remembers that a
// login happened, so a fresh visit shows the login form instead of asking /me for a 401.
const SIGNED_IN_KEY = 'skynet.signedIn';

export function user() {
  return currentUser;
}

export function setUser(value) {
  currentUser = value;
  if (value) localStorage.setItem(SIGNED_IN_KEY, '1');
  else localStorage.removeItem(SIGNED_IN_KEY);
}

export function maybeSignedIn() {
  return localStorage.getItem(SIGNED_IN_KEY) === '1';
}

export function can(permission) {
  return Boolean(currentUser?.permissions?.includes(permission));
}
