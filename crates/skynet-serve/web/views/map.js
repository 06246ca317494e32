// Grid risk map: the cells of GET /api/v1/grids drawn as inline SVG, filled by level. No
// tiles and no map library: an equirectangular projection scaled by cos(latitude) is exact
// enough at a city's size. Selecting a cell lists its incidents and devices. "Colour by
// patrol" colours the cells instead by GET /api/v1/patrols/grids: not looked at (no patrol
// camera of the cell checked) for more than N rounds, looked at within N, or no patrol camera.

import { api } from '../api.js';
import { errorText, formatNumber, h, label, levelBadge, replaceChildren, s, stateBadge, timeElement, trackBusy } from '../dom.js';
import { onEvent } from '../events.js';
import { t } from '../i18n.js';
import { can } from '../session.js';

const VIEW_WIDTH = 1000;
const VIEW_HEIGHT = 640;
const PADDING = 24;

/** Every ring of a Polygon or MultiPolygon, as [lon, lat] arrays. */
function rings(geometry) {
  if (geometry?.type === 'Polygon') return geometry.coordinates;
  if (geometry?.type === 'MultiPolygon') return geometry.coordinates.flat();
  return [];
}

/** A function from [lon, lat] to SVG [x, y] that fits every feature into the view box. */
function projection(features) {
  const points = features.flatMap((feature) => rings(feature.geometry).flat());
  if (points.length === 0) return () => [0, 0];
  const lons = points.map((point) => point[0]);
  const lats = points.map((point) => point[1]);
  const [minLon, maxLon, minLat, maxLat] = [Math.min(...lons), Math.max(...lons), Math.min(...lats), Math.max(...lats)];
  const shrink = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
  const width = Math.max((maxLon - minLon) * shrink, 1e-9);
  const height = Math.max(maxLat - minLat, 1e-9);
  const scale = Math.min((VIEW_WIDTH - 2 * PADDING) / width, (VIEW_HEIGHT - 2 * PADDING) / height);
  // Centre the drawing in the view box.
  const offsetX = (VIEW_WIDTH - width * scale) / 2;
  const offsetY = (VIEW_HEIGHT - height * scale) / 2;
  return ([lon, lat]) => [offsetX + (lon - minLon) * shrink * scale, offsetY + (maxLat - lat) * scale];
}

function pathData(geometry, project) {
  const polygons = geometry?.type === 'MultiPolygon' ? geometry.coordinates : [geometry?.coordinates ?? []];
  return polygons.flatMap((polygon) => polygon.map((ring) =>
    `M${ring.map((point) => project(point).map((value) => value.toFixed(1)).join(',')).join('L')}Z`)).join(' ');
}

/** Where to put a cell's label: the centre of its outer ring's bounding box. */
function labelPoint(geometry, project) {
  const outer = (geometry?.type === 'MultiPolygon' ? geometry.coordinates[0]?.[0] : geometry?.coordinates?.[0]) ?? [];
  const projected = outer.map(project);
  const xs = projected.map((point) => point[0]);
  const ys = projected.map((point) => point[1]);
  return [(Math.min(...xs) + Math.max(...xs)) / 2, (Math.min(...ys) + Math.max(...ys)) / 2];
}

function cellLabel(properties) {
  return t('map.cellLabel', {
    id: properties.id,
    name: properties.name ?? '',
    level: properties.level ? t(`level.${properties.level}`) : t('level.none'),
    count: properties.open_incidents ?? 0,
  });
}

export function mount(container) {
  const controller = new AbortController();
  const cells = new Map(); // grid id -> {feature, group}
  let selected = null;
  let cameras = new Map();
  let sensors = new Map();
  // Patrol colouring: off, or the cells of GET /patrols/grids and the N of the control.
  let patrolMode = false;
  let patrolCells = new Map(); // grid id -> {rounds_since_checked, ...}
  const patrolRounds = h('input', {
    type: 'number', id: 'patrol-rounds', testid: 'patrol-rounds', min: '0', max: '100', step: '1', value: '3',
    class: 'patrol-rounds', oninput: () => repaintPatrol(),
  });
  const patrolToggle = h('input', {
    type: 'checkbox', id: 'patrol-mode', testid: 'patrol-mode',
    onchange: () => {
      patrolMode = patrolToggle.checked;
      patrolLegend.hidden = !patrolMode;
      levelLegend.hidden = patrolMode;
      if (patrolMode) trackBusy(container, loadPatrol());
      else cells.forEach(paintCell);
    },
  });
  const levelLegend = legend();
  const patrolLegend = h('ul', { class: 'legend', 'aria-label': t('map.patrolLegend'), hidden: true },
    ['stale', 'fresh', 'none'].map((state) => h('li', {}, h('span', { class: `badge patrol-${state}`, dataset: { state } },
      patrolStateText(state)))));

  const svg = s('svg', {
    class: 'grid-map', viewBox: `0 0 ${VIEW_WIDTH} ${VIEW_HEIGHT}`, role: 'group',
    'aria-label': t('map.label'), testid: 'grid-map',
  });
  const status = h('p', { class: 'muted' }, t('common.loading'));
  const panel = h('section', { class: 'panel cell-panel', testid: 'cell-panel', 'aria-live': 'polite', 'aria-labelledby': 'cell-heading' },
    h('h2', { id: 'cell-heading' }, t('map.selectPrompt')));

  container.append(
    h('h1', { tabindex: '-1', class: 'page-title' }, t('map.title')),
    h('div', { class: 'map-layout' },
      h('section', { class: 'panel map-panel', 'aria-labelledby': 'map-heading' },
        h('h2', { id: 'map-heading', class: 'visually-hidden' }, t('map.title')),
        status, svg, levelLegend,
        h('div', { class: 'patrol-control', testid: 'patrol-control' },
          h('label', { for: 'patrol-mode' }, patrolToggle, ' ', t('map.patrolMode')),
          h('label', { for: 'patrol-rounds' }, t('map.patrolRounds'), ' ', patrolRounds)),
        patrolLegend),
      panel));

  /** N of the control: a whole number of rounds, 0 or more. */
  function threshold() {
    const value = Math.floor(Number(patrolRounds.value));
    return Number.isFinite(value) && value >= 0 ? value : 0;
  }

  function patrolStateText(state) {
    const rounds = threshold();
    if (state === 'stale') return t('map.patrolStale', { rounds });
    if (state === 'fresh') return t('map.patrolFresh', { rounds });
    return t('map.patrolNone');
  }

  /** 'stale', 'fresh' or 'none' (no patrol camera the caller sees) for a cell. */
  function patrolState(gridId) {
    const cell = patrolCells.get(gridId);
    if (!cell) return 'none';
    const since = cell.rounds_since_checked;
    return since == null || since > threshold() ? 'stale' : 'fresh';
  }

  function legend() {
    return h('ul', { class: 'legend', 'aria-label': t('map.legend') },
      ['I', 'II', 'III', 'IV', null].map((level) => h('li', {}, levelBadge(level))));
  }

  function paintCell(cell) {
    const { properties } = cell.feature;
    const level = properties.level ?? 'none';
    const patrol = patrolMode ? patrolState(properties.id) : null;
    const fill = patrol ? `patrol-fill-${patrol}` : `level-fill-${level}`;
    cell.group.setAttribute('class', `map-cell ${fill} ${selected === properties.id ? 'is-selected' : ''}`);
    // The visible words first (the id and the sublabel), as the level's label does.
    cell.group.setAttribute('aria-label', patrol
      ? `${properties.id} ${patrolSublabel(properties.id)}: ${patrolStateText(patrol)}; ${cellLabel(properties)}`
      : cellLabel(properties));
    cell.group.dataset.patrol = patrol ?? '';
    redrawLabels(cell);
    cell.group.setAttribute('aria-pressed', String(selected === properties.id));
    cell.group.dataset.level = properties.level ?? '';
  }

  function drawMap(features) {
    const project = projection(features);
    cells.clear();
    svg.replaceChildren();
    for (const feature of features) {
      const properties = { ...feature.properties, id: feature.properties?.id ?? feature.id };
      feature.properties = properties;
      const [x, y] = labelPoint(feature.geometry, project);
      const group = s('g', {
        tabindex: '0', role: 'button', testid: 'map-cell', dataset: { gridId: properties.id },
        onclick: () => select(properties.id),
        onkeydown: (event) => {
          if (event.key === 'Enter' || event.key === ' ') {
            event.preventDefault();
            select(properties.id);
          }
        },
      },
      s('path', { d: pathData(feature.geometry, project), class: 'cell-shape' }),
      // One text, two lines; the space between them keeps the visible words apart, as they
      // are in the accessible name (which starts with the same words).
      s('text', { 'text-anchor': 'middle' },
        s('tspan', { x: x.toFixed(1), y: (y - 6).toFixed(1), class: 'cell-label' }, properties.id),
        ' ',
        s('tspan', { x: x.toFixed(1), y: (y + 16).toFixed(1), class: 'cell-sublabel' },
          properties.level ? t(`level.${properties.level}`) : t('level.none'))));
      const cell = { feature, group };
      cells.set(properties.id, cell);
      paintCell(cell);
      svg.append(group);
    }
  }

  async function loadPatrol() {
    try {
      const { grids } = await api.patrolGrids(controller.signal);
      patrolCells = new Map(grids.map((grid) => [grid.grid, grid]));
    } catch (error) {
      if (error.name !== 'AbortError') status.textContent = errorText(error);
    }
    repaintPatrol();
  }

  function repaintPatrol() {
    for (const item of patrolLegend.querySelectorAll('[data-state]')) item.textContent = patrolStateText(item.dataset.state);
    cells.forEach(paintCell);
  }

  /** A cell's second line in patrol colouring: rounds since one of its cameras was checked. */
  function patrolSublabel(gridId) {
    if (!patrolCells.has(gridId)) return '–';
    const since = patrolCells.get(gridId).rounds_since_checked;
    return since == null ? t('map.patrolNever') : t('map.patrolSince', { rounds: since });
  }

  function redrawLabels(cell) {
    const sublabel = cell.group.querySelector('.cell-sublabel');
    if (!sublabel) return;
    const { level, id } = cell.feature.properties;
    if (patrolMode) {
      sublabel.textContent = patrolSublabel(id);
      return;
    }
    sublabel.textContent = level ? t(`level.${level}`) : t('level.none');
  }

  async function select(gridId) {
    selected = gridId;
    cells.forEach(paintCell);
    await renderPanel();
  }

  async function renderPanel() {
    const cell = cells.get(selected);
    if (!cell) return;
    const { properties } = cell.feature;
    const list = h('ul', { class: 'cell-incidents', testid: 'cell-incidents' }, h('li', { class: 'muted' }, t('common.loading')));
    replaceChildren(panel,
      h('h2', { id: 'cell-heading' }, `${properties.id} · ${properties.name ?? ''}`),
      h('dl', { class: 'facts' },
        fact(t('map.level'), levelBadge(properties.level)),
        fact(t('map.score'), formatNumber(properties.score)),
        fact(t('map.kind'), label('gridKind', properties.kind)),
        fact(t('map.street'), properties.street ?? '–'),
        fact(t('map.department'), label('department', properties.department)),
        fact(t('map.openIncidents'), String(properties.open_incidents ?? 0))),
      h('h3', {}, t('map.incidents')), list,
      h('h3', {}, t('map.cameras')), deviceList(properties.cameras ?? [], cameras, (camera) => label('cameraState', camera.state)),
      h('h3', {}, t('map.sensors')), deviceList(properties.sensors ?? [], sensors, (sensor) => [
        label('sensorState', sensor.state),
        sensor.last_reading && `${formatNumber(sensor.last_reading.value)} ${sensor.last_reading.unit ?? ''}`,
      ].filter(Boolean).join(' · ')));

    try {
      const { incidents } = await api.incidents({ grid: properties.id, limit: 50 }, controller.signal);
      if (selected !== properties.id) return;
      replaceChildren(list, incidents.length === 0
        ? h('li', { class: 'muted' }, t('map.noIncidents'))
        : incidents.map((incident) => h('li', { testid: 'cell-incident', dataset: { incidentId: incident.id } },
          levelBadge(incident.level), ' ', stateBadge(incident.state), ' ',
          h('a', { href: `#/incidents/${encodeURIComponent(incident.id)}` }, label('category', incident.category)),
          ' · ', timeElement(incident.last_seen))));
    } catch (error) {
      if (error.name !== 'AbortError') replaceChildren(list, h('li', { class: 'form-error' }, errorText(error)));
    }
  }

  function fact(term, value) {
    return [h('dt', {}, term), h('dd', {}, value)];
  }

  function deviceList(ids, known, describe) {
    if (ids.length === 0) return h('p', { class: 'muted' }, t('map.none'));
    return h('ul', { class: 'devices' }, ids.map((id) => {
      const device = known.get(id);
      return h('li', {}, h('strong', {}, id), device ? ` · ${describe(device)}` : '');
    }));
  }

  async function loadGrids() {
    try {
      const collection = await api.grids(controller.signal);
      const features = collection?.features ?? [];
      status.hidden = features.length > 0;
      status.textContent = t('map.noCells');
      const sameCells = features.length === cells.size
        && features.every((feature) => cells.has(feature.properties?.id ?? feature.id));
      if (sameCells) {
        // Update in place: redrawing would take the keyboard focus off the user's cell.
        for (const feature of features) {
          const cell = cells.get(feature.properties?.id ?? feature.id);
          Object.assign(cell.feature.properties, feature.properties);
          paintCell(cell);
          redrawLabels(cell);
        }
      } else {
        drawMap(features);
      }
      if (selected) renderPanel();
    } catch (error) {
      if (error.name !== 'AbortError') status.textContent = errorText(error);
    }
  }

  async function loadDevices() {
    if (!can('sources.read')) return;
    try {
      const [cameraList, sensorList] = await Promise.all([api.cameras(controller.signal), api.sensors(controller.signal)]);
      cameras = new Map(cameraList.cameras.map((camera) => [camera.id, camera]));
      sensors = new Map(sensorList.sensors.map((sensor) => [sensor.id, sensor]));
      if (selected) renderPanel();
    } catch {
      // The panel shows the devices' ids without their state.
    }
  }

  function onGrid(update) {
    const cell = cells.get(update.grid ?? update.id);
    if (!cell) return;
    Object.assign(cell.feature.properties, {
      level: update.level ?? null,
      score: update.score ?? cell.feature.properties.score,
      colour: update.level_colour ?? update.colour ?? null,
    });
    if (Array.isArray(update.incidents)) cell.feature.properties.open_incidents = update.incidents.length;
    paintCell(cell);
    redrawLabels(cell);
    if (selected === cell.feature.properties.id) renderPanel();
  }

  // A cell's count of open incidents changes with its incidents: refetch, at most once a second.
  let refetchTimer = null;
  function onIncident(incident) {
    if (!cells.has(incident.grid)) return;
    clearTimeout(refetchTimer);
    refetchTimer = setTimeout(loadGrids, 1000);
    if (selected === incident.grid) renderPanel();
  }

  function onSource(update) {
    const map = update.kind === 'camera' ? cameras : sensors;
    map.set(update.id, { ...map.get(update.id), ...update });
  }

  const unsubscribers = [
    onEvent('grid', onGrid),
    onEvent('incident', onIncident),
    onEvent('source', onSource),
    onEvent('patrol', () => { if (patrolMode) loadPatrol(); }),
    onEvent('resync', () => { loadGrids(); loadDevices(); if (patrolMode) loadPatrol(); }),
  ];
  trackBusy(container, loadGrids());
  trackBusy(container, loadDevices());

  return () => {
    controller.abort();
    clearTimeout(refetchTimer);
    unsubscribers.forEach((unsubscribe) => unsubscribe());
  };
}
