/**
 * Which device id hypha uses when none is given: the Raspberry Pi's serial number
 * (stable across reinstalls, printed on nothing but readable in /proc/cpuinfo, and what
 * the original agent used), else the systemd machine id, else the hostname.
 */
import { readFileSync } from 'node:fs';
import { hostname as osHostname } from 'node:os';
import { idProblem } from '../protocol/ids.js';

export const CPUINFO_PATH = '/proc/cpuinfo';
export const MACHINE_ID_PATH = '/etc/machine-id';

/** `flag` and `env` (HYPHA_ID) are ids the operator chose; the others are found on the machine. */
export type IdSource = 'flag' | 'env' | 'cpuinfo serial' | 'machine-id' | 'hostname';

export type ChosenIdSource = Extract<IdSource, 'flag' | 'env'>;

export interface DeviceIdentity {
  id: string;
  source: IdSource;
}

export interface IdentitySources {
  cpuinfoPath?: string;
  machineIdPath?: string;
  hostname?: () => string;
}

/** The `Serial : 00000000abcd1234` line of a Raspberry Pi; null when absent or all zeros (boards without a serial report zeros). */
export function readCpuSerial(path: string = CPUINFO_PATH): string | null {
  const text = readTextOrNull(path);
  if (text === null) return null;
  const match = /^Serial\s*:\s*([0-9A-Fa-f]+)\s*$/m.exec(text);
  const serial = match?.[1];
  if (!serial || /^0+$/.test(serial)) return null;
  return serial;
}

export function readMachineId(path: string = MACHINE_ID_PATH): string | null {
  const text = readTextOrNull(path);
  const id = text?.trim();
  return id ? id : null;
}

/** The first source that yields something; the hostname always does. */
export function defaultDeviceId(sources: IdentitySources = {}): DeviceIdentity {
  const serial = readCpuSerial(sources.cpuinfoPath);
  if (serial) return { id: serial, source: 'cpuinfo serial' };
  const machineId = readMachineId(sources.machineIdPath);
  if (machineId) return { id: machineId, source: 'machine-id' };
  return { id: (sources.hostname ?? osHostname)(), source: 'hostname' };
}

/**
 * The id given on the command line, else the default one; throws with a message that
 * names the id, where it came from and the way out when it is not a valid device id.
 */
export function resolveDeviceId(
  explicit: string | undefined,
  explicitSource: ChosenIdSource = 'flag',
  sources: IdentitySources = {},
): DeviceIdentity {
  const identity: DeviceIdentity = explicit !== undefined ? { id: explicit, source: explicitSource } : defaultDeviceId(sources);
  const problem = idProblem(identity.id);
  if (problem) {
    const chosen = identity.source === 'flag' || identity.source === 'env';
    const fix = chosen ? '' : '; pass a valid one with --id';
    throw new Error(`device id ${JSON.stringify(identity.id)} (from ${identity.source}) ${problem}${fix}`);
  }
  return identity;
}

function readTextOrNull(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null;
  }
}
