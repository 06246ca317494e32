// The console's entry: session, header and navigation, language, and the hash router that
// mounts one view at a time into <div id="view">.

import { api, onUnauthorized } from './api.js';
import { render as renderAlarm, startAlarm, stopAlarm } from './alarm.js';
import { h, label, replaceChildren } from './dom.js';
import { onConnectionStatus, onEvent, startEvents, stopEvents } from './events.js';
import { applyStaticTranslations, language, onLanguageChange, setLanguage, t } from './i18n.js';
import { can, maybeSignedIn, setUser, user } from './session.js';
import * as auditView from './views/audit.js';
import * as incidentView from './views/incident.js';
import * as liveView from './views/live.js';
import * as loginView from './views/login.js';
import * as mapView from './views/map.js';
import * as patrolView from './views/patrol.js';
import * as sourcesView from './views/sources.js';
import * as ticketsView from './views/tickets.js';

// `nav` routes appear in the navigation, in this order, for users with the permission.
const ROUTES = [
  { name: 'live', pattern: /^\/live$/, permission: 'incidents.read', view: liveView, nav: true },
  { name: 'map', pattern: /^\/map$/, permission: 'incidents.read', view: mapView, nav: true },
  { name: 'patrol', pattern: /^\/patrol$/, permission: 'incidents.read', view: patrolView, nav: true },
  { name: 'tickets', pattern: /^\/tickets$/, permission: 'tickets.read', view: ticketsView, nav: true },
  { name: 'sources', pattern: /^\/sources$/, permission: 'sources.read', view: sourcesView, nav: true },
  { name: 'audit', pattern: /^\/audit$/, permission: 'audit.read', view: auditView, nav: true },
  { name: 'incident', pattern: /^\/incidents\/([^/]+)$/, permission: 'incidents.read', view: incidentView },
  { name: 'login', pattern: /^\/login$/, view: loginView, public: true },
];

const viewElement = document.getElementById('view');
const kiosk = new URLSearchParams(location.search).get('kiosk') === '1';

let unmountView = null;
let mountedPath = null;
let firstRoute = true;

function currentPath() {
  return decodeURIComponent(location.hash.replace(/^#/, '')) || '/';
}

function navigate(path) {
  if (currentPath() === path) route();
  else location.hash = `#${path}`;
}

/** The page a user lands on: inspectors their tickets, everyone else the live view. */
function homePath() {
  if (can('tickets.read') && !can('sources.read')) return '/tickets';
  const first = ROUTES.find((candidate) => candidate.nav && can(candidate.permission));
  return first ? `/${first.name}` : '/login';
}

function renderNav() {
  const nav = document.getElementById('nav');
  const path = currentPath();
  const links = user()
    ? ROUTES.filter((candidate) => candidate.nav && can(candidate.permission)).map((candidate) => {
      const href = `/${candidate.name}`;
      const active = path === href || (candidate.name === 'live' && path.startsWith('/incidents/'));
      return h('a', {
        href: `#${href}`, testid: `nav-${candidate.name}`, class: 'nav-link',
        'aria-current': active ? 'page' : null,
      }, t(`nav.${candidate.name}`));
    })
    : [];
  replaceChildren(nav, links);
  nav.hidden = links.length === 0;

  const nameElement = document.getElementById('user-name');
  const logoutButton = document.getElementById('logout');
  nameElement.hidden = logoutButton.hidden = !user();
  if (user()) nameElement.textContent = `${user().name} · ${label('role', user().role)}`;
}

function route() {
  const path = currentPath();
  let params = [];
  const matched = ROUTES.find((candidate) => {
    const match = candidate.pattern.exec(path);
    if (match) params = match.slice(1);
    return Boolean(match);
  });

  if (!user() && !matched?.public) {
    if (path !== '/' && path !== '/login') sessionStorage.setItem('skynet.afterLogin', path);
    navigate('/login');
    return;
  }
  if (!matched || (user() && matched.name === 'login')) {
    navigate(homePath());
    return;
  }

  unmountView?.();
  unmountView = null;
  mountedPath = path;
  viewElement.replaceChildren();
  renderNav();
  document.title = `${t(`nav.${matched.name}`)} · ${t('app.title')}`;

  if (matched.permission && !can(matched.permission)) {
    // Refused here without asking the server: it would answer 403 anyway.
    viewElement.append(h('section', { class: 'panel', testid: 'forbidden' },
      h('h1', { tabindex: '-1' }, t('forbidden.title')), h('p', {}, t('forbidden.text'))));
  } else {
    // A fresh root per mount, so nothing a previous view left behind (a late answer, its
    // aria-busy count) touches the new one.
    const root = h('div', { class: 'view-root', testid: `view-${matched.name}` });
    viewElement.append(root);
    unmountView = matched.view.mount(root, { params, navigate, kiosk }) ?? null;
  }
  // Move focus to the new page's heading for keyboard and screen reader users, except on
  // the first load (the browser's own starting point is better there).
  if (!firstRoute) viewElement.querySelector('h1')?.focus({ preventScroll: true });
  firstRoute = false;
}

/** The session has started (login) or was found (reload): connect events and the alarm. */
export function startSession(signedInUser) {
  setUser(signedInUser);
  startEvents(async () => {
    try {
      await api.me();
      return true;
    } catch (error) {
      return error.status !== 401;
    }
  });
  startAlarm(document.getElementById('alarm-banner'));
  const afterLogin = sessionStorage.getItem('skynet.afterLogin');
  sessionStorage.removeItem('skynet.afterLogin');
  navigate(afterLogin && afterLogin !== '/login' ? afterLogin : homePath());
}

function endSession() {
  stopAlarm();
  stopEvents();
  setUser(null);
  renderNav();
  navigate('/login');
}

async function logout() {
  stopEvents(); // close the stream first, so it does not fail once the cookie is gone
  try {
    await api.logout();
  } catch {
    // Signed out locally either way.
  }
  endSession();
}

// Each (re)connection's hello carries the user as the server sees them now: a changed role
// or permission shows in the navigation without a reload.
onEvent('hello', ({ user: current }) => {
  if (!current || !user()) return;
  const changed = JSON.stringify(current.permissions) !== JSON.stringify(user().permissions);
  setUser(current);
  if (changed) route();
});

function setupConnectionIndicator() {
  const element = document.getElementById('connection');
  onConnectionStatus((status) => {
    element.hidden = false;
    element.dataset.status = status;
    element.textContent = t(`connection.${status}`);
  });
}

function setupLanguageSwitch() {
  const select = document.getElementById('language-switch');
  select.value = language();
  select.addEventListener('change', () => setLanguage(select.value));
  onLanguageChange(() => {
    select.value = language();
    applyStaticTranslations(document);
    renderNav();
    renderAlarm(true);
    const status = document.getElementById('connection').dataset.status;
    if (status) document.getElementById('connection').textContent = t(`connection.${status}`);
    // Views render their text when mounted: mount the current one again.
    if (mountedPath) route();
  });
}

async function boot() {
  if (kiosk) document.body.classList.add('kiosk');
  applyStaticTranslations(document);
  setupLanguageSwitch();
  setupConnectionIndicator();
  document.getElementById('logout').addEventListener('click', logout);
  onUnauthorized(() => { if (user()) endSession(); });
  window.addEventListener('hashchange', route);

  if (maybeSignedIn()) {
    try {
      startSession(await api.me());
      return;
    } catch {
      setUser(null);
    }
  }
  route();
}

// The login view calls back here once the server accepted the credentials.
loginView.onLoggedIn((signedInUser) => startSession(signedInUser));

boot();
