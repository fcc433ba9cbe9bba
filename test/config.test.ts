/** Configuration layers: flags over environment over file over defaults, one-line errors. */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, DEFAULTS, resolveConfig } from '../src/config.js';
import { brokerUrls, failoverOptions } from '../src/external/broker-urls.js';
import { tempDir } from './helpers.js';

function configFile(content: unknown): string {
  const file = join(tempDir(), 'hub.json');
  writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content));
  return file;
}

describe('config', () => {
  it('has the documented defaults', () => {
    expect(resolveConfig()).toEqual(DEFAULTS);
    expect(DEFAULTS).toMatchObject({ host: '127.0.0.1', mqttPort: 1883, httpPort: 8080, dataDir: './data', topicPrefix: 'rhizosphere', allowAnonymous: false });
  });

  it('layers flags over environment over file over defaults', () => {
    const file = configFile({ mqttPort: 1001, httpPort: 1002, dataDir: '/from/file', topicPrefix: 'file' });
    const env = { RHIZOSPHERE_HTTP_PORT: '2002', RHIZOSPHERE_DATA_DIR: '/from/env', RHIZOSPHERE_ALLOW_ANONYMOUS: 'true' };
    const config = resolveConfig({ file, env, flags: { dataDir: '/from/flag' } });
    expect(config).toMatchObject({ mqttPort: 1001, httpPort: 2002, dataDir: '/from/flag', topicPrefix: 'file', allowAnonymous: true, host: '127.0.0.1' });
  });

  it('lets the client commands\' variables be (a shell exporting them can still start a hub)', () => {
    expect(resolveConfig({ env: { RHIZOSPHERE_URL: 'ws://hub:8080/mqtt', RHIZOSPHERE_TOKEN_NAME: 'ops', RHIZOSPHERE_TOKEN: 'rz_x' } })).toEqual(DEFAULTS);
  });

  it('names the culprit of every problem in one line', () => {
    const cases: [Parameters<typeof resolveConfig>[0], RegExp][] = [
      [{ file: configFile({ mqttport: 1 }) }, /unknown key "mqttport" \(did you mean "mqttPort"\?\)/],
      [{ file: configFile({ 'mqtt-port': 1 }) }, /unknown key "mqtt-port" \(did you mean "mqttPort"\?\)/],
      [{ file: configFile({ mqttPort: 'x' }) }, /"mqttPort" in .*hub\.json: "x" must be a port number/],
      [{ file: configFile('{not json') }, /not valid JSON/],
      [{ file: configFile('[1]') }, /must hold a JSON object/],
      [{ file: '/nonexistent/hub.json' }, /cannot read it \(ENOENT\)/],
      [{ env: { RHIZOSPHERE_MQTT_PORT: 'abc' } }, /RHIZOSPHERE_MQTT_PORT: "abc" is not a whole number/],
      [{ env: { RHIZOSPHERE_HTTP_PORT: '70000' } }, /RHIZOSPHERE_HTTP_PORT: 70000 must be 0 to 65535/],
      [{ env: { RHIZOSPHERE_ALLOW_ANONYMOUS: 'maybe' } }, /RHIZOSPHERE_ALLOW_ANONYMOUS: "maybe" is not true or false/],
      [{ env: { RHIZOSPHERE_MQTT_PROT: '1' } }, /RHIZOSPHERE_MQTT_PROT: unknown environment variable/],
      [{ flags: { topicPrefix: 'a/#' } }, /--topic-prefix: "a\/#" must not contain/],
      [{ flags: { logLevel: 'loud' } }, /--log-level: "loud" must be one of/],
      [{ flags: { maxInflightPerDevice: 0 } }, /--max-inflight-per-device: 0 must be at least 1/],
      [{ flags: { broker: 'http://x:1' } }, /--broker: .*must start with mqtt:\/\/, mqtts:\/\/, ws:\/\/ or wss:\/\//],
      [{ flags: { broker: 'mqtt://a:1,nonsense' } }, /--broker: .*nonsense must be a URL like mqtt:\/\/127\.0\.0\.1:1883/],
      [{ flags: { broker: 'mqtt://a:1,mqtts://b:2' } }, /--broker: .*lists nodes of one broker: give every URL the same scheme and path as mqtt:\/\/a:1/],
      [{ flags: { broker: 'mqtt://u:p@a:1' } }, /--broker: .*must not hold credentials/],
      [{ flags: { broker: 'mqtt://a:1,mqtt://b:1', brokerDynsec: true, brokerUsername: 'hub' } }, /--broker-dynsec: .*works with one Mosquitto: give --broker a single URL/],
    ];
    for (const [layers, pattern] of cases) {
      let error: unknown;
      try {
        resolveConfig(layers);
      } catch (caught) {
        error = caught;
      }
      expect(error, String(pattern)).toBeInstanceOf(ConfigError);
      expect((error as Error).message).toMatch(pattern);
      expect((error as Error).message).not.toContain('\n');
    }
  });

  it('takes several --broker URLs, comma-separated, as the nodes of one broker', () => {
    expect(resolveConfig({ flags: { broker: 'mqtt://a:1, mqtt://b:2,mqtt://[::1]:3' } }).broker).toBe('mqtt://a:1, mqtt://b:2,mqtt://[::1]:3');
    expect(brokerUrls('mqtt://a:1, mqtt://b:2,,')).toEqual(['mqtt://a:1', 'mqtt://b:2']);
    expect(failoverOptions(['mqtt://a:1', 'mqtt://b', 'mqtt://[::1]:3'], 1).servers).toEqual([
      { host: 'b', port: 1883, protocol: 'mqtt' },
      { host: '::1', port: 3, protocol: 'mqtt' },
      { host: 'a', port: 1, protocol: 'mqtt' },
    ]);
    expect(failoverOptions(['mqtt://a:1'])).toEqual({});
  });
});
