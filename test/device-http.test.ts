/**
 * A device's web page through the hub: `/api/devices/{id}/http/{port}/…` over a tcp tunnel to
 * a real hypha, as an operator's browser would fetch it; refusals with codes; the audit trail.
 */
import { createServer } from 'node:http';
import { describe, expect, it } from 'vitest';
import { cleanup, startAgents, startTestHub } from './helpers.js';

describe('a device\'s web page through the hub', () => {
  it('serves it sandboxed, without the hub\'s credentials, in the caller\'s name; refuses viewers, bad ports and dead services', async () => {
    const hub = await startTestHub({ allowAnonymous: false });
    const token = hub.stores.devices.add('pi-01');
    hub.stores.devices.add('pi-02');
    await startAgents(hub, ['pi-01'], hub.urls.mqtt, ['--token', token]);
    const operator = { authorization: `Bearer ${hub.stores.tokens.add('ops', 'operator')}` };
    const viewer = { authorization: `Bearer ${hub.stores.tokens.add('dash', 'viewer')}` };

    // The device's own web interface (here, on this machine: the agent's localhost).
    const web = createServer((req, res) => {
      if (req.url === '/old') return res.writeHead(302, { location: '/new' }).end();
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        res.setHeader('set-cookie', 'device=1');
        res.end(JSON.stringify({ method: req.method, url: req.url, host: req.headers.host, cookie: req.headers.cookie ?? null, authorization: req.headers.authorization ?? null, body }));
      });
    });
    await new Promise<void>((resolve) => web.listen(0, '127.0.0.1', resolve));
    cleanup(() => web.close());
    const port = (web.address() as { port: number }).port;
    const base = `${hub.urls.http}/api/devices/pi-01/http/${port}`;

    const page = await fetch(`${base}/status/page?x=1`, { headers: { ...operator, cookie: 'rhizosphere_session=secret' } });
    expect(page.status).toBe(200);
    expect(page.headers.get('content-security-policy')).toMatch(/^sandbox /);
    expect(page.headers.get('content-security-policy')).not.toContain('allow-same-origin');
    expect(page.headers.get('set-cookie')).toBeNull();
    expect(await page.json()).toEqual({ method: 'GET', url: '/status/page?x=1', host: `localhost:${port}`, cookie: null, authorization: null, body: '' });

    const posted = await fetch(`${base}/form`, { method: 'POST', headers: operator, body: 'a=1&b=2' });
    expect(await posted.json()).toMatchObject({ method: 'POST', url: '/form', body: 'a=1&b=2' });
    const redirect = await fetch(`${base}/old`, { headers: operator, redirect: 'manual' });
    expect(redirect.status).toBe(302);
    expect(redirect.headers.get('location')).toBe(`/api/devices/pi-01/http/${port}/new`);
    const bare = await fetch(base, { headers: operator, redirect: 'manual' });
    expect(bare.status).toBe(308);
    expect(bare.headers.get('location')).toBe(`/api/devices/pi-01/http/${port}/`);
    // Several at once, each its own tunnel.
    const many = await Promise.all(Array.from({ length: 8 }, (_, i) => fetch(`${base}/n${i}`, { headers: operator }).then((r) => r.json() as Promise<{ url: string }>)));
    expect(many.map((m) => m.url)).toEqual(Array.from({ length: 8 }, (_, i) => `/n${i}`));

    const refusal = async (url: string, headers: Record<string, string>) => {
      const answer = await fetch(url, { headers });
      return [answer.status, ((await answer.json()) as { code: string }).code];
    };
    expect(await refusal(`${base}/`, viewer)).toEqual([403, 'FORBIDDEN']);
    expect(await refusal(`${base}/`, {})).toEqual([401, 'FORBIDDEN']);
    expect(await refusal(`${hub.urls.http}/api/devices/pi-01/http/0/`, operator)).toEqual([400, 'BAD_REQUEST']);
    expect(await refusal(`${hub.urls.http}/api/devices/pi-01/http/http/`, operator)).toEqual([400, 'BAD_REQUEST']);
    expect(await refusal(`${hub.urls.http}/api/devices/pi-02/http/80/`, operator)).toEqual([409, 'DEVICE_OFFLINE']);
    expect(await refusal(`${hub.urls.http}/api/devices/nobody/http/80/`, operator)).toEqual([404, 'UNKNOWN_DEVICE']);
    expect(await refusal(`${hub.urls.http}/api/devices/a%2Fb/http/80/`, operator)).toEqual([400, 'BAD_REQUEST']);
    const closed = await new Promise<number>((resolve) => {
      const probe = createServer();
      probe.listen(0, '127.0.0.1', () => {
        const free = (probe.address() as { port: number }).port;
        probe.close(() => resolve(free));
      });
    });
    expect(await refusal(`${hub.urls.http}/api/devices/pi-01/http/${closed}/`, operator)).toEqual([502, 'CONNECT_FAILED']);

    const opens = hub.stores.audit.query({ device: 'pi-01', action: 'tunnel.open', limit: 100 });
    expect(opens).toHaveLength(11);
    expect(opens.every((entry) => entry.actor === 'ops' && (entry.detail as { kind: string; port: number }).kind === 'tcp')).toBe(true);
    // The hub serves on.
    expect((await fetch(`${hub.urls.http}/healthz`)).status).toBe(200);
  }, 60_000);
});
