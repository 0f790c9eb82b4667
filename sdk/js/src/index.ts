/**
 * stagecast-client: the device SDK for web and TV apps. A client prefetches
 * each event's stage map through the GraphQL prefetch API, holds one WebSocket
 * to a proxy, and switches stages from the map it already holds when the
 * producer says so: no request at the peak. See docs/sdk-js.md.
 */
export { createClient, StagecastClient } from './client';
export type { ClientOptions, ClientError, Events, Note, Stage, State, VisibilitySource, WebSocketCtor, WebSocketLike } from './client';
export { backoff, backoffWindow, defaults, fnv32a, redirectAllowed, refetchDelay } from './rules';
