/**
 * `rhizosphere state get|set …`: a device's desired and reported state over the SDK
 * (docs/protocol.md "Desired state"). `set` takes `key=value` words: a value that reads as JSON
 * is that (`n=5`, `on=true`, `debug=null` removes the key, `cfg={"a":1}`), anything else a
 * string (`fw=1.2.3`).
 */
import type { DeviceState, HubClient, JsonValue } from '../client/index.js';
import { STATE_KEY_PATTERN } from '../protocol/state.js';

export class StateUsageError extends Error {}

interface Io {
  out: (text: string) => void;
}

/** `key=value` words as a patch. */
export function parseAssignments(words: readonly string[]): Record<string, JsonValue> {
  if (words.length === 0) throw new StateUsageError('state set: say what to set: rhizosphere state set DEVICE key=value ... (key=null removes a key)');
  const patch: Record<string, JsonValue> = {};
  for (const word of words) {
    const eq = word.indexOf('=');
    if (eq <= 0) throw new StateUsageError(`state set: "${word}" is not key=value`);
    const key = word.slice(0, eq);
    if (!STATE_KEY_PATTERN.test(key)) throw new StateUsageError(`state set: key "${key}" must be 1 to 64 of A-Z a-z 0-9 _ -`);
    const text = word.slice(eq + 1);
    let value: JsonValue;
    try {
      value = JSON.parse(text) as JsonValue;
    } catch {
      value = text;
    }
    patch[key] = value;
  }
  return patch;
}

export async function stateGetCommand(hub: HubClient, device: string, json: boolean, io: Io): Promise<number> {
  printState(await hub.device(device).state(), json, io);
  return 0;
}

export async function stateSetCommand(hub: HubClient, device: string, patch: Record<string, JsonValue>, replace: boolean, json: boolean, io: Io): Promise<number> {
  printState(await hub.device(device).setDesired(patch, { replace }), json, io);
  return 0;
}

const show = (value: JsonValue | undefined) => (value === undefined ? '-' : JSON.stringify(value));

function printState(view: DeviceState, json: boolean, io: Io): void {
  if (json) {
    io.out(`${JSON.stringify(view)}\n`);
    return;
  }
  const { desired, reported, delta } = view;
  io.out(`${view.device}: desired version ${desired.version}${desired.updatedAt ? ` (${desired.updatedAt}${desired.updatedBy ? ` by ${desired.updatedBy}` : ''})` : ''}, reported version ${reported.version}${reported.updatedAt ? ` (${reported.updatedAt})` : ''}\n`);
  const keys = [...new Set([...Object.keys(desired.state), ...Object.keys(reported.state)])].sort();
  if (keys.length > 0) {
    const rows = keys.map((key) => [key, show(desired.state[key]), show(reported.state[key]), Object.hasOwn(delta.state, key) ? '*' : '']);
    const headers = ['KEY', 'DESIRED', 'REPORTED', 'DELTA'];
    const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
    for (const cells of [headers, ...rows]) io.out(`${cells.map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ').trimEnd()}\n`);
  }
  const pending = Object.keys(delta.state).sort();
  io.out(pending.length > 0 ? `delta: ${pending.join(', ')} (not reported yet)\n` : 'in step: the device reported every desired value\n');
  if (reported.error) io.out(`the device could not apply desired version ${reported.error.version ?? '?'}: ${reported.error.message} (${reported.error.at})\n`);
}
