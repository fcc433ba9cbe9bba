/** Pure protocol modules: id rules, topics, schemas. */
import { describe, expect, it } from 'vitest';
import { idProblem, isValidId } from '../src/protocol/ids.js';
import { RequestSchema, ResponseSchema, parsePayload, validate } from '../src/protocol/schemas.js';
import { Topics, topicPrefixProblem } from '../src/protocol/topics.js';

describe('ids', () => {
  it('accepts 1 to 128 characters of A-Z a-z 0-9 . _ : -', () => {
    for (const id of ['a', 'pi-01', 'B8:27:EB:00:11:22', 'x.y_z', '0'.repeat(128)]) expect(isValidId(id)).toBe(true);
  });
  it('refuses hostile ids with a reason', () => {
    expect(idProblem('')).toBe('must not be empty');
    expect(idProblem('x'.repeat(129))).toMatch(/at most 128/);
    for (const id of ['a/b', '+', '#', '$SYS', 'a b', 'é', 'a\u0000b']) expect(idProblem(id)).toMatch(/may contain only/);
    expect(idProblem(5)).toBe('must be a string');
  });
});

describe('topics', () => {
  const topics = new Topics('rhizosphere');
  it('builds the contract\'s topics', () => {
    expect(topics.deviceCommand('pi')).toBe('rhizosphere/devices/pi/command');
    expect(topics.deviceResponse('pi')).toBe('rhizosphere/devices/pi/response');
    expect(topics.deviceStatus('pi')).toBe('rhizosphere/devices/pi/status');
    expect(topics.clientRequest('c')).toBe('rhizosphere/clients/c/request');
    expect(topics.clientResponse('c')).toBe('rhizosphere/clients/c/response');
  });
  it('parses device and client topics, and nothing else', () => {
    expect(topics.parseDeviceTopic('rhizosphere/devices/pi/response')).toEqual({ id: 'pi', kind: 'response' });
    expect(topics.parseDeviceTopic('rhizosphere/devices/pi/telemetry/cpu/temp')).toEqual({ id: 'pi', kind: 'telemetry' });
    expect(topics.parseDeviceTopic('rhizosphere/devices/pi/other')).toBeNull();
    expect(topics.parseDeviceTopic('rhizosphere/devices/pi')).toBeNull();
    expect(topics.parseDeviceTopic('other/devices/pi/status')).toBeNull();
    expect(topics.parseClientTopic('rhizosphere/clients/c-1/request')).toEqual({ id: 'c-1', kind: 'request' });
    expect(topics.parseClientTopic('rhizosphere/clients/c-1/other')).toBeNull();
  });
  it('takes multi-level prefixes and refuses bad ones', () => {
    expect(new Topics('acme/fleet').deviceStatus('pi')).toBe('acme/fleet/devices/pi/status');
    for (const bad of ['', '$SYS', 'a/+', 'a/#', '/a', 'a/', 'a//b']) expect(topicPrefixProblem(bad)).not.toBeNull();
    expect(() => new Topics('a/#')).toThrow(/topic prefix/);
  });
});

describe('schemas', () => {
  const good = { type: 'command', id: 'c-1', device: 'pi', order: 'exec_bash', cmd_str: 'ls' };
  it('accepts a Request with or without timeout_ms and type', () => {
    expect(validate(RequestSchema, good)).toMatchObject({ ok: true });
    expect(validate(RequestSchema, { ...good, type: undefined, timeout_ms: 1000 })).toMatchObject({ ok: true });
  });
  it('names the first bad field', () => {
    expect(validate(RequestSchema, { ...good, order: 1 })).toEqual({ ok: false, field: 'order', message: expect.stringMatching(/^order must be one of/) });
    expect(validate(RequestSchema, { ...good, id: undefined })).toEqual({ ok: false, field: 'id', message: 'id is required' });
    expect(validate(RequestSchema, { ...good, timeout_ms: 1.5e3 + 0.5 })).toMatchObject({ field: 'timeout_ms' });
  });
  it('parses payloads that are not JSON objects as (body) errors', () => {
    expect(parsePayload(RequestSchema, '{')).toMatchObject({ ok: false, field: '(body)' });
    expect(parsePayload(RequestSchema, '"str"')).toMatchObject({ ok: false, field: '(body)' });
    expect(parsePayload(RequestSchema, Buffer.from(JSON.stringify(good)))).toMatchObject({ ok: true });
  });
  it('reads device Responses leniently but checks types', () => {
    expect(validate(ResponseSchema, { id: 'x' })).toMatchObject({ ok: true });
    expect(validate(ResponseSchema, { id: 'x', result: null, code: 'TIMEOUT' })).toMatchObject({ ok: true });
    expect(validate(ResponseSchema, { id: 'x', code: 'UNKNOWN_DEVICE' })).toMatchObject({ ok: false, field: 'code' });
    expect(validate(ResponseSchema, { id: 'x', exit_code: '0' })).toMatchObject({ ok: false, field: 'exit_code', message: 'exit_code must be number' });
    expect(validate(ResponseSchema, {})).toMatchObject({ ok: false, field: 'id', message: 'id is required' });
  });
});
