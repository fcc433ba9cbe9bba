/** Where hypha's default device id comes from, with /proc/cpuinfo and /etc/machine-id played by temp files. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { afterAll, describe, expect, it } from 'vitest';
import { defaultDeviceId, readCpuSerial, readMachineId, resolveDeviceId } from '../src/hypha/identity.js';

const scratch = mkdtempSync(join(tmpdir(), 'hypha-identity-'));
const missing = join(scratch, 'does-not-exist');
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const path = join(scratch, name);
  writeFileSync(path, text);
  return path;
}

const piCpuinfo = (serial: string) =>
  [
    'processor\t: 0',
    'BogoMIPS\t: 108.00',
    'Features\t: fp asimd evtstrm crc32 cpuid',
    '',
    'Hardware\t: BCM2835',
    'Revision\t: c03111',
    `Serial\t\t: ${serial}`,
    'Model\t\t: Raspberry Pi 4 Model B Rev 1.1',
    '',
  ].join('\n');

const x86Cpuinfo = ['processor\t: 0', 'vendor_id\t: GenuineIntel', 'model name\t: Some CPU', 'serial_number_like\t: 1234', ''].join('\n');

describe('readCpuSerial', () => {
  it('reads the Raspberry Pi serial', () => {
    expect(readCpuSerial(file('pi', piCpuinfo('00000000abcd1234')))).toBe('00000000abcd1234');
  });

  it('skips an all-zero serial, a cpuinfo without one, and a missing file', () => {
    expect(readCpuSerial(file('zero', piCpuinfo('0000000000000000')))).toBeNull();
    expect(readCpuSerial(file('x86', x86Cpuinfo))).toBeNull();
    expect(readCpuSerial(missing)).toBeNull();
  });
});

describe('readMachineId', () => {
  it('trims the file and treats an empty one as absent', () => {
    expect(readMachineId(file('mid', '4c4c4544004b3510804cb7c04f4e3132\n'))).toBe('4c4c4544004b3510804cb7c04f4e3132');
    expect(readMachineId(file('empty-mid', '\n'))).toBeNull();
    expect(readMachineId(missing)).toBeNull();
  });
});

describe('defaultDeviceId', () => {
  const machineIdPath = () => file('machine-id', ' 0123456789abcdef0123456789abcdef \n');

  it('prefers the cpuinfo serial', () => {
    const identity = defaultDeviceId({ cpuinfoPath: file('pi2', piCpuinfo('10000000feedbeef')), machineIdPath: machineIdPath() });
    expect(identity).toEqual({ id: '10000000feedbeef', source: 'cpuinfo serial' });
  });

  it('falls back to the machine id when the serial is all zeros or absent', () => {
    const expected = { id: '0123456789abcdef0123456789abcdef', source: 'machine-id' };
    expect(defaultDeviceId({ cpuinfoPath: file('zero2', piCpuinfo('0000000000000000')), machineIdPath: machineIdPath() })).toEqual(expected);
    expect(defaultDeviceId({ cpuinfoPath: file('x86-2', x86Cpuinfo), machineIdPath: machineIdPath() })).toEqual(expected);
  });

  it('falls back to the hostname when neither file helps', () => {
    expect(defaultDeviceId({ cpuinfoPath: missing, machineIdPath: file('empty2', '') })).toEqual({ id: hostname(), source: 'hostname' });
    expect(defaultDeviceId({ cpuinfoPath: missing, machineIdPath: missing, hostname: () => 'pi-kitchen' })).toEqual({
      id: 'pi-kitchen',
      source: 'hostname',
    });
  });
});

describe('resolveDeviceId', () => {
  it('uses an explicit id and says where it came from', () => {
    expect(resolveDeviceId('pi-01')).toEqual({ id: 'pi-01', source: 'flag' });
    expect(resolveDeviceId('pi-02', 'env')).toEqual({ id: 'pi-02', source: 'env' });
  });

  it('refuses an invalid id clearly, pointing at --id when the id was found rather than given', () => {
    expect(() => resolveDeviceId('a/b')).toThrow('device id "a/b" (from flag) may contain only A-Z a-z 0-9 . _ : -');
    expect(() => resolveDeviceId(undefined, 'flag', { cpuinfoPath: missing, machineIdPath: missing, hostname: () => 'my host' })).toThrow(
      'device id "my host" (from hostname) may contain only A-Z a-z 0-9 . _ : -; pass a valid one with --id',
    );
  });
});
