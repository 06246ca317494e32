// Browser test of the skynet web console: each role logs in through the form, sees only its
// pages, is refused what it may not do, and the pages pass axe-core in both languages with no
// console error and no failed request.
//
//   SKYNET_CONSOLE_URL       the server, e.g. http://127.0.0.1:8080 (required)
//   SKYNET_TEST_USERS        {"operator": {"username", "password"}, "inspector": ..., "engineer": ..., "admin": ...}
//   SKYNET_TRIGGER_INCIDENT  optional shell command run once the operator watches the live view;
//                            it must make a level I or II incident (run.sh runs the gas-leak
//                            simulator). Without it, such an incident must arrive on its own.
//   SKYNET_TEST_ARTIFACTS    where screenshots go (default target/console-artifacts)
//   CHROMIUM                 the browser (default /usr/bin/chromium)
//
// Run: tests/console/run.sh (starts skynet), or node --test tests/console/ against a server.

import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BASE_URL = (process.env.SKYNET_CONSOLE_URL ?? '').replace(/\/$/, '');
const USERS = JSON.parse(process.env.SKYNET_TEST_USERS ?? '{}');
const TRIGGER = process.env.SKYNET_TRIGGER_INCIDENT ?? '';
const ARTIFACTS = path.resolve(process.env.SKYNET_TEST_ARTIFACTS ?? path.join(HERE, '../../target/console-artifacts'));
const AXE_SOURCE = readFileSync(path.join(HERE, 'node_modules/axe-core/axe.min.js'), 'utf8');
const LANGUAGES = ['en', 'zh-CN'];
const INCIDENT_TIMEOUT_MS = Number(process.env.SKYNET_INCIDENT_TIMEOUT_MS ?? 150_000);

// Every page each role may open, in the order the navigation lists them.
const NAV_PAGES = ['live', 'map', 'patrol', 'tickets', 'sources', 'audit'];
const ROLE_PAGES = {
  operator: ['live', 'map', 'patrol', 'sources'],
  inspector: ['live', 'map', 'patrol', 'tickets'],
  engineer: ['live', 'map', 'patrol', 'sources'],
  admin: ['live', 'map', 'patrol', 'tickets', 'sources', 'audit'],
};

assert.ok(BASE_URL, 'set SKYNET_CONSOLE_URL to the console server, e.g. http://127.0.0.1:8080');
for (const role of Object.keys(ROLE_PAGES)) {
  assert.ok(USERS[role]?.username, `SKYNET_TEST_USERS has no ${role}`);
}

let browser;
let trigger = null;
// Set by the operator's test, used by the inspector's: the incident that arrived live.
let liveIncidentId = null;

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
});

after(async () => {
  await browser?.close();
  if (trigger && trigger.exitCode === null) trigger.kill('SIGTERM');
});

/**
 * A fresh browser context with every console error, page error, failed request and HTTP
 * error collected in `problems`. Requests the browser aborts itself (a view that leaves while
 * an image loads, the event stream at logout) are not failures.
 */
async function openSession(language) {
  const context = await browser.newContext({
    locale: language === 'en' ? 'en-US' : 'zh-CN',
    viewport: { width: 1400, height: 900 },
  });
  const page = await context.newPage();
  const problems = [];
  // Errors the test provokes on purpose: {path, status}.
  const provoked = [];
  const isProvoked = (url, status) =>
    provoked.some((entry) => new URL(url).pathname === entry.path && entry.status === status);
  page.on('console', (message) => {
    if (message.type() !== 'error') return;
    // Chromium logs every HTTP error as "Failed to load resource: ... status of 401 (...)".
    const status = Number(/status of (\d{3})/.exec(message.text())?.[1]);
    if (status && message.location()?.url && isProvoked(message.location().url, status)) return;
    problems.push(`console error: ${message.text()} (${message.location()?.url ?? ''})`);
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('requestfailed', (request) => {
    const reason = request.failure()?.errorText ?? '';
    if (reason === 'net::ERR_ABORTED') return;
    problems.push(`request failed: ${request.method()} ${request.url()} ${reason}`);
  });
  page.on('response', (response) => {
    if (response.status() >= 400 && isProvoked(response.url(), response.status())) return;
    if (response.status() >= 400) problems.push(`HTTP ${response.status()}: ${response.request().method()} ${response.url()}`);
  });
  await page.goto(`${BASE_URL}/`);
  return { context, page, problems, provoke: (path, status) => provoked.push({ path, status }) };
}

function assertNoProblems(session, what) {
  assert.deepEqual(session.problems, [], `${what}: console errors or failed requests:\n${session.problems.join('\n')}`);
}

async function login(page, role) {
  await page.locator('[data-testid=login-form]').waitFor();
  await page.getByTestId('login-username').fill(USERS[role].username);
  await page.getByTestId('login-password').fill(USERS[role].password);
  await page.getByTestId('login-submit').click();
  await page.getByTestId('user-name').waitFor({ state: 'visible' });
}

/** Waits until the mounted view has loaded (its root drops aria-busy). */
async function waitForView(page, name) {
  await page.locator(`[data-testid=view-${name}]:not([aria-busy])`).waitFor({ timeout: 20_000 });
}

async function openPage(page, name) {
  const link = page.getByTestId(`nav-${name}`);
  if (await link.isVisible()) await link.click();
  else await page.evaluate((hash) => { location.hash = hash; }, `#/${name}`);
  await waitForView(page, name);
}

async function setLanguage(page, language) {
  await page.getByTestId('language-switch').selectOption(language);
  await page.locator(`html[lang="${language}"]`).waitFor({ state: 'attached' });
}

/** axe-core on the current page; fails on critical or serious violations, printing them. */
async function checkAccessibility(page, label) {
  // Evaluated through the DevTools protocol rather than page.addScriptTag: the console's
  // Content-Security-Policy (script-src 'self') rightly refuses an inline script tag, and
  // bypassing CSP for the whole test would hide the console's own violations.
  if (!(await page.evaluate(() => Boolean(window.axe)))) await page.evaluate(AXE_SOURCE);
  const violations = await page.evaluate(async () => {
    const results = await window.axe.run(document, { resultTypes: ['violations'] });
    return results.violations.map((violation) => ({
      id: violation.id, impact: violation.impact, help: violation.help,
      nodes: violation.nodes.map((node) => `${node.target.join(' ')}: ${node.failureSummary}`),
    }));
  });
  const blocking = violations.filter((violation) => violation.impact === 'critical' || violation.impact === 'serious');
  for (const violation of blocking) {
    console.log(`axe ${label}: [${violation.impact}] ${violation.id}: ${violation.help}\n  ${violation.nodes.join('\n  ')}`);
  }
  assert.equal(blocking.length, 0, `${label}: ${blocking.length} critical/serious axe violations: ${blocking.map((v) => v.id).join(', ')}`);
}

async function screenshot(page, name) {
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

async function checkNavigation(page, role) {
  for (const name of NAV_PAGES) {
    const expected = ROLE_PAGES[role].includes(name);
    assert.equal(await page.getByTestId(`nav-${name}`).isVisible(), expected,
      `${role}: the ${name} link should be ${expected ? 'shown' : 'hidden'}`);
  }
}

/** Every page of the role, in both languages: loaded, accessible, screenshotted. */
async function checkPages(session, role, extraPages = []) {
  const { page } = session;
  for (const language of LANGUAGES) {
    await setLanguage(page, language);
    for (const name of ROLE_PAGES[role]) {
      await openPage(page, name);
      await checkAccessibility(page, `${role} ${name} ${language}`);
      await screenshot(page, `${role}-${name}-${language}`);
    }
    for (const { name, hash } of extraPages) {
      await page.evaluate((target) => { location.hash = target; }, hash);
      await waitForView(page, name);
      await checkAccessibility(page, `${role} ${name} ${language}`);
      await screenshot(page, `${role}-${name}-${language}`);
    }
  }
}

/** A direct API call with the session's cookie, outside the page (so the page stays clean). */
async function apiStatus(context, method, url, data) {
  const response = await context.request.fetch(`${BASE_URL}${url}`, {
    method, data, headers: data ? { 'Content-Type': 'application/json' } : {}, failOnStatusCode: false,
  });
  return response.status();
}

async function anyIncidentId(context) {
  const response = await context.request.get(`${BASE_URL}/api/v1/incidents?limit=1`);
  assert.equal(response.status(), 200);
  const { incidents } = await response.json();
  return incidents[0]?.id ?? 'no-such-incident';
}

/** The id of an incident with an evidence snapshot, waiting for one to be taken. */
async function waitForIncidentWithEvidence(context) {
  for (let attempt = 0; attempt < 30; attempt += 1) {
    const response = await context.request.get(`${BASE_URL}/api/v1/incidents?limit=100`);
    const { incidents } = await response.json();
    const found = incidents.find((incident) => (incident.evidence_urls ?? []).length > 0);
    if (found) return found.id;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  throw new Error('no incident with an evidence snapshot after 30 s');
}

async function logout(session) {
  await session.page.getByTestId('logout').click();
  await session.page.locator('[data-testid=login-form]').waitFor();
}

describe('skynet console', { concurrency: false }, () => {
  test('login page: accessible in both languages, wrong password refused', async () => {
    const session = await openSession('en');
    const { page } = session;
    for (const language of LANGUAGES) {
      await setLanguage(page, language);
      await page.locator('[data-testid=login-form]').waitFor();
      await checkAccessibility(page, `login ${language}`);
      await screenshot(page, `login-${language}`);
    }
    assert.equal(await page.getByTestId('nav-live').count(), 0, 'no navigation before login');

    // A wrong password is refused with a message, and nothing is signed in.
    session.provoke('/api/v1/login', 401);
    await page.getByTestId('login-username').fill(USERS.operator.username);
    await page.getByTestId('login-password').fill('not-the-password');
    await page.getByTestId('login-submit').click();
    await page.getByTestId('login-error').waitFor({ state: 'visible' });
    assert.equal(await page.getByTestId('user-name').isVisible(), false);

    // Both languages have the same keys.
    const missing = await page.evaluate(async () => {
      const { dictionaries } = await import('/i18n.js');
      const [en, zh] = [Object.keys(dictionaries.en), Object.keys(dictionaries['zh-CN'])];
      return [...en.filter((key) => !zh.includes(key)), ...zh.filter((key) => !en.includes(key))];
    });
    assert.deepEqual(missing, [], 'keys missing from one of the dictionaries');
    assertNoProblems(session, 'login page');
    await session.context.close();
  });

  test('operator: an incident arrives live, the alarm sounds, acknowledging stops it', async () => {
    const session = await openSession('en');
    const { page, context } = session;
    await login(page, 'operator');
    await waitForView(page, 'live');
    await checkNavigation(page, 'operator');
    assert.equal(await page.getByTestId('camera-tile').count() > 0, true, 'the camera wall shows the cameras');
    // At least one camera shows its latest annotated frame (the city config replays a file).
    await page.waitForFunction(() => [...document.querySelectorAll('[data-testid=camera-tile] img')]
      .some((image) => !image.hidden && image.complete && image.naturalWidth > 0), null, { timeout: 30_000 });

    // Refused: an operator sets no status, neither through the page nor directly.
    assert.equal(await page.getByTestId('status-button').count(), 0);
    assert.equal(await apiStatus(context, 'POST', `/api/v1/incidents/${await anyIncidentId(context)}/status`, { status: 'dispatched' }), 403);
    // Nor a threshold what-if (it replays a day: engineers' work).
    assert.equal(await apiStatus(context, 'POST', '/api/v1/cameras/cam-safety-03/thresholds/what-if', { person: 0.6 }), 403);

    // The page must not reload: the incident has to come through the event stream.
    await page.evaluate(() => { window.__sameDocument = true; });
    const known = await page.getByTestId('alert-item').evaluateAll((items) => items.map((item) => item.dataset.incidentId));
    if (TRIGGER) trigger = spawn(TRIGGER, { shell: true, stdio: ['ignore', 'ignore', 'inherit'] });

    // A new open level I or II incident, not on the strip when the page loaded.
    const arrived = await page.waitForFunction((before) => [...document.querySelectorAll('[data-testid=alert-item][data-state=open]')]
      .find((item) => ['I', 'II'].includes(item.dataset.level) && !before.includes(item.dataset.incidentId)
        && item.querySelector('[data-testid=ack-button]'))?.dataset.incidentId,
    known, { timeout: INCIDENT_TIMEOUT_MS, polling: 500 });
    liveIncidentId = await arrived.jsonValue();
    assert.equal(await page.evaluate(() => window.__sameDocument), true, 'the page was not reloaded');

    const banner = page.getByTestId('alarm-banner');
    await banner.waitFor({ state: 'visible' });
    assert.ok(await page.getByTestId('sound-toggle').isVisible(), 'the banner offers sound control');
    await checkAccessibility(page, 'operator live with alarm en');
    await screenshot(page, 'operator-alarm-en');

    // Acknowledge the new incident from its alert; acknowledge any other alarming one from
    // the banner (the leak may also fuse into a second, level I incident), until it is gone.
    await page.locator(`[data-testid=alert-item][data-incident-id="${liveIncidentId}"] [data-testid=ack-button]`).click();
    await page.locator(`[data-testid=alert-item][data-incident-id="${liveIncidentId}"][data-state=acknowledged], [data-testid=alert-item][data-incident-id="${liveIncidentId}"]:not(:has([data-testid=ack-button]))`)
      .first().waitFor({ timeout: 10_000 });
    for (let round = 0; round < 10 && await banner.isVisible(); round += 1) {
      const ack = page.getByTestId('alarm-ack').first();
      if (await ack.isVisible()) await ack.click().catch(() => {});
      await page.waitForTimeout(1000);
    }
    await banner.waitFor({ state: 'hidden', timeout: 15_000 });

    // The grid map by keyboard: the incident's cell, selected with Enter, lists it.
    await openPage(page, 'map');
    const incident = await (await context.request.get(`${BASE_URL}/api/v1/incidents/${liveIncidentId}`)).json();
    const cell = page.locator(`[data-testid=map-cell][data-grid-id="${incident.incident.grid}"]`);
    await cell.focus();
    await page.keyboard.press('Enter');
    await page.locator(`[data-testid=cell-incident][data-incident-id="${liveIncidentId}"]`).waitFor();

    await checkPages(session, 'operator', [{ name: 'incident', hash: `#/incidents/${liveIncidentId}` }]);
    assertNoProblems(session, 'operator');
    await logout(session);
    assertNoProblems(session, 'operator logout');
    await session.context.close();
  });

  test('inspector: sees the ticket with its countdown and dispatches it; cannot acknowledge', async () => {
    const session = await openSession('zh-CN');
    const { page, context } = session;
    await login(page, 'inspector');
    await waitForView(page, 'tickets');
    await checkNavigation(page, 'inspector');

    const row = liveIncidentId
      ? page.locator(`[data-testid=ticket-row][data-incident-id="${liveIncidentId}"]`)
      : page.locator('[data-testid=ticket-row]').filter({ has: page.locator('[data-status=dispatched]') }).first();
    await row.waitFor({ timeout: 30_000 });
    const incidentId = await row.getAttribute('data-incident-id');
    const countdown = row.locator('[data-testid=countdown-dispatch], [data-testid=countdown-resolve]').first();
    assert.match(await countdown.textContent(), /\d/, 'the ticket shows a countdown');
    const first = await countdown.textContent();
    // The countdown runs: wait for its text to change (a condition, not a fixed pause; the
    // 30 s is a deadline for a loaded machine, the countdown ticks each second).
    const handle = await countdown.elementHandle();
    await page.waitForFunction(([element, before]) => element.textContent !== before, [handle, first], { timeout: 30_000 });
    assert.notEqual(await countdown.textContent(), first, 'the countdown runs');
    await screenshot(page, 'inspector-ticket-zh-CN');

    await row.locator('[data-testid=status-button][data-status=dispatched]').click();
    await page.locator(`[data-testid=ticket-row][data-incident-id="${incidentId}"][data-state=dispatched]`).waitFor({ timeout: 10_000 });

    // Refused: no acknowledge button anywhere, and the server answers 403 to a direct call.
    await openPage(page, 'live');
    assert.ok(await page.getByTestId('alert-item').count() > 0, 'the inspector sees incidents of their department');
    assert.equal(await page.getByTestId('ack-button').count(), 0, 'an inspector has no acknowledge button');
    assert.equal(await page.getByTestId('alarm-ack').count(), 0);
    assert.equal(await apiStatus(context, 'POST', `/api/v1/incidents/${incidentId}/ack`, {}), 403);

    // A note on the incident shows in its timeline.
    await page.evaluate((hash) => { location.hash = hash; }, `#/incidents/${incidentId}`);
    await waitForView(page, 'incident');
    const entries = await page.getByTestId('timeline-entry').count();
    await page.getByTestId('note-text').fill('现场已派人核查 / on site');
    await page.getByTestId('note-submit').click();
    await page.waitForFunction((count) => document.querySelectorAll('[data-testid=timeline-entry]').length > count, entries);

    await checkPages(session, 'inspector', [{ name: 'incident', hash: `#/incidents/${incidentId}` }]);
    assertNoProblems(session, 'inspector');
    await session.context.close();
  });

  test('engineer: sources and thresholds; the audit log is refused', async () => {
    const session = await openSession('en');
    const { page, context } = session;
    await login(page, 'engineer');
    await waitForView(page, 'live');
    await checkNavigation(page, 'engineer');

    await page.evaluate(() => { location.hash = '#/audit'; });
    await page.getByTestId('forbidden').waitFor();
    assert.equal(await apiStatus(context, 'GET', '/api/v1/audit'), 403, 'the server refuses the audit log');
    assert.equal(await page.getByTestId('ack-button').count(), 0);

    await openPage(page, 'sources');
    assert.ok(await page.getByTestId('camera-row').count() > 0, 'cameras are listed');
    assert.ok(await page.getByTestId('sensor-row').count() > 0, 'sensors are listed');
    const input = page.getByTestId('threshold-input').first();
    const form = page.getByTestId('threshold-form').first();
    const original = Number(await input.inputValue());
    const changed = original >= 0.9 ? original - 0.05 : original + 0.05;
    await input.fill(changed.toFixed(2));
    // Preview first: the last recorded day replayed with the current and the proposed
    // thresholds; nothing is applied.
    const cameraUnderTest = await form.getAttribute('data-camera-id');
    const labelUnderTest = await input.getAttribute('data-class');
    await form.getByTestId('threshold-preview').click();
    const preview = form.getByTestId('threshold-preview-result');
    await page.waitForFunction(
      (id) => document.querySelector(`[data-testid=threshold-form][data-camera-id="${id}"] [data-testid=threshold-preview-result]`)?.dataset.incidents !== undefined,
      cameraUnderTest, { timeout: 30_000 });
    assert.match(await preview.textContent(), /^Would have changed \d+ of the last day's \d+ incidents \(\d+ added, \d+ dropped, \d+ changed level\)\.$/);
    const before = await (await context.request.get(`${BASE_URL}/api/v1/cameras`)).json();
    assert.equal(before.cameras.find((camera) => camera.id === cameraUnderTest).thresholds[labelUnderTest].toFixed(2), original.toFixed(2),
      'a preview applies nothing');
    assert.equal(await input.inputValue(), changed.toFixed(2), 'the edit is kept while previewing');
    await form.getByTestId('threshold-save').click();
    await page.getByTestId('notice').first().waitFor();
    const cameraId = await form.getAttribute('data-camera-id');
    const { cameras } = await (await context.request.get(`${BASE_URL}/api/v1/cameras`)).json();
    const label = await input.getAttribute('data-class');
    assert.equal(cameras.find((camera) => camera.id === cameraId).thresholds[label].toFixed(2), changed.toFixed(2));

    await checkPages(session, 'engineer');
    assertNoProblems(session, 'engineer');
    await session.context.close();
  });

  test('admin: every page, the audit log with filters, and the kiosk wall', async () => {
    const session = await openSession('en');
    const { page } = session;
    await login(page, 'admin');
    await waitForView(page, 'live');
    await checkNavigation(page, 'admin');

    await openPage(page, 'audit');
    await page.getByTestId('audit-actor').fill(USERS.engineer.username);
    await page.getByTestId('audit-filter').click();
    await page.getByTestId('audit-row').first().waitFor({ timeout: 10_000 });
    const actors = await page.getByTestId('audit-row').evaluateAll((rows) => rows.map((row) => row.cells[1].textContent));
    assert.ok(actors.every((actor) => actor === USERS.engineer.username), `only the engineer's entries: ${actors}`);

    // The evidence snapshot of a camera's incident is shown on its page.
    const withEvidence = await waitForIncidentWithEvidence(session.context);
    await page.evaluate((hash) => { location.hash = hash; }, `#/incidents/${withEvidence}`);
    await waitForView(page, 'incident');
    await page.waitForFunction(() => [...document.querySelectorAll('[data-testid=evidence-image]')]
      .some((image) => image.complete && image.naturalWidth > 0), null, { timeout: 10_000 });
    await screenshot(page, 'admin-evidence-en');

    await checkPages(session, 'admin');

    // The video wall: no header or navigation, the cameras and the alerts still there.
    await page.goto(`${BASE_URL}/?kiosk=1#/live`);
    await waitForView(page, 'live');
    assert.equal(await page.getByTestId('header').isVisible(), false, 'kiosk mode hides the header');
    assert.ok(await page.getByTestId('camera-tile').first().isVisible());
    await checkAccessibility(page, 'admin kiosk');
    await screenshot(page, 'admin-kiosk');

    assertNoProblems(session, 'admin');
    await session.context.close();
  });

  test('operator: the patrol page shows a recorded round and its offline camera; the map colours cells by rounds', async () => {
    // configs/city.toml has no patrol: the round comes from the API's answer, as recorded
    // rounds are given (GET /api/v1/patrols, /patrols/grids in openapi.json), on the real
    // server, session and Content-Security-Policy. The ids are hostile: shown as text only.
    const session = await openSession('en');
    const { page, context } = session;
    await login(page, 'operator');
    await waitForView(page, 'live');
    const { features } = await (await context.request.get(`${BASE_URL}/api/v1/grids`)).json();
    const [first, second] = features.map((feature) => feature.properties?.id ?? feature.id);
    assert.ok(first && second, 'the city has two grid cells');
    const hostile = '<img src=x onerror=window.__patrolXss=1>';
    const round = (number, checked, offline) => ({
      round: number, started: '2026-12-06T10:00:00Z', finished: '2026-12-06T10:00:14Z', seconds: 14,
      cameras: checked + offline, checked, offline, failed: 0,
    });
    const look = (status, rounds) => ({
      last: { round: 42, at: '2026-12-06T10:00:14Z', status, frames: status === 'checked' ? 3 : 0, observations: 0, snapshot_url: null },
      last_checked: rounds == null ? null : '2026-12-06T10:00:14Z', rounds_since_checked: rounds,
    });
    const patrols = { patrols: [{
      name: 'night-round', every_s: 60, dwell_s: 3, max_concurrent: 2, rounds_kept: 2,
      rounds: [round(42, 1, 1), round(41, 2, 0)],
      cameras: [
        { id: 'cam-patrol-1', grid: first, owner: 'police', ...look('checked', 0) },
        { id: hostile, grid: second, owner: 'police', ...look('offline', 4) },
      ],
      offline: [{ grid: second, cameras: [{ id: hostile, status: 'offline' }] }],
    }] };
    const grids = { grids: [
      { grid: first, rounds_since_checked: 0, last_checked: '2026-12-06T10:00:14Z', cameras: [] },
      { grid: second, rounds_since_checked: 4, last_checked: '2026-12-06T10:00:14Z', cameras: [] },
    ] };
    const fulfil = (body) => (route) => route.fulfill({ status: 200, contentType: 'application/json', body: JSON.stringify(body) });
    await page.route('**/api/v1/patrols', fulfil(patrols));
    await page.route('**/api/v1/patrols/grids', fulfil(grids));

    await openPage(page, 'patrol');
    const section = page.locator('[data-testid=patrol][data-patrol="night-round"]');
    assert.equal(await section.getByTestId('patrol-round').count(), 2);
    assert.equal(await section.locator('[data-testid=patrol-round]').first().getAttribute('data-round'), '42');
    const offline = section.getByTestId('patrol-offline-grid');
    assert.equal(await offline.getAttribute('data-grid'), second);
    assert.equal(await offline.getByTestId('patrol-offline-camera').textContent(), hostile);
    assert.equal(await section.getByTestId('patrol-camera').count(), 2);
    assert.equal(await section.locator('[data-testid=patrol-camera][data-status=offline] [data-testid=patrol-since]').getAttribute('data-rounds'), '4');
    assert.equal(await page.evaluate(() => window.__patrolXss ?? null), null, 'no markup from an id');
    await checkAccessibility(page, 'operator patrol with a round');
    await screenshot(page, 'operator-patrol-round-en');

    await openPage(page, 'map');
    await page.getByTestId('patrol-mode').check();
    const state = (grid) => page.locator(`[data-testid=map-cell][data-grid-id="${grid}"]`).getAttribute('data-patrol');
    await page.locator(`[data-testid=map-cell][data-grid-id="${second}"][data-patrol=stale]`).waitFor();
    assert.equal(await state(first), 'fresh');
    await page.getByTestId('patrol-rounds').fill('4');
    assert.equal(await state(second), 'fresh', 'looked at 4 rounds ago is not more than 4');
    await checkAccessibility(page, 'operator map by patrol');
    assertNoProblems(session, 'operator patrol');
    await session.context.close();
  });
});
