// The alarm: a level I or II incident that is still open and that nobody has acknowledged
// flashes a banner on every page and beeps (WebAudio, no sound files) until someone
// acknowledges it. Shown to the users who can acknowledge (operators, admins).

import { api } from './api.js';
import { emitLocal, onEvent } from './events.js';
import { t } from './i18n.js';
import { can } from './session.js';
import { errorText, h, label, levelBadge, notify, replaceChildren } from './dom.js';

const BEEP_EVERY_MS = 1500;
const MAX_LISTED = 3;

const pending = new Map(); // incident id -> IncidentView that needs an acknowledgement
let banner = null;
let unsubscribers = [];
let audioContext = null;
let beepTimer = null;
let muted = false;
let renderedSignature = '';

export function needsAlarm(incident) {
  return (incident.level === 'I' || incident.level === 'II')
    && incident.state === 'open'
    && !incident.acknowledged;
}

function track(incident) {
  if (needsAlarm(incident)) pending.set(incident.id, incident);
  else pending.delete(incident.id);
}

async function refetch() {
  try {
    const { incidents } = await api.incidents({ state: 'open', level: ['I', 'II'], limit: 100 });
    pending.clear();
    incidents.forEach(track);
  } catch {
    // The next event or resync tries again; the pages show their own errors.
  }
  render();
}

/** Starts watching for alarms after login; `bannerElement` is the page's banner slot. */
export function startAlarm(bannerElement) {
  stopAlarm();
  banner = bannerElement;
  if (!can('incidents.ack')) return;
  unsubscribers = [
    onEvent('incident', (incident) => { track(incident); render(); }),
    onEvent('resync', refetch),
  ];
  document.addEventListener('pointerdown', unlockAudio);
  document.addEventListener('keydown', unlockAudio);
  refetch();
}

export function stopAlarm() {
  unsubscribers.forEach((unsubscribe) => unsubscribe());
  unsubscribers = [];
  pending.clear();
  document.removeEventListener('pointerdown', unlockAudio);
  document.removeEventListener('keydown', unlockAudio);
  render();
}

async function acknowledge(incident, button) {
  button.disabled = true;
  try {
    const { incident: updated } = await api.acknowledge(incident.id);
    emitLocal('incident', updated);
  } catch (error) {
    notify(errorText(error), 'error');
    button.disabled = false;
  }
}

/**
 * Renders the banner when what it shows changed (so a focused button is not replaced under
 * the user's finger), or always with `force` (a language change).
 */
export function render(force = false) {
  if (!banner) return;
  updateSound(pending.size > 0);
  const incidents = [...pending.values()]
    .sort((a, b) => a.level.length - b.level.length || String(b.last_seen).localeCompare(String(a.last_seen)));
  const signature = [muted, soundPlayable(), ...incidents.map((incident) => `${incident.id}:${incident.level}`)].join();
  if (!force && signature === renderedSignature) return;
  renderedSignature = signature;
  banner.hidden = incidents.length === 0;
  if (incidents.length === 0) {
    banner.replaceChildren();
    return;
  }
  const soundButton = soundControl();
  replaceChildren(banner,
    h('p', { class: 'alarm-title' }, t('alarm.title', { count: incidents.length })),
    h('ul', { class: 'alarm-list' }, incidents.slice(0, MAX_LISTED).map((incident) =>
      h('li', { dataset: { incidentId: incident.id } },
        levelBadge(incident.level), ' ',
        h('a', { href: `#/incidents/${encodeURIComponent(incident.id)}` },
          t('alarm.item', { category: label('category', incident.category), grid: incident.grid })),
        ' ',
        can('incidents.ack') && h('button', {
          type: 'button', class: 'button button-primary', testid: 'alarm-ack',
          dataset: { incidentId: incident.id },
          onclick: (event) => acknowledge(incident, event.currentTarget),
        }, t('action.ack'))))),
    incidents.length > MAX_LISTED && h('p', {}, t('alarm.more', { count: incidents.length - MAX_LISTED })),
    soundButton);
}

// ---- Sound -----------------------------------------------------------------------------
// Browsers keep audio suspended until the user has interacted with the page. The context is
// only created after a gesture (so no autoplay warning), and while it cannot play the banner
// offers an "enable sound" button.

function soundPlayable() {
  return audioContext?.state === 'running';
}

function soundControl() {
  if (muted) {
    return h('button', { type: 'button', class: 'button', testid: 'sound-toggle', onclick: () => { muted = false; unlockAudio(); render(); } },
      t('alarm.unmute'));
  }
  if (!soundPlayable()) {
    return h('button', { type: 'button', class: 'button', testid: 'sound-toggle', onclick: () => unlockAudio() },
      t('alarm.enableSound'));
  }
  return h('button', { type: 'button', class: 'button', testid: 'sound-toggle', onclick: () => { muted = true; render(); } },
    t('alarm.mute'));
}

function unlockAudio() {
  if (pending.size === 0 || muted) return;
  const hadGesture = navigator.userActivation?.hasBeenActive ?? true;
  if (!hadGesture) return;
  const AudioContextClass = window.AudioContext ?? window.webkitAudioContext;
  if (!AudioContextClass) return;
  if (!audioContext) {
    audioContext = new AudioContextClass();
    audioContext.addEventListener('statechange', () => render());
  }
  if (audioContext.state === 'suspended') audioContext.resume().catch(() => {});
}

function beep() {
  if (!soundPlayable() || muted) return;
  // Two short high tones, like a pager: loud enough to notice, short enough to bear.
  const now = audioContext.currentTime;
  for (const offset of [0, 0.25]) {
    const oscillator = audioContext.createOscillator();
    const gain = audioContext.createGain();
    oscillator.type = 'square';
    oscillator.frequency.value = 880;
    gain.gain.setValueAtTime(0.0001, now + offset);
    gain.gain.exponentialRampToValueAtTime(0.2, now + offset + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, now + offset + 0.18);
    oscillator.connect(gain).connect(audioContext.destination);
    oscillator.start(now + offset);
    oscillator.stop(now + offset + 0.2);
  }
}

function updateSound(active) {
  if (active && !muted) {
    unlockAudio();
    if (!beepTimer) {
      beep();
      beepTimer = setInterval(beep, BEEP_EVERY_MS);
    }
  } else if (beepTimer) {
    clearInterval(beepTimer);
    beepTimer = null;
  }
}
