/**
 * The console's views, one per URL hash, so that each can be bookmarked and the back
 * button works: `#/devices/ID` (a device), `#/jobs`, `#/jobs/ID` (a job), `#/admin/devices`,
 * `#/admin/audit?device=ID`.
 */

export type Route =
  | { view: 'console'; device: string | null }
  | { view: 'jobs'; job: string | null }
  | { view: 'admin-devices' }
  | { view: 'audit'; device: string | null };

export function parseRoute(hash: string): Route {
  if (hash === '#/admin/devices') return { view: 'admin-devices' };
  if (hash === '#/jobs' || hash === '#/jobs/') return { view: 'jobs', job: null };
  const job = /^#\/jobs\/(.+)$/.exec(hash);
  if (job?.[1]) {
    const id = safeDecode(job[1]);
    if (id) return { view: 'jobs', job: id };
  }
  const audit = /^#\/admin\/audit(?:\?(.*))?$/.exec(hash);
  if (audit) return { view: 'audit', device: new URLSearchParams(audit[1] ?? '').get('device') || null };
  const device = /^#\/devices\/(.+)$/.exec(hash);
  return { view: 'console', device: device?.[1] ? safeDecode(device[1]) : null };
}

export const links = {
  console: '#/',
  device: (id: string) => `#/devices/${encodeURIComponent(id)}`,
  jobs: '#/jobs',
  job: (id: string) => `#/jobs/${encodeURIComponent(id)}`,
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
