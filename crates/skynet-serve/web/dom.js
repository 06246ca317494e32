// Small DOM helpers shared by the views: element builders, formatting of times and levels,
// and one ticking clock for every countdown on the page.

import { t, locale } from './i18n.js';

const SVG_NS = 'http://www.w3.org/2000/svg';

// Sets properties on an element built by h() or s(). `testid` becomes data-testid, `on*`
// become listeners, `text` the text content; null/false leave the attribute out.
function applyProps(element, props) {
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value == null || value === false) continue;
    if (key === 'class') element.setAttribute('class', value);
    else if (key === 'testid') element.dataset.testid = value;
    else if (key === 'dataset') Object.assign(element.dataset, value);
    else if (key === 'text') element.textContent = value;
    else if (key.startsWith('on') && typeof value === 'function') element.addEventListener(key.slice(2), value);
    else if (key === 'value' || key === 'checked') element[key] = value;
    else element.setAttribute(key, value === true ? '' : value);
  }
}

function appendChildren(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
}

/** An HTML element: h('button', {class: 'x', onclick}, 'text', child...). */
export function h(tag, props, ...children) {
  const element = document.createElement(tag);
  applyProps(element, props);
  appendChildren(element, children);
  return element;
}

/** An SVG element, same shape as h(). */
export function s(tag, props, ...children) {
  const element = document.createElementNS(SVG_NS, tag);
  applyProps(element, props);
  appendChildren(element, children);
  return element;
}

export const LEVELS = ['I', 'II', 'III', 'IV'];
export const FINAL_STATES = new Set(['verified', 'rejected', 'closed']);

/** A badge naming the level in words and colour (colour alone is not enough for everyone). */
export function levelBadge(level) {
  const known = LEVELS.includes(level);
  return h('span', { class: `badge level-${known ? level : 'none'}` }, known ? t(`level.${level}`) : t('level.none'));
}

export function stateBadge(state) {
  return h('span', { class: `badge state state-${state}` }, label('state', state));
}

/** A translated label for a value from the server, or the value itself when none exists. */
export function label(group, value) {
  if (value == null || value === '') return '–';
  const key = `${group}.${value}`;
  const text = t(key);
  return text === key ? String(value).replaceAll('_', ' ') : text;
}

export function formatTime(iso) {
  if (!iso) return '–';
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  const sameDay = date.toDateString() === new Date().toDateString();
  return date.toLocaleString(locale(), sameDay
    ? { hour: '2-digit', minute: '2-digit', second: '2-digit' }
    : { month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit' });
}

/** A <time> element with the machine-readable instant and a readable local time. */
export function timeElement(iso) {
  return h('time', { datetime: iso ?? null, title: iso ?? null }, formatTime(iso));
}

export function formatNumber(value, digits = 2) {
  if (value == null || Number.isNaN(Number(value))) return '–';
  return Number(value).toLocaleString(locale(), { maximumFractionDigits: digits });
}

/** "1 h 05 min", "4 min 12 s", "12 s" for a positive number of milliseconds. */
export function formatDuration(milliseconds) {
  const totalSeconds = Math.max(0, Math.floor(milliseconds / 1000));
  const days = Math.floor(totalSeconds / 86400);
  const hours = Math.floor((totalSeconds % 86400) / 3600);
  const minutes = Math.floor((totalSeconds % 3600) / 60);
  const seconds = totalSeconds % 60;
  if (days > 0) return t('duration.days', { days, hours });
  if (hours > 0) return t('duration.hours', { hours, minutes: String(minutes).padStart(2, '0') });
  if (minutes > 0) return t('duration.minutes', { minutes, seconds: String(seconds).padStart(2, '0') });
  return t('duration.seconds', { seconds });
}

// A deadline is "close" when less than 20 % of its window or less than 10 minutes is left.
const CLOSE_FRACTION = 0.2;
const CLOSE_MS = 10 * 60 * 1000;

/** 'overdue', 'close' or 'ok' for a deadline whose window started at `startIso`. */
export function deadlineUrgency(deadlineIso, startIso, now = Date.now()) {
  const deadline = Date.parse(deadlineIso);
  if (Number.isNaN(deadline)) return 'ok';
  const left = deadline - now;
  if (left <= 0) return 'overdue';
  const start = Date.parse(startIso);
  const window = Number.isNaN(start) ? Infinity : deadline - start;
  return left < CLOSE_MS || left < window * CLOSE_FRACTION ? 'close' : 'ok';
}

// Every countdown on the page, updated by one timer so hundreds of tickets cost one tick.
const countdowns = new Set();
let countdownTimer = null;

function renderCountdown(element) {
  const { deadline, start } = element.dataset;
  const left = Date.parse(deadline) - Date.now();
  const urgency = deadlineUrgency(deadline, start);
  element.dataset.urgency = urgency;
  element.className = `countdown urgency-${urgency}`;
  element.textContent = left > 0
    ? t('countdown.left', { duration: formatDuration(left) })
    : t('countdown.overdue', { duration: formatDuration(-left) });
  element.title = formatTime(deadline);
}

function tickCountdowns() {
  for (const element of countdowns) {
    if (!element.isConnected) countdowns.delete(element);
    else renderCountdown(element);
  }
  if (countdowns.size === 0) {
    clearInterval(countdownTimer);
    countdownTimer = null;
  }
}

/** A live countdown to `deadlineIso`; its data-urgency says ok, close or overdue. */
export function countdown(deadlineIso, startIso, testid) {
  const element = h('span', { testid, role: 'timer', dataset: { deadline: deadlineIso, start: startIso ?? '' } });
  renderCountdown(element);
  countdowns.add(element);
  countdownTimer ??= setInterval(tickCountdowns, 1000);
  return element;
}

/** Appends ?t=... (or &t=...) so the browser fetches a fresh copy of a changing image. */
export function cacheBusted(url) {
  return `${url}${url.includes('?') ? '&' : '?'}t=${Date.now()}`;
}

/** Replaces the children of `element` with `children`. */
export function replaceChildren(element, ...children) {
  element.replaceChildren();
  appendChildren(element, children);
}

/** A short message for the polite live region at the bottom of the page. */
export function notify(message, kind = 'info') {
  const region = document.getElementById('notices');
  if (!region) return;
  const notice = h('p', { class: `notice notice-${kind}`, testid: 'notice' }, message);
  region.append(notice);
  setTimeout(() => notice.remove(), kind === 'error' ? 8000 : 4000);
}

/** The text to show for a failed API call. */
export function errorText(error) {
  if (error?.status === 403) return t('error.forbidden');
  if (error?.status === 409) return t('error.conflict', { message: error.message });
  if (error?.status === 429) return t('error.rateLimited', { seconds: error.retryAfter ?? '?' });
  if (error?.status) return t('error.server', { status: error.status, message: error.message });
  return t('error.network');
}

/**
 * Marks `element` aria-busy until `promise` settles (and every other one tracked on it):
 * assistive technology waits for the content, and tests know when a page has loaded.
 */
export function trackBusy(element, promise) {
  const pending = Number(element.dataset.pending ?? 0) + 1;
  element.dataset.pending = String(pending);
  element.setAttribute('aria-busy', 'true');
  const settle = () => {
    const left = Number(element.dataset.pending) - 1;
    element.dataset.pending = String(left);
    if (left === 0) element.removeAttribute('aria-busy');
  };
  promise.then(settle, settle);
  return promise;
}
