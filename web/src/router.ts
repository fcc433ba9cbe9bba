/**
 * The console's views, one per URL hash, so that each can be bookmarked and the back
 * button works: `#/devices/ID` (a device), `#/devices/ID/terminal`, `…/files` and
 * `…/recordings` (its remote-access tabs), `…/health` (its health charts), `#/health` (the
 * fleet's health), `#/jobs`, `#/jobs/ID` (a job), `#/alerts`, `#/recordings`,
 * `#/recordings/TUNNEL` (the player), `#/admin/devices`, `#/admin/audit?device=ID`.
 */

/** The tabs of a device's page: commands, terminals, file transfers, its recordings, its health. */
export const DEVICE_TABS = ['commands', 'terminal', 'files', 'recordings', 'health', 'state'] as const;
export type DeviceTab = (typeof DEVICE_TABS)[number];

export type Route =
  | { view: 'console'; device: string | null; tab: DeviceTab }
  | { view: 'jobs'; job: string | null }
  | { view: 'health' }
  | { view: 'alerts' }
  | { view: 'recordings'; tunnel: string | null }
  | { view: 'admin-devices' }
  | { view: 'audit'; device: string | null };

export function parseRoute(hash: string): Route {
  if (hash === '#/admin/devices') return { view: 'admin-devices' };
  if (hash === '#/health' || hash === '#/health/') return { view: 'health' };
  if (hash === '#/alerts' || hash === '#/alerts/') return { view: 'alerts' };
  if (hash === '#/jobs' || hash === '#/jobs/') return { view: 'jobs', job: null };
  const job = /^#\/jobs\/(.+)$/.exec(hash);
  if (job?.[1]) {
    const id = safeDecode(job[1]);
    if (id) return { view: 'jobs', job: id };
  }
  if (hash === '#/recordings' || hash === '#/recordings/') return { view: 'recordings', tunnel: null };
  const recording = /^#\/recordings\/(.+)$/.exec(hash);
  if (recording?.[1]) {
    const tunnel = safeDecode(recording[1]);
    if (tunnel) return { view: 'recordings', tunnel };
  }
  const audit = /^#\/admin\/audit(?:\?(.*))?$/.exec(hash);
  if (audit) return { view: 'audit', device: new URLSearchParams(audit[1] ?? '').get('device') || null };
  // Device ids have no '/': a last segment that names a tab is the tab.
  const tabbed = /^#\/devices\/([^/]+)\/([a-z]+)$/.exec(hash);
  const tab = DEVICE_TABS.find((name) => name === tabbed?.[2]);
  if (tabbed?.[1] && tab) return { view: 'console', device: safeDecode(tabbed[1]), tab };
  const device = /^#\/devices\/(.+)$/.exec(hash);
  return { view: 'console', device: device?.[1] ? safeDecode(device[1]) : null, tab: 'commands' };
}

export const links = {
  console: '#/',
  device: (id: string, tab: DeviceTab = 'commands') => `#/devices/${encodeURIComponent(id)}${tab === 'commands' ? '' : `/${tab}`}`,
  jobs: '#/jobs',
  health: '#/health',
  alerts: '#/alerts',
  job: (id: string) => `#/jobs/${encodeURIComponent(id)}`,
  recordings: '#/recordings',
  recording: (tunnel: string) => `#/recordings/${encodeURIComponent(tunnel)}`,
  adminDevices: '#/admin/devices',
  audit: (device?: string) => (device ? `#/admin/audit?${new URLSearchParams({ device }).toString()}` : '#/admin/audit'),
};

function safeDecode(text: string): string | null {
  try {
    return decodeURIComponent(text);
  } catch {
    return null;
  }
}
