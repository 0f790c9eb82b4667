// The docs/sdk-js.md example: a home screen that follows one event. Checked by
// `npm run check` (tsc --noEmit) against the published typings.
import { createClient, type Stage } from 'stagecast-client';

declare function renderRows(rows: string[]): void;
declare function showToast(text: string): void;
declare function mintDeviceToken(): Promise<string>; // your backend signs device tokens

const client = createClient({
  proxies: ['wss://edge.example.com/v1/ws'],
  graphql: 'https://prefetch.example.com/graphql',
  events: ['fight-2026-11-15'],
  platform: 'tv',
  getToken: mintDeviceToken,
});

client.on('stage', (s: Stage) => {
  const payload = s.payload as { rows?: string[] } | undefined;
  renderRows(payload && payload.rows ? payload.rows : []); // the map held: no request at the peak
});
client.on('note', (n) => showToast(n.type));
client.on('state', (state) => console.log('connection', state));
client.on('error', (e) => console.warn(e.code, e.message));

async function main(): Promise<void> {
  await client.ready();
  const now = await client.stage('fight-2026-11-15');
  console.log('now showing', now.key, now.v);
  const inbox = await client.pullInbox();
  inbox.notes.forEach((n) => client.ackNote(n.id));
}
void main();
window.addEventListener('pagehide', () => void client.close()); // removes every listener and timer
