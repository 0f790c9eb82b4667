// The SDK against a real `stagecast dev` built from this tree.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createClient, refetchDelay } from '../dist/index.mjs';
import { MAP, deviceKeys, eventually, recorder, startDev } from '../testlib/helpers.mjs';

/** A WebSocket that remembers its instances, so a test can drop a connection. */
function droppable() {
  const sockets = [];
  class WS extends WebSocket {
    constructor(url) {
      super(url);
      sockets.push(this);
    }
  }
  return { WS, sockets, drop: () => sockets[sockets.length - 1].close(4321, 'test drop') };
}

/** fetch that counts GraphQL requests. */
function countingFetch() {
  const f = (url, init) => {
    f.calls++;
    return fetch(url, init);
  };
  f.calls = 0;
  return f;
}

test('prefetch, then stages from the map held: no request at the peak; close removes everything', { timeout: 40000 }, async (t) => {
  const dev = await startDev(t);
  await dev.producer.putMap('fight', MAP);
  await dev.producer.setStage('fight', 'pre-show');
  const fetchCount = countingFetch();
  const c = createClient({ proxies: [dev.proxy], graphql: dev.graphql, events: ['fight'], device: 'tv-1', platform: 'tv', fetch: fetchCount });
  const r = recorder(c);
  await c.ready();
  const first = await c.stage('fight');
  assert.equal(first.key, 'pre-show');
  assert.deepEqual(first.payload, MAP.stages['pre-show'].default);
  const fetches = fetchCount.calls;
  for (const key of ['round-3', 'knockout', 'round-3']) {
    const reply = await dev.producer.setStage('fight', key);
    await eventually('stage ' + key, () => r.stages.some((s) => s.v === reply.v));
    const s = r.stages.find((s) => s.v === reply.v);
    assert.deepEqual(s.payload, MAP.stages[key].default, 'the payload held, not fetched');
  }
  assert.equal(fetchCount.calls, fetches, 'stage changes of keys in the map make no request');
  assert.ok(r.states.includes('connected'));
  await c.close();
  assert.equal(c.state, 'closed');
  assert.equal(c.timers.size, 0, 'every timer removed');
  assert.equal(Object.keys(c.listeners).length, 0, 'every listener removed');
});

test('a dropped connection reconnects, re-subscribes with the version held and catches up', { timeout: 40000 }, async (t) => {
  const dev = await startDev(t);
  await dev.producer.putMap('ev', MAP);
  await dev.producer.setStage('ev', 'pre-show');
  const d = droppable();
  const c = createClient({ proxies: [dev.proxy], graphql: dev.graphql, events: ['ev'], device: 'dropper', WebSocket: d.WS, backoffBaseMs: 200 });
  t.after(() => c.close());
  const r = recorder(c);
  await c.ready();
  await c.stage('ev');
  d.drop();
  const missed = await dev.producer.setStage('ev', 'knockout'); // while it is away
  await eventually('caught up', () => r.stages.some((s) => s.v === missed.v && s.key === 'knockout'));
  assert.ok(d.sockets.length >= 2, 'it reconnected');
  assert.ok(r.stages.filter((s) => s.v === missed.v).length === 1, 'the version is applied once');
});

test('a changed payload is refetched once, in the device slot, showing what it holds meanwhile', { timeout: 40000 }, async (t) => {
  const dev = await startDev(t);
  await dev.producer.putMap('dg', MAP);
  const windowMs = 3000, slots = 10, device = 'd7';
  const slot = refetchDelay(device, windowMs, slots);
  const c = createClient({ proxies: [dev.proxy], graphql: dev.graphql, events: ['dg'], device, refetchWindowMs: windowMs, refetchSlots: slots, missDelayMaxMs: 1000 });
  t.after(() => c.close());
  const r = recorder(c);
  await c.ready();
  const changed = { ...MAP, stages: { ...MAP.stages, 'round-3': { default: { rows: ['new-row'] } } } };
  await dev.producer.putMap('dg', changed);
  const sent = Date.now();
  const st = await dev.producer.setStage('dg', 'round-3');
  await eventually('the stage frame', () => r.stages.some((s) => s.v === st.v));
  assert.deepEqual(r.stages.find((s) => s.v === st.v).payload, MAP.stages['round-3'].default, 'at first: the payload held');
  await eventually('the refetched payload', () => r.stages.some((s) => s.v === st.v && s.payload && s.payload.rows[0] === 'new-row'), windowMs + 5000);
  assert.ok(Date.now() - sent >= slot - 50, `refetched after ${Date.now() - sent} ms, its slot is ${slot} ms`);
});

test('notifications: pushed, then resumed after a reconnect from the cursor, duplicates dropped, acked', { timeout: 40000 }, async (t) => {
  const dev = await startDev(t);
  await dev.producer.putMap('nt', MAP);
  const d = droppable();
  const c = createClient({ proxies: [dev.proxy], graphql: dev.graphql, events: ['nt'], device: 'n-dev', notes: true, WebSocket: d.WS, backoffBaseMs: 300 });
  t.after(() => c.close());
  const r = recorder(c);
  await c.ready();
  await eventually('the inbox registered', async () => {
    await dev.producer.notify({ to: { devices: ['n-dev'] }, type: 'probe', priority: 'high' });
    return r.notes.length > 0;
  });
  const before = r.notes.length;
  d.drop();
  await dev.producer.notify({ to: { devices: ['n-dev'] }, type: 'while-away', priority: 'normal', payload: { text: 'one' } });
  await dev.producer.notify({ to: { devices: ['n-dev'] }, type: 'while-away', priority: 'normal', payload: { text: 'two' } });
  await eventually('the two notes after the reconnect', () => r.notes.filter((n) => n.type === 'while-away').length === 2);
  const ids = r.notes.map((n) => n.id);
  assert.equal(new Set(ids).size, ids.length, 'no note emitted twice (a resume may resend; the cursor dedups)');
  assert.ok(r.notes.slice(0, before).every((n) => n.type === 'probe'), 'the probes came first');
});

test('token expiry: the proxy closes 4003, the client gets a new token and goes on', { timeout: 40000 }, async (t) => {
  const keys = deviceKeys(t);
  const dev = await startDev(t, ['--device-keys', keys.jwks, '--require-device-token']);
  await dev.producer.putMap('tk', MAP);
  let minted = 0;
  const c = createClient({
    proxies: [dev.proxy], graphql: dev.graphql, events: ['tk'], device: 'tok-dev',
    getToken: () => {
      minted++;
      return keys.mint('tok-dev', minted === 1 ? '2s' : '1h', 'tok-member');
    },
  });
  t.after(() => c.close());
  const r = recorder(c);
  await c.ready();
  await eventually('the token expired and was replaced', () => r.errors.some((e) => e.code === 'token_expired') && c.state === 'connected', 15000);
  assert.ok(minted >= 2, 'getToken was called again');
  const st = await dev.producer.setStage('tk', 'knockout');
  await eventually('a stage after the new token', () => r.stages.some((s) => s.v === st.v));
  // The token's member inbox: pushed, and the same note pulled with the token.
  const sent = await dev.producer.notify({ to: { members: ['tok-member'] }, type: 'welcome', priority: 'high', payload: { text: 'hi' } });
  await eventually('the member note', () => r.notes.some((n) => n.nid === sent.id));
  const page = await c.pullInbox('');
  assert.ok(page.notes.some((n) => n.nid === sent.id) && page.next, 'pullInbox returns it');
});

test('an unknown event is subscribed again later, and followed once it exists', { timeout: 40000 }, async (t) => {
  const dev = await startDev(t);
  const c = createClient({ proxies: [dev.proxy], events: ['later'], device: 'early', resubDelayMs: 600 });
  t.after(() => c.close());
  const r = recorder(c);
  await c.ready();
  await eventually('unknown_event', () => r.errors.some((e) => e.code === 'unknown_event' && e.event === 'later'));
  const st = await dev.producer.setStage('later', 'pre-show');
  await eventually('the stage once the event exists', () => r.stages.some((s) => s.v === st.v), 10000);
});

test('more events than a connection may hold (16): those past it are reported, the rest followed', { timeout: 40000 }, async (t) => {
  const dev = await startDev(t);
  const events = Array.from({ length: 20 }, (_, i) => 'many-' + i);
  for (const e of events) await dev.producer.setStage(e, 'pre-show');
  const c = createClient({ proxies: [dev.proxy], events, device: 'many' });
  t.after(() => c.close());
  const r = recorder(c);
  await c.ready();
  await eventually('16 followed, 4 refused', () =>
    new Set(r.stages.map((s) => s.event)).size === 16 && new Set(r.errors.filter((e) => e.code === 'too_many_subscriptions').map((e) => e.event)).size === 4);
});
