/**
 * Registers simulated devices (and an operator API token) straight in a hub's database, as
 * `rhizosphere device add` would, but all in one transaction. Run it before the hub starts on
 * that data dir.
 *
 * Usage: node dist/bench/register.js --data-dir DIR --count N [--id-prefix P] [--tag T] --out FILE.json
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { openStores } from '../src/store/stores.js';

export interface Registration {
  /** id → token */
  tokens: Map<string, string>;
  operator: { name: string; secret: string };
}

export function deviceIds(count: number, prefix: string): string[] {
  return Array.from({ length: count }, (_, i) => `${prefix}${i}`);
}

export function registerDevices(dataDir: string, ids: string[], tag: string, operatorName = 'bench-operator'): Registration {
  const stores = openStores(dataDir);
  try {
    const tokens = stores.devices.addMany(ids, tag ? [tag] : []);
    const secret = stores.tokens.add(operatorName, 'operator');
    return { tokens, operator: { name: operatorName, secret } };
  } finally {
    stores.close();
  }
}

function main(): void {
  const { values } = parseArgs({
    options: {
      'data-dir': { type: 'string' },
      count: { type: 'string' },
      'id-prefix': { type: 'string', default: 'sim-' },
      tag: { type: 'string', default: 'sim' },
      out: { type: 'string' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help || !values['data-dir'] || !values.count || !values.out) {
    console.log(`Usage: node dist/bench/register.js --data-dir DIR --count N [--id-prefix P] [--tag T] --out FILE.json

Registers devices P0 … P{N-1} with tag T (default "sim") in the hub's database at DIR and
writes {"id": "token", …} to FILE.json, for sim-devices.js --tokens. Also issues an API token
"Poperator" (role operator) and prints its secret on stderr.`);
    process.exit(values.help ? 0 : 2);
  }
  const count = Number(values.count);
  if (!Number.isInteger(count) || count < 1) {
    console.error(`register: --count ${values.count} is not a positive whole number`);
    process.exit(2);
  }
  const prefix = values['id-prefix'];
  const reg = registerDevices(values['data-dir'], deviceIds(count, prefix), values.tag, `${prefix}operator`);
  writeFileSync(values.out, JSON.stringify(Object.fromEntries(reg.tokens)), { mode: 0o600 });
  console.log(`${count} devices registered in ${values['data-dir']}; tokens in ${values.out}`);
  console.error(`API token ${reg.operator.name} (operator): ${reg.operator.secret}`);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  try {
    main();
  } catch (error) {
    console.error(`register: ${(error as Error).message}`);
    process.exit(1);
  }
}
