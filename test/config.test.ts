/** Configuration layers: flags over environment over file over defaults, one-line errors. */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, DEFAULTS, resolveConfig } from '../src/config.js';
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
});
