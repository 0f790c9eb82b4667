// The SDK against a fleet like `make cluster`'s: redis-server, a broadcaster,
// a prefetch server and two proxies, all real processes built from this tree.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from '../dist/index.mjs';
import { MAP, eventually, recorder, startFleet } from '../testlib/helpers.mjs';

/** A WebSocket that records the URLs it dialled. */
function dialled() {
  const urls = [];
  class WS extends WebSocket {
    constructor(url) {
      super(url);
      urls.push(url.split('?')[0]);
    }
  }
  return { WS, urls };
}

test('a draining proxy sends its devices to the other one (hint and "to"); nothing is missed', { timeout: 60000 }, async (t) => {
  const f = await startFleet(t, 2, ['--drain-window', '1s']);
  await f.producer.putMap('dr', MAP);
  await f.producer.setStage('dr', 'pre-show');
  const d = dialled();
  // The first proxy is listed twice: undirected, the device would come back to it.
  const c = createClient({ proxies: [f.proxies[0].url, f.proxies[0].url], graphql: f.graphql, events: ['dr'], device: 'drained', WebSocket: d.WS });
  t.after(() => c.close());
  const r = recorder(c);
  await c.ready();
  await c.stage('dr');
  await new Promise((res) => setTimeout(res, 1500)); // proxies publish their load every second: let the target be known
  f.proxies[0].proc.kill('SIGTERM'); // drain
  await eventually('moved to the other proxy', () => d.urls.includes(f.proxies[1].url) && c.state === 'connected', 20000);
  const st = await f.producer.setStage('dr', 'knockout');
  await eventually('a stage after the drain', () => r.stages.some((s) => s.v === st.v));
  assert.equal(d.urls.filter((u) => u === f.proxies[1].url).length, 1, 'followed "to" once');
});

test('a killed proxy: the device reconnects to the other one and catches up by version', { timeout: 60000 }, async (t) => {
  const f = await startFleet(t, 2);
  await f.producer.putMap('kl', MAP);
  await f.producer.setStage('kl', 'pre-show');
  const d = dialled();
  const c = createClient({ proxies: f.proxies.map((p) => p.url), graphql: f.graphql, events: ['kl'], device: 'survivor', WebSocket: d.WS, backoffBaseMs: 200 });
  t.after(() => c.close());
  const r = recorder(c);
  await c.ready();
  await c.stage('kl');
  await f.proxies[0].stop('SIGKILL');
  const missed = await f.producer.setStage('kl', 'round-3'); // while it reconnects
  await eventually('caught up on the other proxy', () => r.stages.some((s) => s.v === missed.v) && c.state === 'connected', 20000);
  assert.ok(d.urls.includes(f.proxies[1].url));
  assert.deepEqual(r.stages.find((s) => s.v === missed.v).payload, MAP.stages['round-3'].default);
});
