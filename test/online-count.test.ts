/**
 * /healthz's `online` is a count kept as devices come and go (not a scan of the table on every
 * probe): it must agree with the table through takeovers, drops and removals.
 */
import { expect, it } from 'vitest';
import { Topics } from '../src/protocol/topics.js';
import { connectMqtt, startTestHub, waitFor } from './helpers.js';

it('counts the devices online through a takeover, a drop and a removal', async () => {
  const hub = await startTestHub({ allowAnonymous: false });
  const topics = new Topics(hub.config.topicPrefix);
  const healthOnline = async () => ((await (await fetch(`${hub.urls.http}/healthz`)).json()) as { online: number }).online;
  const tableOnline = () => hub.devices().filter((d) => d.online).length;
  const tokens = new Map(['pi-1', 'pi-2', 'pi-3'].map((id) => [id, hub.stores.devices.add(id)]));
  const device = async (id: string) => {
    const client = await connectMqtt(hub.urls.mqtt, { clientId: id, username: id, password: tokens.get(id)!, clean: false });
    await client.subscribeAsync(topics.deviceCommand(id), { qos: 1 });
    return client;
  };
  const expectCount = async (n: number, what: string) => {
    await waitFor(() => tableOnline() === n, { what });
    expect(await healthOnline(), what).toBe(n);
  };

  const [one, , three] = [await device('pi-1'), await device('pi-2'), await device('pi-3')];
  await expectCount(3, 'three online');
  // The same id again: the older connection is replaced, the device stays online once.
  const again = await device('pi-1');
  await waitFor(() => one.disconnected || !one.connected, { what: 'the replaced connection closed' });
  await expectCount(3, 'three online after a takeover');
  await three.endAsync();
  await expectCount(2, 'two online after a drop');
  // Removed while online: dropped, forgotten, and no longer counted.
  hub.stores.devices.remove('pi-1');
  await waitFor(() => !hub.device('pi-1'), { what: 'pi-1 forgotten' });
  await expectCount(1, 'one online after a removal');
  await device('pi-3');
  await expectCount(2, 'two online after a return');
  expect(again.connected).toBe(false);
});
