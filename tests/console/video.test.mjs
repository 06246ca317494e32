// Browser test of the console's video: an incident's clip plays in the incident page, and a
// network camera's tile on the live wall plays its live stream. Self-contained: it starts its
// own RTSP camera (tests/support/rtsp_camera.py, vtest.avi re-encoded to H.264) and its own
// `skynet run` of a small config written to a temporary directory:
//   - cam-file: a file camera on vtest.avi (paced like a live one), a zone rule on the walkway
//     where people walk, and the real model: its incident gets a clip cut from the file;
//   - cam-live: the RTSP camera, no masks, with [api] live on: its tile plays live.mp4.
// Each video must play: its currentTime advances past 0.5 s.
//
//   SKYNET_BIN              the binary (default target/debug/skynet)
//   SKYNET_DATA_DIR         where media/vtest.avi is (default as skynet's own)
//   SKYNET_TEST_ARTIFACTS   screenshots and skynet's log (default target/console-artifacts)
//   CHROMIUM                the browser (default /usr/bin/chromium)
//
// Run: tests/console/run.sh, or node --test tests/console/video.test.mjs.

import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, '../..');
const SKYNET = process.env.SKYNET_BIN ?? path.join(ROOT, 'target/debug/skynet');
const ARTIFACTS = path.resolve(process.env.SKYNET_TEST_ARTIFACTS ?? path.join(ROOT, 'target/console-artifacts'));
const DATA_DIR = process.env.SKYNET_DATA_DIR
  || (process.env.XDG_DATA_HOME ? path.join(process.env.XDG_DATA_HOME, 'skynet') : path.join(os.homedir(), '.local/share/skynet'));
const VIDEO = path.join(DATA_DIR, 'media/vtest.avi');
const CLIP_TIMEOUT_MS = Number(process.env.SKYNET_CLIP_TIMEOUT_MS ?? 180_000);
const WALKWAY = '[[0.30, 0.40], [0.60, 0.40], [0.80, 0.55], [0.45, 0.55]]';
const USER = { username: 'video-op', password: `pw-${Math.random().toString(36).slice(2)}-${Date.now()}` };

// The children's environment: none of run.sh's settings for the city config's skynet.
const ENV = { ...process.env };
for (const key of ['SKYNET_STATE_DIR', 'SKYNET_API_LISTEN', 'SKYNET_METRICS_LISTEN', 'SKYNET_MQTT_URL', 'SKYNET_NATS_URL']) {
  delete ENV[key];
}

let work;
let camera;
let skynet;
let browser;
let baseUrl;

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

/** Polls `check` (async, truthy when done) until it holds or `timeout` ms pass. */
async function until(what, timeout, check, process = null) {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (process && process.exitCode !== null) throw new Error(`${what}: the process exited (${process.exitCode})`);
    const value = await check().catch(() => null);
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeout / 1000} s`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

/** Stops a child by its pid: TERM, then KILL if it has not exited in 10 s. */
async function stop(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  work = mkdtempSync(path.join(os.tmpdir(), 'skynet-video.'));
  const [rtspPort, apiPort, metricsPort] = [await freePort(), await freePort(), await freePort()];

  camera = spawn('/usr/bin/python3', [path.join(ROOT, 'tests/support/rtsp_camera.py'), String(rtspPort), VIDEO], {
    env: ENV, stdio: ['ignore', 'pipe', 'inherit'],
  });
  await new Promise((resolve, reject) => {
    let out = '';
    camera.stdout.on('data', (chunk) => {
      out += chunk;
      if (out.startsWith('ready\n')) resolve();
    });
    camera.once('exit', (code) => reject(new Error(`rtsp_camera.py exited (${code}) before it was ready`)));
  });

  const esc = (p) => p.replaceAll('\\', '/');
  const config = path.join(work, 'skynet.toml');
  writeFileSync(config, `
[node]
name = "video-test"

[metrics]
listen = "127.0.0.1:${metricsPort}"

[grids]
file = "${esc(path.join(ROOT, 'configs/demo-grids.geojson'))}"

[detect]
model = "${esc(path.join(ROOT, 'models/yolox_nano.toml'))}"
workers = 2

[risk]
half_life_s = 60
close_after_s = 120

[outbox]
path = "${esc(work)}/outbox.sqlite"

[evidence]
dir = "${esc(work)}/evidence"
clips = { enabled = true, pre_s = 2, post_s = 2, max_s = 20 }

[api]
listen = "127.0.0.1:${apiPort}"
live = { enabled = true }

[[cameras]]
id = "cam-file"
owner = "city_management"
uri = "${esc(VIDEO)}"
grid = "G-0102"
realtime = true
motion = { enabled = false }

  [[cameras.zones]]
  name = "walkway"
  polygon = ${WALKWAY}

  [[cameras.rules]]
  name = "walkway-rule"
  kind = "zone_intrusion"
  zone = "walkway"
  labels = ["person"]
  min_frames = 3
  cooldown_s = 2.0

[[cameras]]
id = "cam-live"
owner = "city_management"
uri = "rtsp://127.0.0.1:${rtspPort}/cam"
grid = "G-0102"
fps = 2.0
`);

  const added = spawnSync(SKYNET, ['users', 'add', USER.username, '--role', 'operator', '--config', config], {
    cwd: ROOT, env: ENV, input: USER.password, encoding: 'utf8',
  });
  assert.equal(added.status, 0, `skynet users add: ${added.stderr}`);

  const log = openSync(path.join(work, 'skynet.log'), 'w');
  skynet = spawn(SKYNET, ['run', '--config', config], { cwd: ROOT, env: ENV, stdio: ['ignore', log, log] });
  baseUrl = `http://127.0.0.1:${apiPort}`;
  await until('skynet ready', 120_000, async () => {
    const ready = await fetch(`http://127.0.0.1:${metricsPort}/readyz`);
    const console = await fetch(`${baseUrl}/`);
    return ready.ok && console.ok;
  }, skynet);

  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--autoplay-policy=no-user-gesture-required'],
  });
});

after(async () => {
  await browser?.close();
  await stop(skynet);
  await stop(camera);
  if (work) {
    try { copyFileSync(path.join(work, 'skynet.log'), path.join(ARTIFACTS, 'skynet-video.log')); } catch { /* none */ }
    rmSync(work, { recursive: true, force: true });
  }
});

async function login(page) {
  await page.goto(`${baseUrl}/`);
  await page.locator('[data-testid=login-form]').waitFor();
  await page.getByTestId('login-username').fill(USER.username);
  await page.getByTestId('login-password').fill(USER.password);
  await page.getByTestId('login-submit').click();
  await page.getByTestId('user-name').waitFor({ state: 'visible' });
}

/** Waits until `video` (a locator) has played past 0.5 s; its currentTime then. */
async function waitForPlayback(video, what) {
  const element = await video.elementHandle();
  try {
    await video.page().waitForFunction((v) => v.currentTime > 0.5, element, { timeout: 60_000 });
  } catch (error) {
    const state = await element.evaluate((v) => ({
      currentTime: v.currentTime, readyState: v.readyState, networkState: v.networkState, paused: v.paused,
      error: v.error ? `${v.error.code} ${v.error.message}` : null, src: v.currentSrc,
    }));
    assert.fail(`${what}: currentTime did not pass 0.5 s: ${JSON.stringify(state)} (${error.message})`);
  }
  return element.evaluate((v) => v.currentTime);
}

test('an incident clip and a live stream play in the browser', async () => {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  try {
    await login(page);

    // An incident with a clip (the walkway in vtest.avi; the clip follows post_s after it).
    const incidentId = await until('an incident with a clip', CLIP_TIMEOUT_MS, async () => {
      const response = await page.request.get(`${baseUrl}/api/v1/incidents?limit=50`);
      if (!response.ok()) return null;
      for (const listed of (await response.json()).incidents ?? []) {
        const detail = await page.request.get(`${baseUrl}/api/v1/incidents/${encodeURIComponent(listed.id)}`);
        if (!detail.ok()) continue;
        const body = await detail.json();
        const incident = body.incident ?? body;
        if ((incident.evidence ?? []).some((item) => item.kind === 'clip')) return listed.id;
      }
      return null;
    }, skynet);

    await page.evaluate((hash) => { location.hash = hash; }, `#/incidents/${encodeURIComponent(incidentId)}`);
    const clip = page.getByTestId('evidence-clip').first();
    await clip.waitFor({ state: 'visible', timeout: 20_000 });
    await clip.evaluate((element) => element.play());
    const clipTime = await waitForPlayback(clip, 'the incident clip');
    await page.screenshot({ path: path.join(ARTIFACTS, 'video-clip.png') });

    // The live wall: cam-live's tile plays live.mp4 on a click once the cameras list says live.
    await page.evaluate(() => { location.hash = '#/live'; });
    const screen = page.locator('[data-testid=camera-tile][data-camera-id="cam-live"] .camera-screen[role=button]');
    await screen.waitFor({ state: 'visible', timeout: 60_000 });
    await screen.click();
    const live = page.locator('[data-testid=camera-tile][data-camera-id="cam-live"] [data-testid=camera-live]');
    await live.waitFor({ state: 'visible', timeout: 20_000 });
    const liveTime = await waitForPlayback(live, 'the live stream');
    // The camera's boxes (SSE `detections`, people walking in vtest.avi) are drawn over it.
    const boxes = page.locator('[data-testid=camera-tile][data-camera-id="cam-live"] [data-testid=camera-boxes]');
    await boxes.waitFor({ state: 'visible', timeout: 20_000 });
    await page.waitForFunction(
      () => Number(document.querySelector('[data-camera-id="cam-live"] [data-testid=camera-boxes]')?.dataset.count) > 0,
      null, { timeout: 60_000 });
    await page.screenshot({ path: path.join(ARTIFACTS, 'video-live.png') });

    // A video wall (`?kiosk=1&live=N`) starts its first N live cameras by itself, no click.
    await page.goto(`${baseUrl}/?kiosk=1&live=2#/live`);
    const kioskLive = page.locator('[data-testid=camera-tile][data-camera-id="cam-live"] [data-testid=camera-live]');
    await kioskLive.waitFor({ state: 'visible', timeout: 20_000 });
    await waitForPlayback(kioskLive, 'the kiosk wall\'s live stream');

    console.log(`clip played to ${clipTime.toFixed(2)} s, live stream to ${liveTime.toFixed(2)} s`);
    assert.deepEqual(problems, [], problems.join('\n'));
  } finally {
    await context.close();
  }
});
