// 1,000 SDK clients in one Node process (node --experimental-websocket) follow
// one event on a real `stagecast dev`; 20 stage changes. Reports the Node
// process's CPU per delivery, memory per client, and the time from the
// producer's POST to the last client, p50/max.
//
//	cd sdk/js && npm run bench              (N=1000 by default; N=2000 npm run bench)
import { createClient } from '../dist/index.mjs';
import { MAP, eventually, startDev } from '../testlib/helpers.mjs';

const N = Number(process.env.N || 1000);
const BROADCASTS = 20;
const cleanups = [];
const t = { after: (fn) => cleanups.push(fn) };
try {
  const dev = await startDev(t);
  await dev.producer.putMap('bench', MAP);
  await dev.producer.setStage('bench', 'pre-show');
  global.gc && global.gc();
  const rss0 = process.memoryUsage().rss;
  const heap0 = process.memoryUsage().heapUsed;
  const got = new Map(); // v -> count and last arrival
  const clients = [];
  for (let i = 0; i < N; i++) {
    const c = createClient({ proxies: [dev.proxy], graphql: dev.graphql, events: ['bench'], device: 'b' + i, ackStages: true });
    c.on('stage', (s) => {
      const g = got.get(s.v) || { n: 0, last: 0 };
      g.n++;
      g.last = Date.now();
      got.set(s.v, g);
    });
    clients.push(c);
  }
  await Promise.all(clients.map((c) => c.ready()));
  await new Promise((r) => setTimeout(r, 2000));
  global.gc && global.gc();
  const rss1 = process.memoryUsage().rss;
  const heap1 = process.memoryUsage().heapUsed;
  const cpu0 = process.cpuUsage();
  const lat = [];
  const keys = ['round-3', 'knockout'];
  for (let b = 0; b < BROADCASTS; b++) {
    const sent = Date.now();
    const st = await dev.producer.setStage('bench', keys[b % 2]);
    await eventually('all clients on v' + st.v, () => (got.get(st.v) || { n: 0 }).n >= N, 30000);
    lat.push(got.get(st.v).last - sent);
  }
  const cpu = process.cpuUsage(cpu0);
  lat.sort((a, b) => a - b);
  const out = {
    clients: N,
    broadcasts: BROADCASTS,
    node_cpu_us_per_delivery: +((cpu.user + cpu.system) / (N * BROADCASTS)).toFixed(2),
    rss_kib_per_client: +((rss1 - rss0) / 1024 / N).toFixed(1),
    heap_kib_per_client: +((heap1 - heap0) / 1024 / N).toFixed(1),
    last_client_ms_p50: lat[Math.floor(lat.length / 2)],
    last_client_ms_max: lat[lat.length - 1],
  };
  console.log(JSON.stringify(out));
  await Promise.all(clients.map((c) => c.close()));
} finally {
  for (const fn of cleanups.reverse()) await fn();
}
