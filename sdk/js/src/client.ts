import type { InboxQuery, PrefetchQuery } from './graphql.generated';
import { backoff, defaults, redirectAllowed, refetchDelay } from './rules';

/** A WebSocket constructor (the browser's, Node's, or any WHATWG-compatible one). */
export type WebSocketLike = {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
};
export type WebSocketCtor = new (url: string) => WebSocketLike;

/** What a page's document offers for visibility (the default is globalThis.document). */
export type VisibilitySource = {
  readonly visibilityState?: string;
  addEventListener(type: 'visibilitychange', fn: () => void): void;
  removeEventListener(type: 'visibilitychange', fn: () => void): void;
};

/** Options of createClient; every field but proxies and events is optional. */
export interface ClientOptions {
  /** Proxies' WebSocket endpoints (ws(s)://host/v1/ws); reconnects rotate through them. */
  proxies: string[];
  /** The prefetch API's GraphQL endpoint; without it nothing is prefetched. */
  graphql?: string;
  /** Events to follow. */
  events: string[];
  /** Device id, platform and segment (a device token's claims override them). */
  device?: string;
  platform?: string;
  segment?: string;
  /** Returns the device token; called before every connect and after a 4003. */
  getToken?: () => string | undefined | Promise<string | undefined>;
  /** Resume the notification inbox on every connect (default: when getToken is set). */
  notes?: boolean;
  /** Ack each stage applied and each note received (defaults true). */
  ackStages?: boolean;
  ackNotes?: boolean;
  /** Host patterns a directed drain's "to" may name (default: the proxies' hosts and their subdomains). */
  redirectHosts?: string[];
  backoffBaseMs?: number;
  backoffCapMs?: number;
  prefetchBackoffBaseMs?: number;
  prefetchBackoffCapMs?: number;
  resubDelayMs?: number;
  refetchWindowMs?: number;
  refetchSlots?: number;
  missDelayMaxMs?: number;
  /** Jitter for overdue timers when a hidden page becomes visible (default 2000). */
  wakeJitterMs?: number;
  /** A connection not open within this is given up and retried (default 10000). */
  connectTimeoutMs?: number;
  WebSocket?: WebSocketCtor;
  fetch?: (url: string, init: { method: string; headers: Record<string, string>; body: string }) => Promise<{ status: number; json(): Promise<unknown> }>;
  random?: () => number;
  now?: () => number;
  visibility?: VisibilitySource | null;
}

/** A stage as the device shows it: the key, its version and the payload it already holds. */
export interface Stage {
  event: string;
  key: string;
  v: number;
  ts: number;
  payload: unknown;
}

/** A notification as a note frame carries it. */
export interface Note {
  id: string;
  nid: string;
  type: string;
  priority: string;
  payload: unknown;
  ts: number;
  resume?: string;
}

export type State = 'idle' | 'connecting' | 'connected' | 'disconnected' | 'closed';

/** An error the client reports (it keeps running unless state is 'closed'). */
export interface ClientError {
  code: string;
  message: string;
  event?: string;
}

export interface Events {
  stage: Stage;
  note: Note;
  state: State;
  error: ClientError;
}

interface Timer {
  at: number;
  id: ReturnType<typeof setTimeout>;
  fn: () => void;
}

const RESUB_CODES = ['unknown_event', 'unavailable', 'event_limit', 'rate_limited'];
// The SDK's two queries; their result types (src/graphql.generated.ts) are
// generated from the schema the prefetch API serves (npm run codegen; checked
// by the tests).
const PREFETCH_QUERY = /* GraphQL */ `
  query Prefetch($event: ID!, $segment: String) {
    liveEvent(id: $event) { id current { key v ts } stages(segment: $segment) { key payload digest } ttlSeconds refreshAfterSeconds }
  }
`;
const INBOX_QUERY = /* GraphQL */ `
  query Inbox($after: String, $limit: Int) { inbox(after: $after, limit: $limit) { notes { id nid type priority payload ts } next } }
`;
const SEEN_NOTES = 512;
const SUB_BATCH = 16; // events per sub frame (docs/protocol.md)

/**
 * A stagecast device client. It prefetches each event's stage map (honouring
 * refresh hints), holds one WebSocket to a proxy, keeps the highest version
 * per event and shows the payload it already holds for the key: no request at
 * the peak. See docs/sdk-js.md.
 */
export class StagecastClient {
  private o: Required<Omit<ClientOptions, 'graphql' | 'device' | 'platform' | 'segment' | 'getToken' | 'redirectHosts' | 'visibility' | 'notes'>> &
    ClientOptions;
  private listeners: { [name: string]: Array<(v: never) => void> | undefined } = {};
  private timers = new Map<string, Timer>();
  private ws: WebSocketLike | undefined;
  private wsURL = '';
  private urlIdx = 0;
  private attempt = 0;
  private hint: number | undefined;
  private redirect = '';
  private held: Record<string, number> = {};
  private current: Record<string, Stage> = {};
  private maps: Record<string, { payloads: Record<string, unknown>; digests: Record<string, string> }> = {};
  private fetchAttempt: Record<string, number> = {};
  private resume = '';
  private seen: string[] = [];
  private seenSet: Record<string, true> = {};
  private token: string | undefined;
  private tokenStale = true; // get a new token before the next use (none yet, or the proxy said it expired)
  private tokenWait: Promise<string | undefined> | undefined; // a getToken call in flight, shared
  private want: Record<string, string> = {}; // per event: the digest the last stage frame named
  private st: State = 'idle';
  private readyWait: Promise<void>;
  private readyDone!: () => void;
  private prefetched = 0;
  private everConnected = false;
  private waiters: Record<string, Array<(s: Stage) => void>> = {};
  private onVisible = () => this.wake();
  private stopped = false;

  constructor(opts: ClientOptions) {
    if (!opts || !opts.proxies || opts.proxies.length === 0) throw new Error('stagecast: proxies is required');
    if (!opts.events || opts.events.length === 0) throw new Error('stagecast: events is required');
    const g = globalThis as unknown as { WebSocket?: WebSocketCtor; fetch?: ClientOptions['fetch']; document?: VisibilitySource };
    this.o = {
      ackStages: true,
      ackNotes: true,
      backoffBaseMs: defaults.backoffBaseMs,
      backoffCapMs: defaults.backoffCapMs,
      prefetchBackoffBaseMs: defaults.prefetchBackoffBaseMs,
      prefetchBackoffCapMs: defaults.prefetchBackoffCapMs,
      resubDelayMs: defaults.resubDelayMs,
      refetchWindowMs: defaults.refetchWindowMs,
      refetchSlots: defaults.refetchSlots,
      missDelayMaxMs: defaults.missDelayMaxMs,
      wakeJitterMs: 2000,
      connectTimeoutMs: 10000,
      random: Math.random,
      now: Date.now,
      ...(opts as object),
      WebSocket: (opts.WebSocket || g.WebSocket) as WebSocketCtor,
      fetch: (opts.fetch || (g.fetch && g.fetch.bind(globalThis))) as NonNullable<ClientOptions['fetch']>,
    } as StagecastClient['o'];
    if (!this.o.WebSocket) throw new Error('stagecast: no WebSocket here: pass options.WebSocket');
    for (const e of opts.events) this.held[e] = 0;
    this.readyWait = new Promise((resolve) => (this.readyDone = resolve));
    const vis = opts.visibility === undefined ? g.document : opts.visibility;
    if (vis) vis.addEventListener('visibilitychange', this.onVisible);
    this.o.visibility = vis || null;
    for (const e of opts.events) this.prefetch(e);
    if (!opts.graphql) this.prefetched = opts.events.length;
    this.connect();
  }

  /** Adds a listener; returns the function that removes it. */
  on<K extends keyof Events>(name: K, fn: (v: Events[K]) => void): () => void {
    const l = (this.listeners[name] = this.listeners[name] || []);
    l.push(fn as (v: never) => void);
    return () => this.off(name, fn);
  }

  off<K extends keyof Events>(name: K, fn: (v: Events[K]) => void): void {
    const l = this.listeners[name];
    if (l) {
      const i = l.indexOf(fn as (v: never) => void);
      if (i >= 0) l.splice(i, 1);
    }
  }

  /** The connection's state now. */
  get state(): State {
    return this.st;
  }

  /** Resolves once connected and every event's first prefetch has settled. */
  ready(): Promise<void> {
    return this.readyWait;
  }

  /** The event's current stage: at once when known, else when the first arrives. */
  stage(event: string): Promise<Stage> {
    const s = this.current[event];
    if (s) return Promise.resolve(s);
    return new Promise((resolve) => (this.waiters[event] = this.waiters[event] || []).push(resolve));
  }

  /** The payload held for an event's stage key (undefined: not in the map). */
  payload(event: string, key: string): unknown {
    const m = this.maps[event];
    return m ? m.payloads[key] : undefined;
  }

  /** Pulls the inbox (member and device) after a cursor (default: the resume cursor). */
  async pullInbox(after?: string, limit = 100): Promise<{ notes: Note[]; next: string }> {
    if (!this.o.graphql) throw new Error('stagecast: pullInbox needs options.graphql');
    const token = await this.freshToken();
    const body = (await this.graphql(INBOX_QUERY, { after: after === undefined ? this.resume : after, limit }, token)) as InboxQuery;
    return { notes: body.inbox.notes, next: body.inbox.next };
  }

  /** Marks a note read (sent on the open connection; false when not connected). */
  ackNote(id: string): boolean {
    return this.send({ op: 'ack', note: id });
  }

  /** Closes the connection and removes every listener and timer the client added. */
  close(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    this.stopped = true;
    this.timers.forEach((t) => clearTimeout(t.id));
    this.timers.clear();
    if (this.o.visibility) this.o.visibility.removeEventListener('visibilitychange', this.onVisible);
    const ws = this.ws;
    this.ws = undefined;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try {
        ws.close(1000, 'client closed');
      } catch (_) {
        /* closing an unopened socket */
      }
    }
    this.setState('closed');
    this.listeners = {};
    this.waiters = {};
    return Promise.resolve();
  }

  // --- internals ---------------------------------------------------------

  private emit<K extends keyof Events>(name: K, v: Events[K]): void {
    const l = this.listeners[name] as Array<(v: Events[K]) => void> | undefined;
    if (l) for (const fn of l.slice()) fn(v);
  }

  private setState(s: State): void {
    if (this.st !== s) {
      this.st = s;
      this.emit('state', s);
    }
  }

  /** A timer with an absolute deadline: overdue ones fire (jittered) when a hidden page wakes. */
  private after(name: string, ms: number, fn: () => void): void {
    if (this.stopped) return;
    this.cancel(name);
    const t: Timer = { at: this.o.now() + ms, fn, id: setTimeout(() => this.fire(name, t), Math.max(0, ms)) };
    this.timers.set(name, t);
  }

  private fire(name: string, t: Timer): void {
    if (this.timers.get(name) !== t) return;
    this.timers.delete(name);
    t.fn();
  }

  private cancel(name: string): void {
    const t = this.timers.get(name);
    if (t) {
      clearTimeout(t.id);
      this.timers.delete(name);
    }
  }

  private wake(): void {
    const vis = this.o.visibility;
    if (!vis || vis.visibilityState !== 'visible') return;
    const now = this.o.now();
    this.timers.forEach((t, name) => {
      if (t.at <= now) {
        // Throttled while hidden: fire soon, but not every device at once.
        clearTimeout(t.id);
        t.id = setTimeout(() => this.fire(name, t), this.o.random() * this.o.wakeJitterMs);
      }
    });
  }

  /**
   * The token held; a new one from getToken when there is none yet or it
   * expired. Concurrent callers share one getToken call (no refresh race).
   */
  private freshToken(): Promise<string | undefined> {
    if (!this.o.getToken || !this.tokenStale) return Promise.resolve(this.token);
    if (!this.tokenWait) {
      const get = this.o.getToken;
      this.tokenWait = Promise.resolve()
        .then(() => get())
        .then(
          (tok) => {
            this.token = tok;
            this.tokenStale = false;
            this.tokenWait = undefined;
            return tok;
          },
          (err) => {
            this.tokenWait = undefined;
            throw err;
          },
        );
    }
    return this.tokenWait;
  }

  private send(frame: object): boolean {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    this.setState('connecting');
    let token: string | undefined;
    try {
      token = await this.freshToken();
    } catch (err) {
      this.emit('error', { code: 'token', message: 'getToken failed: ' + String(err) });
      this.reconnectLater();
      return;
    }
    if (this.stopped) return;
    let base = this.o.proxies[this.urlIdx];
    if (this.redirect) {
      base = this.redirect;
      this.redirect = '';
    }
    const q: string[] = [];
    const add = (k: string, v: string | undefined) => v && q.push(k + '=' + encodeURIComponent(v));
    add('device', this.o.device);
    add('platform', this.o.platform);
    add('segment', this.o.segment);
    add('token', token); // browsers cannot set headers on an upgrade (docs/sdk-js.md: access logs)
    this.wsURL = base;
    const url = base + (q.length ? (base.indexOf('?') >= 0 ? '&' : '?') + q.join('&') : '');
    let ws: WebSocketLike;
    try {
      ws = new this.o.WebSocket(url);
    } catch (err) {
      this.emit('error', { code: 'connect', message: String(err) });
      this.reconnectLater();
      return;
    }
    this.ws = ws;
    this.hint = undefined;
    this.after('connect-timeout', this.o.connectTimeoutMs, () => {
      if (this.ws === ws && ws.readyState !== 1) {
        this.ws = undefined;
        ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
        try {
          ws.close();
        } catch (_) {
          /* not open */
        }
        this.emit('error', { code: 'connect_timeout', message: 'no connection within ' + this.o.connectTimeoutMs + ' ms' });
        this.onClose(1006, '');
      }
    });
    ws.onopen = () => {
      this.cancel('connect-timeout');
      this.attempt = 0; // an established connection resets the backoff (as the Go client)
      this.everConnected = true;
      this.setState('connected');
      this.subscribe();
      if (this.o.notes === undefined ? !!this.o.getToken : this.o.notes) this.send({ op: 'inbox', after: this.resume });
      this.maybeReady();
    };
    ws.onmessage = (ev) => this.onFrame(String(ev.data));
    ws.onerror = () => {
      // After open a close event follows; before it some runtimes (Node 20's
      // WebSocket on a refused upgrade) fire no close at all: fail it here.
      if (this.ws !== ws || ws.readyState === 1) return;
      this.cancel('connect-timeout');
      this.ws = undefined;
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      this.onClose(1006, '');
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.cancel('connect-timeout');
      this.ws = undefined;
      this.onClose(ev.code, ev.reason);
    };
  }

  /** Subscribes with the versions held, at most 16 events a frame (the proxy's bound). */
  private subscribe(): void {
    const names = Object.keys(this.held);
    for (let i = 0; i < names.length; i += SUB_BATCH) {
      const events: Record<string, number> = {};
      for (const e of names.slice(i, i + SUB_BATCH)) events[e] = this.held[e];
      this.send({ op: 'sub', events });
    }
  }

  private onClose(code: number, reason: string): void {
    if (this.stopped) return;
    this.setState('disconnected');
    if (code === 1013) {
      // A refused upgrade, made visible to browsers: "retry after N ms: why".
      const m = /^retry after (\d+) ms/.exec(reason || '');
      if (m) this.hint = Number(m[1]);
    }
    if (code === 4003 || code === 4500) this.tokenStale = true;
    if (code === 4003) {
      this.emit('error', { code: 'token_expired', message: 'the device token expired; getting a new one' });
      this.hint = this.o.random() * this.o.backoffBaseMs;
    }
    if (code === 4500) this.emit('error', { code: 'unauthorized', message: 'the device token was refused' });
    if (code === 4500 && !this.o.getToken) {
      this.stopped = true;
      this.setState('closed');
      return;
    }
    this.reconnectLater();
  }

  private reconnectLater(): void {
    let d: number;
    if (this.hint !== undefined) {
      d = this.hint;
    } else {
      d = backoff(this.attempt, this.o.backoffBaseMs, this.o.backoffCapMs, this.o.random());
      this.attempt++;
    }
    this.hint = undefined;
    this.urlIdx = (this.urlIdx + 1) % this.o.proxies.length;
    this.after('reconnect', d, () => this.connect());
  }

  private maybeReady(): void {
    if (this.everConnected && this.prefetched >= this.o.events.length) this.readyDone();
  }

  private onFrame(raw: string): void {
    let f: { [k: string]: unknown };
    try {
      f = JSON.parse(raw);
    } catch (_) {
      return;
    }
    switch (f.op) {
      case 'stage':
        this.onStage(f as unknown as { event: string; key: string; v: number; ts: number; d?: string });
        break;
      case 'reconnect':
        if (typeof f.after_ms === 'number') this.hint = f.after_ms;
        if (typeof f.to === 'string' && f.to && redirectAllowed(this.wsURL, f.to, this.o.proxies, this.o.redirectHosts)) {
          this.redirect = f.to;
        }
        break;
      case 'note':
        this.onNote(f as unknown as Note);
        break;
      case 'error': {
        const e = { code: String(f.code), message: String(f.msg || ''), event: f.event ? String(f.event) : undefined };
        this.emit('error', e);
        if (e.event && e.event in this.held && RESUB_CODES.indexOf(e.code) >= 0) {
          const half = this.o.resubDelayMs / 2;
          this.after('resub', half + this.o.random() * half, () => this.subscribe());
        }
        break;
      }
    }
  }

  private onStage(f: { event: string; key: string; v: number; ts: number; d?: string }): void {
    if (!(f.event in this.held) || !(f.v > this.held[f.event])) return;
    this.held[f.event] = f.v;
    const m = this.maps[f.event];
    const s: Stage = { event: f.event, key: f.key, v: f.v, ts: f.ts, payload: m ? m.payloads[f.key] : undefined };
    this.current[f.event] = s;
    if (f.d !== undefined) this.want[f.event] = f.d;
    else delete this.want[f.event];
    if (this.o.graphql) {
      const has = !!m && f.key in m.payloads;
      if (f.d !== undefined && (!has || m.digests[f.key] !== f.d)) {
        // A payload changed (or is new): refetch once, in this device's slot.
        const slot = refetchDelay(this.o.device || '', this.o.refetchWindowMs, this.o.refetchSlots);
        if (!this.timers.has('refetch:' + f.event)) this.after('refetch:' + f.event, slot, () => this.prefetch(f.event));
      } else if (!has && !this.timers.has('refetch:' + f.event)) {
        this.after('refetch:' + f.event, this.o.random() * this.o.missDelayMaxMs, () => this.prefetch(f.event));
      }
    }
    this.show(s);
    if (this.o.ackStages) this.send({ op: 'ack', event: f.event, v: f.v });
  }

  private show(s: Stage): void {
    this.emit('stage', s);
    const w = this.waiters[s.event];
    if (w) {
      delete this.waiters[s.event];
      for (const fn of w) fn(s);
    }
  }

  private onNote(n: Note): void {
    if (n.resume) this.resume = n.resume;
    if (this.seenSet[n.id]) return; // at-least-once: a duplicate carries the same cursor
    this.seenSet[n.id] = true;
    this.seen.push(n.id);
    if (this.seen.length > SEEN_NOTES) delete this.seenSet[this.seen.shift() as string];
    this.emit('note', n);
    if (this.o.ackNotes) this.send({ op: 'ack', note: n.id });
  }

  private async graphql(query: string, variables: object, token: string | undefined): Promise<unknown> {
    const headers: Record<string, string> = { 'Content-Type': 'application/json' };
    if (token) headers.Authorization = 'Bearer ' + token;
    const resp = await this.o.fetch(this.o.graphql as string, { method: 'POST', headers, body: JSON.stringify({ query, variables }) });
    const body = (await resp.json()) as { data?: { [k: string]: unknown }; errors?: Array<{ message: string; extensions?: { code?: string } }> };
    if (body.errors && body.errors.length) {
      const e = body.errors[0];
      const err = new Error((e.extensions && e.extensions.code ? e.extensions.code + ': ' : '') + e.message) as Error & { code?: string };
      err.code = e.extensions && e.extensions.code;
      throw err;
    }
    if (!body.data) throw new Error('stagecast: HTTP ' + resp.status + ' without data');
    return body.data;
  }

  private async prefetch(event: string): Promise<void> {
    if (!this.o.graphql || this.stopped) return;
    const first = !(event in this.maps) && !(event in this.fetchAttempt);
    try {
      const data = (await this.graphql(PREFETCH_QUERY, { event, segment: this.o.segment || null }, await this.freshToken())) as PrefetchQuery;
      const le = data.liveEvent;
      if (!le) throw new Error('NOT_FOUND: no such event');
      const m = { payloads: {} as Record<string, unknown>, digests: {} as Record<string, string> };
      for (const s of le.stages) {
        m.payloads[s.key] = s.payload;
        if (s.digest) m.digests[s.key] = s.digest;
      }
      const old = this.maps[event];
      this.maps[event] = m;
      this.fetchAttempt[event] = 0;
      const cur = this.current[event];
      // The stage shown gets its payload: it had none, or its digest changed.
      if (cur && cur.key in m.payloads && (cur.payload === undefined || !old || old.digests[cur.key] !== m.digests[cur.key])) {
        const s = { ...cur, payload: m.payloads[cur.key] };
        this.current[event] = s;
        this.show(s);
      }
      if (le.current && le.current.v > this.held[event]) {
        this.held[event] = le.current.v;
        const s: Stage = { event, key: le.current.key, v: le.current.v, ts: le.current.ts, payload: m.payloads[le.current.key] };
        this.current[event] = s;
        this.show(s);
      }
      const want = this.want[event];
      if (cur && want !== undefined && m.digests[cur.key] !== want) {
        // A cache on the way still had the old payload: try again soon (jittered).
        this.after('refetch:' + event, (0.5 + this.o.random() / 2) * this.o.missDelayMaxMs, () => this.prefetch(event));
      }
      // The server jitters the hint: refresh then, serving what is held meanwhile.
      this.after('prefetch:' + event, Math.max(1, le.refreshAfterSeconds) * 1000, () => this.prefetch(event));
    } catch (err) {
      const k = this.fetchAttempt[event] || 0;
      this.fetchAttempt[event] = k + 1;
      this.emit('error', { code: (err as { code?: string }).code || 'prefetch', message: String((err as Error).message || err), event });
      this.after('prefetch:' + event, backoff(k, this.o.prefetchBackoffBaseMs, this.o.prefetchBackoffCapMs, this.o.random()), () =>
        this.prefetch(event),
      );
    }
    if (first) {
      this.prefetched++;
      this.maybeReady();
    }
  }
}

/** Creates a client and starts it: prefetch, connect, follow the events. */
export function createClient(opts: ClientOptions): StagecastClient {
  return new StagecastClient(opts);
}
