// Sources: the health of every camera, sensor and video platform (GB/T 28181), for engineers and operators. Engineers
// (thresholds.write) tune a camera's per-class detection thresholds here; each change is
// audited by the server. Before saving, Preview replays the last recorded day with the
// camera's current and proposed thresholds and says how many incidents would change.

import { api } from '../api.js';
import { errorText, formatNumber, h, label, notify, replaceChildren, timeElement, trackBusy } from '../dom.js';
import { onEvent } from '../events.js';
import { t } from '../i18n.js';
import { can } from '../session.js';

// The stream tells state changes; counters and readings move all the time and are not
// pushed, so the page asks for them again this often while it is visible.
const REFRESH_MS = 10_000;

const CAMERA_COLUMNS = ['id', 'grid', 'owner', 'state', 'fps', 'decoded', 'dropped', 'skipped', 'analysed', 'lastFrame', 'reason', 'thresholds'];
const SENSOR_COLUMNS = ['id', 'grid', 'owner', 'quantity', 'state', 'lastReading'];
const PLATFORM_COLUMNS = ['id', 'listen', 'owner', 'state', 'lowerOnline', 'channels', 'reason'];

// Thresholds are f32 on the server: 0.3 arrives as 0.30000001192092896.
const tidy = (value) => String(Math.round(Number(value) * 1000) / 1000);

function headerRow(columns, prefix) {
  return h('thead', {}, h('tr', {}, columns.map((column) => h('th', { scope: 'col' }, t(`${prefix}.${column}`)))));
}

export function mount(container) {
  const controller = new AbortController();
  const cameras = new Map();
  const sensors = new Map();
  const cameraBody = h('tbody', { testid: 'camera-rows' });
  const sensorBody = h('tbody', { testid: 'sensor-rows' });
  const cameraStatus = h('p', { class: 'muted' }, t('common.loading'));
  // A cluster's console only: the live members of each role.
  const clusterLine = h('p', { class: 'muted', testid: 'cluster-members', hidden: true });
  const sensorStatus = h('p', { class: 'muted' }, t('common.loading'));
  const platformBody = h('tbody', { testid: 'platform-rows' });
  const platformStatus = h('p', { class: 'muted' }, t('common.loading'));

  container.append(
    h('h1', { tabindex: '-1', class: 'page-title' }, t('sources.title')),
    h('section', { class: 'panel', 'aria-labelledby': 'camera-heading' },
      h('h2', { id: 'camera-heading' }, t('sources.cameras')), clusterLine, cameraStatus,
      h('div', { class: 'table-scroll' }, h('table', { class: 'table sources' },
        h('caption', { class: 'visually-hidden' }, t('sources.cameras')), headerRow(CAMERA_COLUMNS, 'sources.camera'), cameraBody))),
    h('section', { class: 'panel', 'aria-labelledby': 'sensor-heading' },
      h('h2', { id: 'sensor-heading' }, t('sources.sensors')), sensorStatus,
      h('div', { class: 'table-scroll' }, h('table', { class: 'table sources' },
        h('caption', { class: 'visually-hidden' }, t('sources.sensors')), headerRow(SENSOR_COLUMNS, 'sources.sensor'), sensorBody))),
    h('section', { class: 'panel', 'aria-labelledby': 'platform-heading' },
      h('h2', { id: 'platform-heading' }, t('sources.platforms')), platformStatus,
      h('div', { class: 'table-scroll' }, h('table', { class: 'table sources' },
        h('caption', { class: 'visually-hidden' }, t('sources.platforms')), headerRow(PLATFORM_COLUMNS, 'sources.platform'), platformBody))));

  function thresholdsCell(camera) {
    const entries = Object.entries(camera.thresholds ?? {}).sort(([a], [b]) => a.localeCompare(b));
    if (entries.length === 0) return h('td', {}, '–');
    if (!can('thresholds.write')) {
      return h('td', {}, entries.map(([name, value]) => `${label('class', name)} ${formatNumber(value)}`).join(', '));
    }
    const inputs = entries.map(([name, value]) => {
      const inputId = `threshold-${camera.id}-${name}`;
      return h('span', { class: 'threshold' },
        h('label', { for: inputId }, label('class', name)),
        h('input', {
          id: inputId, type: 'number', min: tidy(camera.threshold_floor ?? 0), max: 1, step: 0.01, value: tidy(value), required: true,
          testid: 'threshold-input', dataset: { class: name, original: tidy(value) }, inputmode: 'decimal',
        }));
    });
    const save = h('button', { type: 'submit', class: 'button', testid: 'threshold-save', 'aria-label': t('sources.saveThresholdsOf', { camera: camera.id }) }, t('action.save'));
    // What the change would have done to the last recorded day's incidents, before saving.
    const result = h('p', { class: 'muted threshold-preview', role: 'status', 'aria-live': 'polite', testid: 'threshold-preview-result', hidden: true });
    const preview = h('button', {
      type: 'button', class: 'button', testid: 'threshold-preview',
      'aria-label': t('sources.previewThresholdsOf', { camera: camera.id }),
      onclick: async () => {
        const changed = changes();
        if (Object.keys(changed).length === 0) {
          result.hidden = false;
          result.textContent = t('sources.previewNothing');
          return;
        }
        preview.disabled = true;
        result.hidden = false;
        result.textContent = t('sources.previewRunning');
        try {
          const answer = await api.thresholdsWhatIf(camera.id, changed);
          result.textContent = t('sources.previewResult', {
            total: formatNumber(answer.added + answer.dropped + answer.changed, 0),
            incidents: formatNumber(answer.incidents, 0),
            added: formatNumber(answer.added, 0),
            dropped: formatNumber(answer.dropped, 0),
            changed: formatNumber(answer.changed, 0),
          });
          result.dataset.added = String(answer.added);
          result.dataset.dropped = String(answer.dropped);
          result.dataset.changed = String(answer.changed);
          result.dataset.incidents = String(answer.incidents);
        } catch (error) {
          result.textContent = errorText(error);
        } finally {
          preview.disabled = false;
        }
      },
    }, t('sources.preview'));
    function changes() {
      const changed = {};
      for (const input of form.querySelectorAll('input')) {
        if (input.value !== input.dataset.original) changed[input.dataset.class] = Number(input.value);
      }
      return changed;
    }
    const form = h('form', {
      class: 'threshold-form', testid: 'threshold-form', dataset: { cameraId: camera.id },
      // A preview is of the values it was asked for: an edit makes it stale.
      oninput: () => { result.hidden = true; result.textContent = ''; },
      onsubmit: async (event) => {
        event.preventDefault();
        const changed = changes();
        if (Object.keys(changed).length === 0) return;
        save.disabled = true;
        try {
          const { thresholds } = await api.setThresholds(camera.id, changed);
          cameras.set(camera.id, { ...cameras.get(camera.id), thresholds });
          notify(t('sources.thresholdsSaved', { camera: camera.id }));
          renderCamera(cameras.get(camera.id), true);
        } catch (error) {
          notify(errorText(error), 'error');
          save.disabled = false;
        }
      },
    }, inputs, save, preview, result);
    return h('td', {}, form);
  }

  function cameraRow(camera) {
    return h('tr', { testid: 'camera-row', dataset: { cameraId: camera.id, state: camera.state } },
      h('th', { scope: 'row' }, camera.id),
      h('td', {}, camera.grid ?? '–'),
      h('td', {}, label('owner', camera.owner)),
      h('td', {}, h('span', { class: `badge camera-state state-${camera.state}` }, label('cameraState', camera.state)),
        // A cluster's console only: which edge runs it (its lease).
        camera.node !== undefined && h('span', { class: 'muted', testid: 'camera-node' }, ' ',
          camera.node ? t('sources.runsOn', { node: camera.node }) : t('sources.noNode'))),
      h('td', { class: 'number' }, camera.fps == null ? '–' : formatNumber(camera.fps, 1)),
      h('td', { class: 'number' }, formatNumber(camera.frames_decoded, 0)),
      h('td', { class: 'number' }, formatNumber(camera.frames_dropped, 0)),
      h('td', { class: 'number' }, formatNumber(camera.frames_skipped, 0)),
      h('td', { class: 'number' }, formatNumber(camera.frames_analysed, 0)),
      h('td', {}, timeElement(camera.last_frame_at)),
      h('td', { class: 'reason' }, camera.reason ?? '–'),
      thresholdsCell(camera));
  }

  function sensorRow(sensor) {
    const reading = sensor.last_reading;
    return h('tr', { testid: 'sensor-row', dataset: { sensorId: sensor.id, state: sensor.state } },
      h('th', { scope: 'row' }, sensor.id),
      h('td', {}, sensor.grid ?? '–'),
      h('td', {}, label('owner', sensor.owner)),
      h('td', {}, `${label('quantity', sensor.quantity)}${sensor.unit ? ` (${sensor.unit})` : ''}`),
      h('td', {}, h('span', { class: `badge sensor-state state-${sensor.state}` }, label('sensorState', sensor.state))),
      h('td', {}, reading ? [`${formatNumber(reading.value)} ${reading.unit ?? sensor.unit ?? ''} · `, timeElement(reading.at)] : '–'));
  }

  function platformRow(platform) {
    const online = platform.lower_platforms_online ?? [];
    const listed = formatNumber(platform.channels_listed, 0);
    return h('tr', { testid: 'platform-row', dataset: { platformId: platform.id, state: platform.state } },
      h('th', { scope: 'row' }, platform.id),
      h('td', {}, platform.listen),
      h('td', {}, label('owner', platform.owner)),
      h('td', {}, h('span', { class: `badge platform-state state-${platform.state}` }, label('platformState', platform.state))),
      h('td', {}, online.length ? `${online.length}: ${online.join(', ')}` : '0'),
      h('td', { class: 'number' }, `${formatNumber(platform.channels_analysed, 0)} / ${listed}${platform.all_channels ? ` (${t('sources.allChannels')})` : ''}`),
      h('td', { class: 'reason' }, platform.reason ?? '–'));
  }

  function renderPlatforms(list) {
    const sorted = [...list].sort((a, b) => a.id.localeCompare(b.id));
    platformStatus.hidden = sorted.length > 0;
    platformStatus.textContent = t('sources.noPlatforms');
    replaceChildren(platformBody, sorted.map(platformRow));
  }

  // A row being edited is not replaced by a live update: the engineer's input (and a
  // preview of it) would be lost. `force`: the row's own change was saved.
  function renderCamera(camera, force = false) {
    const existing = [...cameraBody.rows].find((row) => row.dataset.cameraId === camera.id);
    const editing = existing && (
      (existing.contains(document.activeElement) && ['INPUT', 'BUTTON'].includes(document.activeElement.tagName))
      || [...existing.querySelectorAll('input[data-original]')].some((input) => input.value !== input.dataset.original));
    if (editing && !force) return;
    if (existing) existing.replaceWith(cameraRow(camera));
    else renderCameras();
  }

  function renderCameras() {
    const sorted = [...cameras.values()].sort((a, b) => a.id.localeCompare(b.id));
    cameraStatus.hidden = sorted.length > 0;
    cameraStatus.textContent = t('sources.noCameras');
    replaceChildren(cameraBody, sorted.map(cameraRow));
  }

  function renderSensor(sensor) {
    const existing = [...sensorBody.rows].find((row) => row.dataset.sensorId === sensor.id);
    if (existing) existing.replaceWith(sensorRow(sensor));
    else renderSensors();
  }

  function renderSensors() {
    const sorted = [...sensors.values()].sort((a, b) => a.id.localeCompare(b.id));
    sensorStatus.hidden = sorted.length > 0;
    sensorStatus.textContent = t('sources.noSensors');
    replaceChildren(sensorBody, sorted.map(sensorRow));
  }

  async function load() {
    const [cameraResult, sensorResult, platformResult] = await Promise.allSettled([
      api.cameras(controller.signal), api.sensors(controller.signal), api.platforms(controller.signal)]);
    if (controller.signal.aborted) return;
    if (cameraResult.status === 'fulfilled') {
      const list = cameraResult.value.cameras;
      const cluster = cameraResult.value.cluster;
      clusterLine.hidden = !cluster;
      if (cluster) {
        clusterLine.textContent = t('sources.cluster', {
          name: cluster.name,
          members: Object.entries(cluster.members ?? {})
            .map(([role, nodes]) => `${role}: ${nodes.length ? nodes.join(', ') : '–'}`).join(' · '),
        });
      }
      const sameRows = list.length === cameras.size && list.every((camera) => cameras.has(camera.id));
      cameras.clear();
      list.forEach((camera) => cameras.set(camera.id, camera));
      // Row by row when the set is unchanged, so a threshold being edited is kept.
      if (sameRows && cameraBody.rows.length === list.length) {
        list.forEach(renderCamera);
        cameraStatus.hidden = list.length > 0;
      } else {
        renderCameras();
      }
    } else {
      cameraStatus.hidden = false;
      cameraStatus.textContent = errorText(cameraResult.reason);
    }
    if (sensorResult.status === 'fulfilled') {
      const list = sensorResult.value.sensors;
      const sameRows = list.length === sensors.size && list.every((sensor) => sensors.has(sensor.id));
      sensors.clear();
      list.forEach((sensor) => sensors.set(sensor.id, sensor));
      if (sameRows && sensorBody.rows.length === list.length) {
        list.forEach(renderSensor);
        sensorStatus.hidden = list.length > 0;
      } else {
        renderSensors();
      }
    } else {
      sensorStatus.hidden = false;
      sensorStatus.textContent = errorText(sensorResult.reason);
    }
    if (platformResult.status === 'fulfilled') {
      renderPlatforms(platformResult.value.platforms);
    } else {
      platformStatus.hidden = false;
      platformStatus.textContent = errorText(platformResult.reason);
    }
  }

  function onSource(update) {
    const { kind, ...fields } = update;
    if (kind === 'camera') {
      const camera = { ...cameras.get(update.id), ...fields };
      cameras.set(update.id, camera);
      renderCamera(camera);
    } else if (kind === 'sensor') {
      sensors.set(update.id, { ...sensors.get(update.id), ...fields });
      renderSensor(sensors.get(update.id));
    }
  }

  const unsubscribers = [onEvent('source', onSource), onEvent('resync', load)];
  trackBusy(container, load());
  const refreshTimer = setInterval(() => { if (!document.hidden) load(); }, REFRESH_MS);
  return () => {
    controller.abort();
    clearInterval(refreshTimer);
    unsubscribers.forEach((unsubscribe) => unsubscribe());
  };
}
