// The IIFE in a real browser: Debian's chromium, driven by playwright-core
// (npx playwright install cannot download browsers here), loads the demo home
// screen that `stagecast dev` serves and follows three stage changes and a
// notification. STAGECAST_UPDATE_SCREENSHOT=1 writes docs/sdk-demo.png.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { MAP, startDev } from '../testlib/helpers.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

test('the demo home screen follows stage changes and shows a notification', { timeout: 90000 }, async (t) => {
  assert.ok(existsSync(CHROMIUM), `no ${CHROMIUM}: make test installs Debian's chromium (apt-get install chromium)`);
  const dev = await startDev(t);
  await dev.producer.putMap('fight', MAP);
  await dev.producer.setStage('fight', 'pre-show');
  const profile = mkdtempSync(join(tmpdir(), 'sdk-chromium-'));
  t.after(() => rmSync(profile, { recursive: true, force: true }));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1000, height: 640 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  t.after(() => ctx.close());
  const page = await ctx.newPage();
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(dev.demo + '?event=fight&device=browser-1&platform=tv');
  await page.waitForFunction(() => document.getElementById('conn').textContent === 'connected');
  await page.waitForFunction(() => document.getElementById('stage').textContent === 'pre-show');
  for (const key of ['round-3', 'knockout', 'pre-show']) {
    const st = await dev.producer.setStage('fight', key);
    await page.waitForFunction(
      ([k, v]) => document.getElementById('stage').textContent === k && document.getElementById('version').textContent === 'v' + v,
      [key, st.v],
    );
    const rows = await page.$$eval('#rows .row', (els) => els.map((e) => e.textContent));
    assert.deepEqual(rows, MAP.stages[key].default.rows, 'the rows of ' + key + ', from the map held');
  }
  await dev.producer.notify({ to: { devices: ['browser-1'] }, type: 'new-episode', priority: 'high', payload: { text: '<b>not html</b>' } });
  await page.waitForFunction(() => document.querySelector('#toasts .toast'));
  const toast = await page.$eval('#toasts .toast', (e) => ({ text: e.textContent, html: e.innerHTML }));
  assert.equal(toast.text, 'new-episode: <b>not html</b>');
  assert.ok(!toast.html.includes('<b>'), 'payloads are shown as text, never HTML');
  if (process.env.STAGECAST_UPDATE_SCREENSHOT) await page.screenshot({ path: '../../docs/sdk-demo.png' });
  assert.deepEqual(errors, [], 'no page errors');
});
