/**
 * Software deployment (docs/protocol.md "Software deployment"): a real tarball uploaded once by
 * the real CLI, copied by the hub to 20 real hypha agents over file tunnels, unpacked and
 * installed there, the one failing install rolled back; and the bad input refused.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { Hub } from '../src/index.js';
import { startAgents, startTestHub, tempDir, runCli as cli } from './helpers.js';


async function api(hub: Hub, method: string, path: string, body?: unknown, raw?: Buffer) {
  const res = await fetch(`${hub.urls.http}${path}`, {
    method,
    headers: { 'content-type': raw ? 'application/octet-stream' : 'application/json' },
    body: raw ? new Uint8Array(raw) : body === undefined ? undefined : JSON.stringify(body),
  });
  return { status: res.status, body: (await res.json()) as any };
}

/** A package as a vendor would ship one: a tarball with an install and a rollback script. */
function makePackage(dir: string): string {
  const source = join(dir, 'src');
  mkdirSync(source);
  writeFileSync(
    join(source, 'install.sh'),
    ['#!/bin/sh', 'if [ "$RHIZOSPHERE_DEVICE" = dep-07 ]; then echo "disk full" >&2; exit 3; fi', 'echo "v2 from $(basename "$RHIZOSPHERE_ARTIFACT")" > "installed-$RHIZOSPHERE_DEVICE"', 'echo "v2 on $RHIZOSPHERE_DEVICE"', ''].join('\n'),
  );
  writeFileSync(join(source, 'rollback.sh'), ['#!/bin/sh', 'echo back > "rolled-back-$RHIZOSPHERE_DEVICE"', ''].join('\n'));
  const file = join(dir, 'pkg.tar.gz');
  execFileSync('tar', ['czf', file, '-C', source, 'install.sh', 'rollback.sh']);
  return file;
}

describe('software deployment', () => {
  it('uploads a package once and installs it on 20 agents, rolling back the one that fails', async () => {
    const hub = await startTestHub();
    const ids = Array.from({ length: 20 }, (_, i) => `dep-${String(i).padStart(2, '0')}`);
    await startAgents(hub, ids);
    const work = tempDir('rhizo-deploy-');
    const pkg = makePackage(work);
    const dir = join(work, 'on-device');

    // One at a time: the agents share this machine's disk, and so the directory.
    const run = await cli(['deploy', '--url', hub.urls.ws, '--all', '--file', pkg, '--install', 'sh install.sh', '--rollback', 'sh rollback.sh', '--dir', dir, '--concurrency', '1']);
    expect(run.stderr).toContain('uploading pkg.tar.gz');
    expect(run.status).toBe(1);
    expect(run.stdout).toContain('20 devices: 19 succeeded, 1 failed');
    expect(run.stdout).toMatch(/dep-07\s+failed\s+3\s+install exited 3: disk full; rolled back/);
    expect(run.stdout).toMatch(/dep-00\s+succeeded\s+0\s+installed pkg\.tar\.gz: v2 on dep-00/);

    for (const id of ids) {
      if (id === 'dep-07') continue;
      expect(readFileSync(join(dir, `installed-${id}`), 'utf8')).toBe('v2 from pkg.tar.gz\n');
    }
    expect(existsSync(join(dir, 'installed-dep-07'))).toBe(false);
    expect(readFileSync(join(dir, 'rolled-back-dep-07'), 'utf8')).toBe('back\n');
    expect(readFileSync(join(dir, 'pkg.tar.gz')).equals(readFileSync(pkg))).toBe(true);

    // The package went to the hub once; each device got it from the hub, SHA-256 checked.
    const sha256 = createHash('sha256').update(readFileSync(pkg)).digest('hex');
    expect((await api(hub, 'GET', '/api/artifacts')).body).toEqual([expect.objectContaining({ sha256, name: 'pkg.tar.gz', size: readFileSync(pkg).length })]);
    expect(hub.stores.audit.query({ action: 'artifact.upload' })).toHaveLength(1);
    const copies = hub.stores.audit.query({ action: 'tunnel.open' }).filter((e) => (e.detail as { kind?: string }).kind === 'file_put');
    expect(copies).toHaveLength(20);
    const [job] = hub.jobs.list(1);
    expect(job).toMatchObject({ order: 'deploy', cmd_str: 'sh install.sh', deploy: { artifact: sha256, install: 'sh install.sh', rollback: 'sh rollback.sh', dir } });
  }, 120_000);

  it('refuses bad deployments with a coded error', async () => {
    const hub = await startTestHub({ maxFileBytes: 1000 });
    const target = { tags: [] };
    const cases: [Record<string, unknown>, string][] = [
      [{ target, order: 'deploy', artifact: 'a'.repeat(64), install: 'true' }, `artifact ${'a'.repeat(64)} is not on the hub`],
      [{ target, order: 'deploy', artifact: 'a'.repeat(64) }, 'install is required'],
      [{ target, order: 'deploy', install: 'true' }, 'artifact is required'],
      [{ target, order: 'deploy', artifact: 'xyz', install: 'true' }, 'artifact must be the SHA-256'],
      [{ target, order: 'deploy', artifact: 'a'.repeat(64), install: 'true', dir: 'relative/dir' }, 'dir must be an absolute directory path'],
      [{ target, order: 'deploy', artifact: 'a'.repeat(64), install: 'true', dir: '/tmp/../etc' }, 'dir must not contain ..'],
      [{ target, order: 'deploy', artifact: 'a'.repeat(64), install: 'true', cmd_str: 'x' }, 'cmd_str is not a field of a deploy job'],
      [{ target, order: 'exec_bash', cmd_str: 'x', install: 'true' }, 'install is a field of deploy jobs only'],
    ];
    for (const [body, message] of cases) {
      const answer = await api(hub, 'POST', '/api/jobs', body);
      expect([JSON.stringify(body), answer.status, answer.body.code]).toEqual([JSON.stringify(body), 400, 'BAD_REQUEST']);
      expect(answer.body.message).toContain(message);
    }
    expect(await api(hub, 'POST', '/api/artifacts?name=../etc/passwd', undefined, Buffer.from('x'))).toMatchObject({ status: 400, body: { code: 'BAD_REQUEST', message: expect.stringContaining('name must be') } });
    expect(await api(hub, 'POST', '/api/artifacts?name=.hidden', undefined, Buffer.from('x'))).toMatchObject({ status: 400 });
    expect(await api(hub, 'POST', '/api/artifacts?name=empty.bin', undefined, Buffer.alloc(0))).toMatchObject({ status: 400, body: { message: 'the artifact is empty' } });
    expect(await api(hub, 'POST', '/api/artifacts?name=big.bin', undefined, Buffer.alloc(5000))).toMatchObject({ status: 413, body: { code: 'PAYLOAD_TOO_LARGE' } });
    const fine = await api(hub, 'POST', '/api/artifacts?name=small.bin', undefined, Buffer.from('hello'));
    expect(fine).toMatchObject({ status: 201, body: { name: 'small.bin', size: 5 } });
    expect((await api(hub, 'GET', '/api/artifacts')).body).toHaveLength(1);
    expect((await api(hub, 'DELETE', `/api/artifacts/${fine.body.sha256}`)).status).toBe(200);
    expect((await api(hub, 'DELETE', `/api/artifacts/${fine.body.sha256}`)).body).toMatchObject({ code: 'NOT_FOUND' });
    const missing = await cli(['deploy', '--url', hub.urls.ws, '--all', '--file', '/nonexistent/pkg.tar.gz', '--install', 'true']);
    expect(missing.status).toBe(2);
    expect(missing.stderr).toContain('--file /nonexistent/pkg.tar.gz: no such file');
  });
});
