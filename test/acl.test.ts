/** The topic rules as pure functions: every rule, allowed and denied. */
import { describe, expect, it } from 'vitest';
import { filterCovers, mayMatchUnder, mayPublish, maySubscribe } from '../src/auth/acl.js';
import type { Principal } from '../src/auth/roles.js';
import { Topics } from '../src/protocol/topics.js';

const topics = new Topics('rhizosphere');
const device: Principal = { kind: 'device', id: 'pi-01' };
const viewer: Principal = { kind: 'token', name: 'dash', role: 'viewer' };
const operator: Principal = { kind: 'user', name: 'olga', role: 'operator' };
const admin: Principal = { kind: 'user', name: 'ada', role: 'admin' };
const anonymous: Principal = { kind: 'anonymous', role: 'operator' };

describe('filter containment', () => {
  it('knows which filters a pattern covers', () => {
    expect(filterCovers('a/+/c', 'a/b/c')).toBe(true);
    expect(filterCovers('a/+/c', 'a/+/c')).toBe(true);
    expect(filterCovers('a/#', 'a/b/#')).toBe(true);
    expect(filterCovers('a/#', 'a')).toBe(true);
    expect(filterCovers('a/+/c', 'a/#')).toBe(false);
    expect(filterCovers('a/b/c', 'a/+/c')).toBe(false);
    expect(filterCovers('a/+', 'a/b/c')).toBe(false);
    expect(filterCovers('a/+/c', '#')).toBe(false);
  });
  it('knows which filters can reach under a prefix', () => {
    expect(mayMatchUnder('#', 'rhizosphere')).toBe(true);
    expect(mayMatchUnder('+/devices/x/command', 'rhizosphere')).toBe(true);
    expect(mayMatchUnder('rhizosphere/#', 'rhizosphere')).toBe(true);
    expect(mayMatchUnder('rhizosphere', 'rhizosphere')).toBe(false);
    expect(mayMatchUnder('sensors/#', 'rhizosphere')).toBe(false);
    expect(mayMatchUnder('$SYS/#', 'rhizosphere')).toBe(false);
    expect(mayMatchUnder('acme/+/x', 'acme/fleet')).toBe(true);
    expect(mayMatchUnder('acme/other/x', 'acme/fleet')).toBe(false);
  });
});

describe('devices', () => {
  it('publish only their own response and telemetry', () => {
    expect(mayPublish(device, 'pi-01', 'rhizosphere/devices/pi-01/response', topics).ok).toBe(true);
    expect(mayPublish(device, 'pi-01', 'rhizosphere/devices/pi-01/telemetry/cpu', topics).ok).toBe(true);
    for (const topic of [
      'rhizosphere/devices/pi-02/response',
      'rhizosphere/devices/pi-02/command',
      'rhizosphere/devices/pi-01/command',
      'rhizosphere/devices/pi-01/status',
      'rhizosphere/clients/pi-01/request',
      'anything/else',
    ]) {
      expect(mayPublish(device, 'pi-01', topic, topics).ok, topic).toBe(false);
    }
  });
  it('subscribe only to their own command topic', () => {
    expect(maySubscribe(device, 'pi-01', 'rhizosphere/devices/pi-01/command', topics).ok).toBe(true);
    for (const filter of ['#', 'rhizosphere/#', 'rhizosphere/devices/+/command', 'rhizosphere/devices/pi-02/command', 'rhizosphere/devices/pi-01/#', '$SYS/#']) {
      expect(maySubscribe(device, 'pi-01', filter, topics).ok, filter).toBe(false);
    }
  });
});

describe('people and tools', () => {
  it('let every role read statuses, telemetry, job status and its own replies', () => {
    for (const who of [viewer, operator, admin]) {
      for (const filter of ['rhizosphere/devices/+/status', 'rhizosphere/devices/pi-01/status', 'rhizosphere/devices/+/telemetry/#', 'rhizosphere/jobs/+/status', 'rhizosphere/clients/me/response']) {
        expect(maySubscribe(who, 'me', filter, topics).ok, `${who.kind} ${filter}`).toBe(true);
      }
    }
  });
  it('never let a viewer or operator read commands, responses or others\' replies', () => {
    for (const who of [viewer, operator]) {
      for (const filter of ['#', 'rhizosphere/#', 'rhizosphere/devices/+/command', 'rhizosphere/devices/+/response', 'rhizosphere/devices/+/+', 'rhizosphere/clients/other/response', 'rhizosphere/clients/+/response', '+/devices/pi-01/command']) {
        expect(maySubscribe(who, 'me', filter, topics).ok, `${who.role} ${filter}`).toBe(false);
      }
    }
  });
  it('let operators use topics outside the prefix; viewers none', () => {
    expect(maySubscribe(operator, 'me', 'sensors/#', topics).ok).toBe(true);
    expect(maySubscribe(viewer, 'me', 'sensors/#', topics).ok).toBe(false);
    expect(mayPublish(operator, 'me', 'sensors/x', topics).ok).toBe(true);
    expect(mayPublish(viewer, 'me', 'sensors/x', topics).ok).toBe(false);
  });
  it('let admins subscribe to anything', () => {
    expect(maySubscribe(admin, 'me', '#', topics).ok).toBe(true);
  });
  it('publish Requests (the bridge checks the role) and nothing inside the prefix', () => {
    for (const who of [viewer, operator, admin]) {
      expect(mayPublish(who, 'me', 'rhizosphere/clients/me/request', topics).ok).toBe(true);
      for (const topic of ['rhizosphere/devices/pi-01/command', 'rhizosphere/devices/pi-01/status', 'rhizosphere/clients/me/response', 'rhizosphere/devices/pi-01/response']) {
        expect(mayPublish(who, 'me', topic, topics).ok, `${who.kind} ${topic}`).toBe(false);
      }
    }
  });
});

describe('anonymous (development mode)', () => {
  it('keeps the hub-owned and other devices\' topics off limits', () => {
    expect(maySubscribe(anonymous, 'x', '#', topics).ok).toBe(true);
    expect(mayPublish(anonymous, 'x', 'rhizosphere/clients/x/request', topics).ok).toBe(true);
    expect(mayPublish(anonymous, 'x', 'rhizosphere/devices/x/response', topics).ok).toBe(true);
    expect(mayPublish(anonymous, 'x', 'rhizosphere/devices/y/response', topics).ok).toBe(false);
    expect(mayPublish(anonymous, 'x', 'rhizosphere/devices/x/status', topics).ok).toBe(false);
    expect(mayPublish(anonymous, 'x', 'rhizosphere/devices/y/command', topics).ok).toBe(false);
  });
});
