// Test helpers: real servers built from this tree (bin/stagecast, built by
// `make test`), on free loopback ports, stopped when the test ends.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

export const BIN = process.env.STAGECAST_BIN || resolve(import.meta.dirname, '../../../bin/stagecast');
export const PRODUCER_TOKEN = 'sdk-test-token-7c6b5a4f3e2d1c0b';

export function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** Polls fn until it returns truthy, or fails after ms. */
export async function eventually(what, fn, ms = 10000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error('timed out waiting for ' + what);
    await new Promise((r) => setTimeout(r, 20)); // polling
  }
}

function startProc(t, args, env = {}) {
  const p = spawn(args[0], args.slice(1), { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  p.stdout.on('data', (b) => (out += b));
  p.stderr.on('data', (b) => (out += b));
  const done = new Promise((r) => p.on('exit', r));
  const stop = async (signal = 'SIGKILL') => {
    if (p.exitCode === null && p.signalCode === null) p.kill(signal);
    await done;
  };
  t.after(() => stop());
  return { proc: p, stop, log: () => out, done };
}

async function healthy(url) {
  try {
    return (await fetch(url)).status === 200;
  } catch {
    return false;
  }
}

/** A producer: the broadcaster's HTTP API. */
export function producer(base, token = PRODUCER_TOKEN) {
  const call = async (method, path, body, headers = {}) => {
    const r = await fetch(base + path, {
      method,
      headers: { Authorization: 'Bearer ' + token, 'Content-Type': 'application/json', ...headers },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await r.text();
    if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${text}`);
    return text ? JSON.parse(text) : null;
  };
  return {
    putMap: (event, map) => call('PUT', `/v1/events/${event}/stages`, map),
    setStage: (event, stage, extra = {}) => call('POST', `/v1/events/${event}/stage`, { stage, ...extra }),
    notify: (req) => call('POST', '/v1/notifications', req),
  };
}

/** `stagecast dev` (memory engine) on free ports. */
export async function startDev(t, extra = [], env = {}) {
  const [pp, bp, fp] = [await freePort(), await freePort(), await freePort()];
  const p = startProc(t, [BIN, 'dev', '--proxy-addr', `127.0.0.1:${pp}`, '--broadcaster-addr', `127.0.0.1:${bp}`,
    '--prefetch-addr', `127.0.0.1:${fp}`, '--producer-token', PRODUCER_TOKEN, '--log-level', 'warn', '--kafka-addr', 'off', ...extra], env);
  await eventually('the dev server', async () => (await healthy(`http://127.0.0.1:${pp}/readyz`)) && (await healthy(`http://127.0.0.1:${bp}/healthz`)), 20000);
  return {
    ...p,
    proxy: `ws://127.0.0.1:${pp}/v1/ws`,
    graphql: `http://127.0.0.1:${fp}/graphql`,
    demo: `http://127.0.0.1:${fp}/demo/`,
    producer: producer(`http://127.0.0.1:${bp}`),
  };
}

/** A fleet like `make cluster`'s: redis-server, a broadcaster, a prefetch server and n proxies. */
export async function startFleet(t, n = 2, proxyArgs = []) {
  const rp = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'sdk-redis-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  startProc(t, ['redis-server', '--port', String(rp), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir]);
  await eventually('redis-server', () => {
    try {
      return execFileSync('redis-cli', ['-p', String(rp), 'PING']).toString().trim() === 'PONG';
    } catch {
      return false;
    }
  });
  const redis = ['--redis', `127.0.0.1:${rp}`, '--log-level', 'warn'];
  const bp = await freePort();
  startProc(t, [BIN, 'broadcaster', '--addr', `127.0.0.1:${bp}`, ...redis], { STAGECAST_PRODUCER_TOKEN: PRODUCER_TOKEN });
  const fp = await freePort();
  startProc(t, [BIN, 'prefetch', '--addr', `127.0.0.1:${fp}`, ...redis]);
  const proxies = [];
  for (let i = 0; i < n; i++) {
    const pp = await freePort();
    const url = `ws://127.0.0.1:${pp}/v1/ws`;
    const p = startProc(t, [BIN, 'proxy', '--addr', `127.0.0.1:${pp}`, '--proxy-id', `sdk-p${i}`, '--public-url', url,
      '--ip-limit-exempt', '127.0.0.0/8', '--trust-device-ids', ...redis, ...proxyArgs]);
    proxies.push({ ...p, url, port: pp });
  }
  for (const p of proxies) await eventually('proxy ' + p.url, () => healthy(`http://127.0.0.1:${p.port}/readyz`), 20000);
  await eventually('broadcaster', () => healthy(`http://127.0.0.1:${bp}/healthz`), 20000);
  await eventually('prefetch', () => healthy(`http://127.0.0.1:${fp}/healthz`), 20000);
  return { proxies, graphql: `http://127.0.0.1:${fp}/graphql`, producer: producer(`http://127.0.0.1:${bp}`) };
}

/** A device signing key and its JWKS; mint(device, ttl) returns a token. */
export function deviceKeys(t) {
  const dir = mkdtempSync(join(tmpdir(), 'sdk-keys-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  execFileSync(BIN, ['token', 'keygen', '--out', dir]);
  return {
    jwks: join(dir, 'device-keys.jwks'),
    mint: (device, ttl = '1h', member = '') =>
      execFileSync(BIN, ['token', 'mint', '--key', join(dir, 'device-signing.jwk'), '--device', device, '--ttl', ttl,
        ...(member ? ['--member', member] : [])]).toString().trim(),
  };
}

export const MAP = {
  ttl_seconds: 300,
  stages: {
    'pre-show': { default: { rows: ['undercard-highlights', 'fighter-profiles'] } },
    'round-3': { default: { rows: ['live-stats', 'round-by-round'] } },
    knockout: { default: { rows: ['knockout-replay', 'post-fight-interviews'] } },
  },
};

/** Records what a client emits. */
export function recorder(client) {
  const r = { stages: [], notes: [], states: [], errors: [] };
  client.on('stage', (s) => r.stages.push(s));
  client.on('note', (n) => r.notes.push(n));
  client.on('state', (s) => r.states.push(s));
  client.on('error', (e) => r.errors.push(e));
  return r;
}
