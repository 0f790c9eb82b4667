// Timer behaviour with a fake WebSocket (the transport only; every protocol
// behaviour is tested against real servers in dev.test.mjs and fleet.test.mjs).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createClient } from '../dist/index.mjs';

/** A socket that is refused like a browser sees it: close 1013 with the delay. */
function refusedSockets(reason) {
  const dials = [];
  class WS {
    constructor(url) {
      this.readyState = 0;
      dials.push({ url, at: Date.now() });
      setTimeout(() => {
        this.readyState = 3;
        this.onclose && this.onclose({ code: 1013, reason });
      }, 0);
    }
    send() {}
    close() {}
  }
  return { WS, dials };
}

test('a 1013 refusal: the client waits the delay named in the reason', { timeout: 10000 }, async () => {
  const { WS, dials } = refusedSockets('retry after 400 ms: capacity');
  const c = createClient({ proxies: ['ws://127.0.0.1:1/v1/ws'], events: ['e'], WebSocket: WS, random: () => 0 });
  // random 0 would make a plain backoff immediate: only the hint makes it wait
  await new Promise((r) => setTimeout(r, 1000));
  await c.close();
  assert.ok(dials.length >= 2 && dials.length <= 4, `${dials.length} dials in 1 s with a 400 ms delay`);
  assert.ok(dials[1].at - dials[0].at >= 380, `redialled after ${dials[1].at - dials[0].at} ms`);
});

test('a hidden page: overdue timers fire soon after it becomes visible, jittered', { timeout: 10000 }, async () => {
  const { WS, dials } = refusedSockets('retry after 600 ms: draining');
  let now = Date.now();
  const listeners = [];
  const vis = { visibilityState: 'hidden', addEventListener: (_, fn) => listeners.push(fn), removeEventListener: (_, fn) => listeners.splice(listeners.indexOf(fn), 1) };
  const c = createClient({ proxies: ['ws://127.0.0.1:1/v1/ws'], events: ['e'], WebSocket: WS, visibility: vis, now: () => now, wakeJitterMs: 50 });
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(dials.length, 1);
  now += 10 * 60 * 1000; // the page slept (timers throttled): the reconnect is overdue
  vis.visibilityState = 'visible';
  listeners.forEach((fn) => fn());
  await new Promise((r) => setTimeout(r, 150));
  assert.ok(dials.length >= 2, 'the overdue reconnect fired on wake, not 600 ms later');
  await c.close();
  assert.equal(listeners.length, 0, 'close removed the visibility listener');
});
