// Patrol rounds (视频轮巡, issue 26): per patrol its latest rounds, each camera's last look
// with that round's snapshot, and the cameras the latest round did not check, by grid cell.
// Fetched again when a round is recorded (SSE `patrol`), and every 30 s in case the stream
// is down. Every id is shown as text (never as markup).

import { api } from '../api.js';
import { errorText, formatDuration, formatNumber, h, label, replaceChildren, timeElement, trackBusy } from '../dom.js';
import { onEvent } from '../events.js';
import { t } from '../i18n.js';

const POLL_MS = 30_000;

/** A look's status in words and colour. */
export function lookBadge(status) {
  const known = ['checked', 'offline', 'failed'].includes(status);
  return h('span', { class: `badge look-${known ? status : 'none'}`, testid: 'look-status', dataset: { status: status ?? '' } },
    known ? label('lookStatus', status) : t('patrol.notLooked'));
}

function roundsTable(patrol) {
  if (patrol.rounds.length === 0) return h('p', { class: 'muted', testid: 'patrol-no-rounds' }, t('patrol.noRounds'));
  const headings = ['round', 'started', 'length', 'checked', 'offline', 'failed'];
  return h('div', { class: 'table-scroll' },
    h('table', { class: 'table', testid: 'patrol-rounds' },
      h('caption', { class: 'visually-hidden' }, t('patrol.roundsOf', { patrol: patrol.name })),
      h('thead', {}, h('tr', {}, headings.map((key) => h('th', { scope: 'col' }, t(`patrol.column.${key}`))))),
      h('tbody', {}, patrol.rounds.map((round) => h('tr', { testid: 'patrol-round', dataset: { round: String(round.round) } },
        h('td', { class: 'number' }, String(round.round)),
        h('td', {}, timeElement(round.started)),
        h('td', {}, formatDuration(round.seconds * 1000)),
        h('td', { class: 'number' }, formatNumber(round.checked, 0)),
        h('td', { class: 'number' }, formatNumber(round.offline, 0)),
        h('td', { class: 'number' }, formatNumber(round.failed, 0)))))));
}

function offlineByGrid(patrol) {
  const latest = patrol.rounds[0];
  if (!latest) return null;
  return [
    h('h3', {}, t('patrol.offlineIn', { round: latest.round })),
    patrol.offline.length === 0
      ? h('p', { class: 'muted', testid: 'patrol-all-checked' }, t('patrol.allChecked'))
      : h('ul', { class: 'patrol-offline', testid: 'patrol-offline' }, patrol.offline.map((cell) =>
        h('li', { testid: 'patrol-offline-grid', dataset: { grid: cell.grid } },
          h('strong', {}, `${t('common.grid')} ${cell.grid}`), ': ',
          cell.cameras.map((camera, index) => [
            index > 0 ? ', ' : '',
            h('span', { testid: 'patrol-offline-camera', dataset: { camera: camera.id } }, camera.id),
            ' ', lookBadge(camera.status),
          ])))),
  ];
}

function sinceText(camera) {
  if (camera.rounds_since_checked == null) return t('patrol.neverChecked');
  if (camera.rounds_since_checked === 0) return t('patrol.checkedLatest');
  return t('patrol.roundsSince', { rounds: camera.rounds_since_checked });
}

function cameraCard(camera) {
  const { last } = camera;
  const snapshot = last?.snapshot_url
    ? h('img', {
      src: last.snapshot_url, class: 'patrol-snapshot', testid: 'patrol-snapshot', loading: 'lazy',
      width: '192', height: '108', alt: t('patrol.snapshotOf', { camera: camera.id, round: last.round }),
    })
    : h('div', { class: 'patrol-snapshot patrol-no-snapshot muted' }, t('patrol.noSnapshot'));
  return h('li', { class: 'patrol-camera', testid: 'patrol-camera', dataset: { camera: camera.id, status: last?.status ?? '' } },
    snapshot,
    h('div', { class: 'patrol-camera-text' },
      h('strong', {}, camera.id), ' ', lookBadge(last?.status),
      h('br'),
      h('span', { class: 'muted' }, `${t('common.grid')} ${camera.grid ?? '–'}`),
      last ? [' · ', t('patrol.round', { round: last.round }), ' · ', timeElement(last.at)] : null,
      h('br'),
      h('span', { testid: 'patrol-since', dataset: { rounds: camera.rounds_since_checked ?? '' } }, sinceText(camera))));
}

function patrolSection(patrol) {
  const headingId = `patrol-${patrol.name.replace(/[^A-Za-z0-9_-]/g, '_')}`;
  return h('section', { class: 'panel patrol', testid: 'patrol', dataset: { patrol: patrol.name }, 'aria-labelledby': headingId },
    h('h2', { id: headingId }, patrol.name),
    h('p', { class: 'muted' }, t('patrol.config', {
      every: formatNumber(patrol.every_s, 1), dwell: formatNumber(patrol.dwell_s, 1),
      concurrent: patrol.max_concurrent, cameras: patrol.cameras.length,
    })),
    h('h3', {}, t('patrol.rounds')),
    roundsTable(patrol),
    offlineByGrid(patrol),
    h('h3', {}, t('patrol.lastLooks')),
    patrol.cameras.length === 0
      ? h('p', { class: 'muted' }, t('patrol.noCameras'))
      : h('ul', { class: 'patrol-cameras' }, patrol.cameras.map(cameraCard)));
}

export function mount(container) {
  const controller = new AbortController();
  const body = h('div', { class: 'patrols', testid: 'patrols' }, h('p', { class: 'muted' }, t('common.loading')));
  container.append(h('h1', { tabindex: '-1', class: 'page-title' }, t('patrol.title')), body);

  async function load() {
    try {
      const { patrols } = await api.patrols(controller.signal);
      replaceChildren(body, patrols.length === 0
        ? h('p', { class: 'muted', testid: 'patrol-none' }, t('patrol.none'))
        : patrols.map(patrolSection));
    } catch (error) {
      if (error.name !== 'AbortError') replaceChildren(body, h('p', { class: 'form-error' }, errorText(error)));
    }
  }

  // Rounds of several patrols may end together: one fetch for them.
  let refetchTimer = null;
  function soon() {
    clearTimeout(refetchTimer);
    refetchTimer = setTimeout(load, 300);
  }
  const poll = setInterval(load, POLL_MS);
  const unsubscribers = [onEvent('patrol', soon), onEvent('resync', soon)];
  trackBusy(container, load());

  return () => {
    controller.abort();
    clearTimeout(refetchTimer);
    clearInterval(poll);
    unsubscribers.forEach((unsubscribe) => unsubscribe());
  };
}
