// The behaviour the SDK shares with the Go device client (internal/device,
// internal/wire): pure functions, pinned by sdk/testdata/vectors.json, which
// both test suites read. Times are milliseconds.

/** Defaults shared with the Go client (vectors.json "defaults"). */
export const defaults = {
  backoffBaseMs: 500,
  backoffCapMs: 30000,
  prefetchBackoffBaseMs: 1000,
  prefetchBackoffCapMs: 60000,
  refetchWindowMs: 30000,
  refetchSlots: 300,
  missDelayMaxMs: 5000,
  resubDelayMs: 10000,
} as const;

/** min(cap, base * 2^k): the upper end of reconnect attempt k's window. */
export function backoffWindow(k: number, baseMs: number, capMs: number): number {
  if (k < 0) k = 0;
  if (k > 40) return capMs;
  return Math.min(capMs, baseMs * Math.pow(2, k));
}

/** Full jitter: U(0, window) with u a uniform draw in [0, 1). */
export function backoff(k: number, baseMs: number, capMs: number, u: number): number {
  return u * backoffWindow(k, baseMs, capMs);
}

/** FNV-1a, 32 bits, over the UTF-8 bytes of s (as Go's hash/fnv). */
export function fnv32a(s: string): number {
  let h = 0x811c9dc5;
  const b = utf8(s);
  for (let i = 0; i < b.length; i++) {
    h ^= b[i];
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

function utf8(s: string): number[] {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c >= 0xd800 && c < 0xdc00 && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d < 0xe000) {
        c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i++;
      }
    }
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
  }
  return out;
}

/**
 * The device's refetch slot: a stage frame whose digest differs from the
 * payload held is refetched after this delay, fixed per device and uniform
 * over devices (wire.RefetchDelay): window * (fnv32a(device) mod slots) / slots.
 */
export function refetchDelay(device: string, windowMs: number, slots: number): number {
  if (slots <= 0 || windowMs <= 0) return 0;
  const slot = fnv32a(device) % slots;
  return Math.floor((windowMs * slot) / slots);
}

function parseURL(s: string): { scheme: string; host: string; user: boolean } | undefined {
  const m = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\/([^/?#]*)/.exec(s);
  if (!m) return undefined;
  let auth = m[2];
  const at = auth.lastIndexOf('@');
  const user = at >= 0;
  if (user) auth = auth.slice(at + 1);
  let host = auth;
  if (host.charAt(0) === '[') host = host.slice(1, host.indexOf(']'));
  else if (host.indexOf(':') >= 0) host = host.slice(0, host.lastIndexOf(':'));
  return { scheme: m[1].toLowerCase(), host: host.toLowerCase(), user };
}

/** path.Match for host patterns: '*' matches within one label run, '?' one character. */
function hostMatch(pattern: string, host: string): boolean {
  const re = new RegExp(
    '^' + pattern.toLowerCase().replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]') + '$',
  );
  return re.test(host);
}

/**
 * Whether a device connected at current may follow a directed drain's "to"
 * (wire.RedirectAllowed): a ws/wss URL with a host and no credentials, never
 * wss -> ws, whose host is a configured proxy's host or a subdomain of one, or
 * (when allow is not empty) matches one of allow's patterns.
 */
export function redirectAllowed(current: string, to: string, configured: string[], allow?: string[]): boolean {
  const u = parseURL(to);
  if (!u || (u.scheme !== 'ws' && u.scheme !== 'wss') || !u.host || u.user) return false;
  const cur = parseURL(current);
  if (!cur || (cur.scheme === 'wss' && u.scheme !== 'wss')) return false;
  if (allow && allow.length > 0) return allow.some((p) => hostMatch(p, u.host));
  return configured.some((c) => {
    const cu = parseURL(c);
    return !!cu && !!cu.host && (u.host === cu.host || u.host.slice(-(cu.host.length + 1)) === '.' + cu.host);
  });
}
