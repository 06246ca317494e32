// Live view: the alert strip of the newest active incidents above the camera wall. Both
// update in place from the shared event stream. Where the node has live view on (`live` in
// the cameras list), a tile plays the camera's live video (fragmented MP4 from
// /api/v1/cameras/{id}/live.mp4, which Chromium plays progressively from a plain <video src>)
// when clicked or, focused, on Enter or Space; again, and it shows the still frame. While a
// tile plays, the camera's boxes from the stream's `detections` events (one per analysed
// frame, corners as fractions of the frame) are drawn over the video; none older than
// BOXES_MAX_AGE_MS stays drawn.

import { api } from '../api.js';
import { cacheBusted, errorText, FINAL_STATES, h, label, levelBadge, replaceChildren, stateBadge, timeElement, trackBusy } from '../dom.js';
import { onEvent } from '../events.js';
import { t } from '../i18n.js';
import { can } from '../session.js';
import { ackButton, newer } from './shared.js';

const STRIP_SIZE = 20;
const ACTIVE_STATES = ['open', 'acknowledged', 'dispatched', 'resolved'];
const FRAME_REFRESH_MS = 2000;
// At most this many tiles play live video at once (each is one viewer on the node, counted
// against [api] live.max_viewers): starting one more returns the longest playing to its
// still frame.
export const MAX_LIVE_TILES = 4;
// A video wall (`?kiosk=1&live=N`) plays its first N live cameras at once on its own, N at
// most this (the node's [api] live caps still apply).
export const MAX_KIOSK_LIVE_TILES = 16;
// Boxes not renewed for this long are cleared (the camera stopped or nothing is analysed).
const BOXES_MAX_AGE_MS = 2000;
const BOXES_SWEEP_MS = 500;

export function mount(container, { kiosk = false } = {}) {
  const controller = new AbortController();
  const kioskLive = kiosk
    ? Math.min(MAX_KIOSK_LIVE_TILES, Math.max(0, Number.parseInt(new URLSearchParams(location.search).get('live') ?? '0', 10) || 0))
    : 0;
  const liveLimit = Math.max(MAX_LIVE_TILES, kioskLive);
  const incidents = new Map();
  const cameras = new Map();
  const tiles = new Map(); // camera id -> {element, screen, image, video, boxes, liveBadge, placeholder, badge, details, loading, failedFor, drawnAt}
  const playing = []; // camera ids whose tiles play live video, oldest first
  const announced = new Set(); // incident ids seen since mount: a new one is highlighted

  const strip = h('ul', { class: 'alert-strip', testid: 'alert-strip', 'aria-live': 'polite' });
  const stripStatus = h('p', { class: 'muted', testid: 'alert-strip-status' }, t('common.loading'));
  const wall = h('div', { class: 'camera-wall', testid: 'camera-wall' });
  const wallStatus = h('p', { class: 'muted' }, t('common.loading'));

  container.append(
    h('h1', { tabindex: '-1', class: 'page-title' }, t('live.title')),
    h('section', { class: 'panel', 'aria-labelledby': 'alerts-heading' },
      h('h2', { id: 'alerts-heading' }, t('live.alerts')), stripStatus, strip),
    can('sources.read') && h('section', { class: 'panel', 'aria-labelledby': 'cameras-heading' },
      h('h2', { id: 'cameras-heading' }, t('live.cameras')), wallStatus, wall));

  // ---- Alert strip ----------------------------------------------------------------------

  function renderStrip() {
    const newest = [...incidents.values()]
      .sort((a, b) => String(b.last_seen).localeCompare(String(a.last_seen)))
      .slice(0, STRIP_SIZE);
    stripStatus.hidden = newest.length > 0;
    stripStatus.textContent = t('live.noAlerts');
    replaceChildren(strip, newest.map((incident) => {
      const item = h('li', {
        class: `alert-item level-border-${incident.level ?? 'none'} ${announced.has(incident.id) ? '' : 'is-new'}`,
        testid: 'alert-item', dataset: { incidentId: incident.id, level: incident.level ?? '', state: incident.state },
      },
      h('div', { class: 'alert-head' }, levelBadge(incident.level), stateBadge(incident.state)),
      h('a', { class: 'alert-title', href: `#/incidents/${encodeURIComponent(incident.id)}` }, label('category', incident.category)),
      h('p', { class: 'alert-meta' }, t('common.grid'), ' ', h('strong', {}, incident.grid),
        incident.district ? ` · ${t('common.district')} ${incident.district}` : '', ' · ', timeElement(incident.last_seen)),
      incident.acknowledged && h('p', { class: 'alert-meta' }, t('incident.acknowledgedBy', { name: incident.acknowledged.by })),
      ackButton(incident));
      return item;
    }));
    newest.forEach((incident) => announced.add(incident.id));
  }

  function onIncident(incident) {
    if (FINAL_STATES.has(incident.state)) incidents.delete(incident.id);
    else incidents.set(incident.id, newer(incidents.get(incident.id), incident));
    renderStrip();
  }

  async function loadIncidents() {
    try {
      const { incidents: list } = await api.incidents({ state: ACTIVE_STATES, limit: STRIP_SIZE }, controller.signal);
      incidents.clear();
      list.forEach((incident) => { incidents.set(incident.id, incident); announced.add(incident.id); });
      renderStrip();
    } catch (error) {
      if (error.name !== 'AbortError') stripStatus.textContent = errorText(error);
    }
  }

  // ---- Camera wall ----------------------------------------------------------------------

  // Which frame the server holds: a failed load is retried only once this changes.
  const frameStamp = (camera) => camera.frame_at ?? camera.last_frame_at ?? null;

  function tileFor(camera) {
    let tile = tiles.get(camera.id);
    if (tile) return tile;
    const image = h('img', { class: 'camera-frame', alt: '', hidden: true, width: 416, height: 312, decoding: 'async' });
    const video = h('video', { class: 'camera-frame', hidden: true, muted: true, playsinline: true, width: 416, height: 312, testid: 'camera-live' });
    video.muted = true;
    const boxes = h('canvas', { class: 'camera-boxes', hidden: true, 'aria-hidden': 'true', testid: 'camera-boxes' });
    const placeholder = h('p', { class: 'camera-placeholder' });
    const badge = h('span', { class: 'badge', testid: 'camera-state' });
    const liveBadge = h('span', { class: 'badge live-badge', hidden: true }, t('live.liveBadge'));
    const details = h('span', { class: 'camera-details' });
    const screen = h('div', {
      class: 'camera-screen',
      onclick: () => toggleLive(camera.id),
      onkeydown: (event) => {
        if (event.key !== 'Enter' && event.key !== ' ') return;
        event.preventDefault();
        toggleLive(camera.id);
      },
    }, image, video, boxes, placeholder);
    video.addEventListener('error', () => {
      // Refused (too many viewers, a masked camera, not streaming) or ended: the still again.
      if (!playing.includes(camera.id)) return;
      stopLive(camera.id);
      tile.placeholder.hidden = false;
      tile.placeholder.textContent = t('live.liveFailed');
    });
    const element = h('figure', { class: 'camera-tile', testid: 'camera-tile', dataset: { cameraId: camera.id } },
      screen,
      h('figcaption', {}, h('strong', {}, camera.id), ' ', badge, ' ', liveBadge, h('br'), details));
    tile = { element, screen, image, video, boxes, liveBadge, placeholder, badge, details, loading: false, failedFor: null, drawnAt: null };
    tiles.set(camera.id, tile);
    return tile;
  }

  function renderTile(camera) {
    const tile = tileFor(camera);
    tile.element.dataset.state = camera.state;
    tile.badge.className = `badge camera-state state-${camera.state}`;
    tile.badge.textContent = label('cameraState', camera.state);
    tile.badge.title = camera.reason ?? '';
    tile.details.textContent = [
      `${t('common.grid')} ${camera.grid}`,
      label('owner', camera.owner),
      camera.fps != null ? t('live.fps', { fps: Number(camera.fps).toFixed(1) }) : null,
      camera.reason,
    ].filter(Boolean).join(' · ');
    tile.image.alt = t('live.frameAlt', { camera: camera.id, grid: camera.grid });
    // Live view on this node: the screen is a toggle between the still frame and live video.
    if (camera.live) {
      tile.screen.setAttribute('role', 'button');
      tile.screen.tabIndex = 0;
      tile.screen.title = t('live.playLive');
      tile.screen.setAttribute('aria-label', t('live.playLiveLabel', { camera: camera.id }));
      tile.screen.setAttribute('aria-pressed', String(playing.includes(camera.id)));
    }
    if (playing.includes(camera.id)) return;
    const hasFrame = Boolean(camera.frame_url) && tile.failedFor !== frameStamp(camera);
    tile.placeholder.hidden = hasFrame && !tile.image.hidden;
    tile.placeholder.textContent = hasFrame ? t('common.loading') : t('live.noFrame');
  }

  function renderWall() {
    const sorted = [...cameras.values()].sort((a, b) => a.id.localeCompare(b.id));
    sorted.forEach(renderTile);
    wallStatus.hidden = sorted.length > 0;
    wallStatus.textContent = t('live.noCameras');
    replaceChildren(wall, sorted.map((camera) => tiles.get(camera.id).element));
  }

  // Loads the next frame off-screen and swaps it in once decoded, so tiles never flash
  // empty, and never asks for a camera's frame while the previous one is still loading.
  function refreshFrame(camera) {
    const tile = tiles.get(camera.id);
    if (!tile || tile.loading || !camera.frame_url || tile.failedFor === frameStamp(camera)) return;
    tile.loading = true;
    const next = new Image();
    next.onload = () => {
      tile.loading = false;
      tile.image.src = next.src;
      if (playing.includes(camera.id)) return;
      tile.image.hidden = false;
      tile.placeholder.hidden = true;
    };
    next.onerror = () => {
      // No frame (yet): wait for the camera's next reported frame before asking again.
      tile.loading = false;
      tile.failedFor = frameStamp(camera);
      renderTile(camera);
    };
    next.src = cacheBusted(camera.frame_url);
  }

  function refreshFrames() {
    if (document.hidden) return;
    for (const camera of cameras.values()) if (!playing.includes(camera.id)) refreshFrame(camera);
  }

  // ---- Live video on a tile ----------------------------------------------------------------

  function startLive(id) {
    const camera = cameras.get(id);
    const tile = tiles.get(id);
    if (!camera?.live || !tile || playing.includes(id)) return;
    while (playing.length >= liveLimit) stopLive(playing[0]);
    playing.push(id);
    tile.video.src = `/api/v1/cameras/${encodeURIComponent(id)}/live.mp4`;
    tile.video.hidden = false;
    clearBoxes(tile);
    tile.boxes.hidden = false;
    tile.image.hidden = true;
    tile.placeholder.hidden = true;
    tile.liveBadge.hidden = false;
    tile.element.classList.add('is-live');
    tile.screen.setAttribute('aria-pressed', 'true');
    tile.video.play().catch(() => {});
  }

  function stopLive(id) {
    const index = playing.indexOf(id);
    if (index >= 0) playing.splice(index, 1);
    const tile = tiles.get(id);
    if (!tile) return;
    // Dropping the source closes the stream (the node counts one viewer fewer).
    tile.video.pause();
    tile.video.removeAttribute('src');
    tile.video.load();
    tile.video.hidden = true;
    clearBoxes(tile);
    tile.boxes.hidden = true;
    tile.liveBadge.hidden = true;
    tile.element.classList.remove('is-live');
    tile.screen.setAttribute('aria-pressed', 'false');
    tile.image.hidden = !tile.image.src;
    const camera = cameras.get(id);
    if (camera) {
      renderTile(camera);
      refreshFrame(camera);
    }
  }

  // The video's picture within its element (object-fit: contain), in CSS pixels.
  function pictureRect(video) {
    const width = video.clientWidth;
    const height = video.clientHeight;
    if (!video.videoWidth || !video.videoHeight) return { x: 0, y: 0, width, height };
    const scale = Math.min(width / video.videoWidth, height / video.videoHeight);
    const w = video.videoWidth * scale;
    const h2 = video.videoHeight * scale;
    return { x: (width - w) / 2, y: (height - h2) / 2, width: w, height: h2 };
  }

  function clearBoxes(tile) {
    tile.drawnAt = null;
    tile.boxes.getContext('2d')?.clearRect(0, 0, tile.boxes.width, tile.boxes.height);
    tile.boxes.dataset.count = '0';
  }

  function drawBoxes(tile, boxes) {
    const canvas = tile.boxes;
    const ratio = window.devicePixelRatio || 1;
    const width = tile.video.clientWidth;
    const height = tile.video.clientHeight;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    const context = canvas.getContext('2d');
    if (!context) return;
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.clearRect(0, 0, width, height);
    const picture = pictureRect(tile.video);
    context.lineWidth = 2;
    context.font = '11px sans-serif';
    context.textBaseline = 'top';
    for (const box of boxes) {
      const x = picture.x + box.x1 * picture.width;
      const y = picture.y + box.y1 * picture.height;
      const w = (box.x2 - box.x1) * picture.width;
      const h2 = (box.y2 - box.y1) * picture.height;
      context.strokeStyle = '#f7c948';
      context.strokeRect(x, y, w, h2);
      const text = `${box.label} ${Number(box.score).toFixed(2)}`;
      const textWidth = context.measureText(text).width + 4;
      const top = y >= 14 ? y - 14 : y;
      context.fillStyle = 'rgba(16, 24, 32, 0.75)';
      context.fillRect(x, top, textWidth, 14);
      context.fillStyle = '#fff';
      context.fillText(text, x + 2, top + 1);
    }
    tile.drawnAt = Date.now();
    canvas.dataset.count = String(boxes.length);
  }

  function onDetections(message) {
    if (!message?.camera || !playing.includes(message.camera)) return;
    const tile = tiles.get(message.camera);
    if (!tile) return;
    drawBoxes(tile, Array.isArray(message.boxes) ? message.boxes : []);
  }

  function sweepBoxes() {
    const now = Date.now();
    for (const id of playing) {
      const tile = tiles.get(id);
      if (tile?.drawnAt != null && now - tile.drawnAt > BOXES_MAX_AGE_MS) clearBoxes(tile);
    }
  }

  function toggleLive(id) {
    if (playing.includes(id)) stopLive(id);
    else startLive(id);
  }

  async function loadCameras() {
    try {
      const { cameras: list } = await api.cameras(controller.signal);
      cameras.clear();
      list.forEach((camera) => cameras.set(camera.id, camera));
      renderWall();
      refreshFrames();
      // A video wall starts its first N live cameras by itself.
      list.filter((camera) => camera.live).slice(0, kioskLive).forEach((camera) => startLive(camera.id));
    } catch (error) {
      if (error.name !== 'AbortError') wallStatus.textContent = errorText(error);
    }
  }

  function onSource(update) {
    if (update.kind !== 'camera' || !can('sources.read')) return;
    const camera = { ...cameras.get(update.id), ...update };
    delete camera.kind;
    const isNew = !cameras.has(update.id);
    cameras.set(update.id, camera);
    if (isNew) renderWall();
    else renderTile(camera);
  }

  const unsubscribers = [
    onEvent('incident', onIncident),
    onEvent('source', onSource),
    onEvent('detections', onDetections),
    onEvent('resync', () => { loadIncidents(); if (can('sources.read')) loadCameras(); }),
  ];
  trackBusy(container, loadIncidents());
  let frameTimer = null;
  if (can('sources.read')) {
    trackBusy(container, loadCameras());
    frameTimer = setInterval(refreshFrames, FRAME_REFRESH_MS);
  }
  const boxesTimer = setInterval(sweepBoxes, BOXES_SWEEP_MS);

  return () => {
    controller.abort();
    clearInterval(frameTimer);
    clearInterval(boxesTimer);
    [...playing].forEach(stopLive);
    unsubscribers.forEach((unsubscribe) => unsubscribe());
  };
}
