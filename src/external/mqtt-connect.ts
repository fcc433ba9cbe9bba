/**
 * MQTT.js, loaded when the hub first connects to an external broker: a hub on its embedded
 * broker starts without it (in a restart under a fleet, every moment before the hub listens
 * is refused connects, and each refusal doubles a device's backoff).
 */
import { createRequire } from 'node:module';
import type { IClientOptions, MqttClient } from 'mqtt';

const require = createRequire(import.meta.url);

export function connectMqtt(url: string, options: IClientOptions): MqttClient {
  return (require('mqtt') as typeof import('mqtt')).connect(url, options);
}
