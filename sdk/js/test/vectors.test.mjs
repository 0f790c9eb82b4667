// The SDK keeps the behaviour of the Go client: sdk/testdata/vectors.json is
// read by this suite and by internal/device's TestSharedVectors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { backoff, defaults, redirectAllowed, refetchDelay } from '../dist/index.mjs';

const v = JSON.parse(readFileSync(new URL('../../testdata/vectors.json', import.meta.url)));

test('backoff: full jitter, U(0, min(cap, base * 2^k))', () => {
  for (const b of v.backoff) {
    assert.ok(Math.abs(backoff(b.k, b.base_ms, b.cap_ms, b.u) - b.want_ms) < 1e-6, JSON.stringify(b));
  }
});

test('refetch slot: fnv32a(device) mod slots of the window', () => {
  for (const s of v.refetch_slot) assert.equal(refetchDelay(s.device, s.window_ms, s.slots), s.want_ms, JSON.stringify(s));
});

test('redirect rules of a directed drain', () => {
  for (const r of v.redirect) assert.equal(redirectAllowed(r.current, r.to, r.configured, r.allow || undefined), r.want, JSON.stringify(r));
});

test('defaults', () => {
  const want = {
    backoffBaseMs: 'backoff_base_ms', backoffCapMs: 'backoff_cap_ms', prefetchBackoffBaseMs: 'prefetch_backoff_base_ms',
    prefetchBackoffCapMs: 'prefetch_backoff_cap_ms', refetchWindowMs: 'refetch_window_ms', refetchSlots: 'refetch_slots',
    missDelayMaxMs: 'miss_delay_max_ms', resubDelayMs: 'resub_delay_ms',
  };
  for (const [k, name] of Object.entries(want)) assert.equal(defaults[k], v.defaults[name], k);
});

test('the demo embeds this build of the IIFE', () => {
  const built = readFileSync(new URL('../dist/stagecast.iife.js', import.meta.url));
  const committed = readFileSync(new URL('../../../internal/demo/assets/stagecast.iife.js', import.meta.url));
  assert.ok(built.equals(committed), 'internal/demo/assets/stagecast.iife.js is stale: run `npm run demo` in sdk/js and commit it');
});
