/**
 * The hub's credentials for an external broker, read and checked before anything starts,
 * so a missing file or a bad PEM ends the start with one line naming the flag.
 */
import { readFileSync } from 'node:fs';
import type { HubConfig } from '../config.js';
import { StartError } from '../errors.js';
import { loadPemFiles } from '../pem.js';
import type { UplinkCredentials } from './uplink.js';

export function loadBrokerCredentials(config: HubConfig): UplinkCredentials {
  const credentials: UplinkCredentials = {};
  if (config.brokerUsername) credentials.username = config.brokerUsername;
  if (config.brokerPasswordFile) {
    let text: string;
    try {
      text = readFileSync(config.brokerPasswordFile, 'utf8');
    } catch (error) {
      throw new StartError(`--broker-password-file: cannot read ${config.brokerPasswordFile} (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
    }
    const password = text.split(/\r?\n/, 1)[0] ?? '';
    if (password === '') throw new StartError(`--broker-password-file: ${config.brokerPasswordFile} is empty (the password is its first line)`);
    credentials.password = password;
  }
  if (config.brokerCa || config.brokerCert) {
    const loaded = loadPemFiles(
      { cert: config.brokerCert || undefined, key: config.brokerKey || undefined, ca: config.brokerCa || undefined },
      { cert: '--broker-cert', key: '--broker-key', ca: '--broker-ca' },
    );
    if ('problem' in loaded) throw new StartError(loaded.problem);
    if (loaded.ca) credentials.ca = loaded.ca;
    if (loaded.cert) credentials.cert = loaded.cert;
    if (loaded.key) credentials.key = loaded.key;
  }
  return credentials;
}
