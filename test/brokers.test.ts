/** The test brokers themselves: each starts on its own ports and carries MQTT. */
import { describe, expect, it } from 'vitest';
import { startMosquitto, startNatsCluster } from './brokers.js';
import { connectMqtt } from './helpers.js';

describe('test brokers', () => {
  it('starts a Mosquitto with dynamic security that refuses anonymous clients and admits its admin', async () => {
    const mosquitto = await startMosquitto({ dynsecAdminPassword: 'admin-pw' });
    await expect(connectMqtt(mosquitto.url, { clientId: 'nobody' })).rejects.toThrow();
    const admin = await connectMqtt(mosquitto.url, { clientId: 'admin-1', username: 'admin', password: 'admin-pw', protocolVersion: 5 });
    expect(admin.connected).toBe(true);
  });

  it('starts three clustered NATS servers that carry MQTT from one node to another', async () => {
    const nats = await startNatsCluster(3);
    const a = await connectMqtt(nats.urls[0]!, { clientId: 'a' });
    const b = await connectMqtt(nats.urls[2]!, { clientId: 'b' });
    await b.subscribeAsync('t/x', { qos: 1 });
    const got = new Promise<string>((resolve) => b.on('message', (_t, p) => resolve(p.toString())));
    await a.publishAsync('t/x', 'hello', { qos: 1 });
    expect(await got).toBe('hello');
  }, 120_000);
});
