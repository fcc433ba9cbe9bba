/**
 * `--broker` takes one URL or several, comma-separated: the nodes of one broker cluster (NATS,
 * EMQX, HiveMQ). The hub joins the first that answers and, when its connection is lost, tries
 * each in turn, as hypha does with several `--url`.
 */
import type { IClientOptions } from 'mqtt';

/** The URLs of a `--broker` value, in order. */
export function brokerUrls(value: string): string[] {
  return value
    .split(',')
    .map((url) => url.trim())
    .filter((url) => url !== '');
}

/** Why one broker URL is not usable, or null. */
export function brokerUrlProblem(value: string): string | null {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return 'must be a URL like mqtt://127.0.0.1:1883';
  }
  if (!['mqtt:', 'mqtts:', 'ws:', 'wss:'].includes(url.protocol)) return 'must start with mqtt://, mqtts://, ws:// or wss://';
  if (!url.hostname) return 'must name a host, like mqtt://127.0.0.1:1883';
  if (url.username || url.password) return 'must not hold credentials: use --broker-username and --broker-password-file';
  return null;
}

/** Why a `--broker` list is not usable, or null: each URL must be, and all of one scheme and path. */
export function brokerListProblem(value: string): string | null {
  const urls = brokerUrls(value);
  if (urls.length === 0) return 'must be a URL like mqtt://127.0.0.1:1883';
  for (const url of urls) {
    const problem = brokerUrlProblem(url);
    if (problem) return urls.length === 1 ? problem : `${url} ${problem}`;
  }
  const first = new URL(urls[0]!);
  for (const url of urls.slice(1).map((u) => new URL(u))) {
    // MQTT.js moves between servers by host and port alone.
    if (url.protocol !== first.protocol || url.pathname !== first.pathname) return `lists nodes of one broker: give every URL the same scheme and path as ${urls[0]}`;
  }
  return null;
}

/** The default port of each scheme, as MQTT.js uses it. */
export function brokerPort(url: string): number {
  const parsed = new URL(url);
  if (parsed.port) return Number(parsed.port);
  return { 'mqtt:': 1883, 'mqtts:': 8883, 'ws:': 80, 'wss:': 443 }[parsed.protocol] ?? 0;
}

/** Where MQTT.js opens the socket for `url`: the host (IPv6 without URL's brackets) and port. */
export function brokerEndpoint(url: string): { host: string; port: number } {
  return { host: new URL(url).hostname.replace(/^\[(.*)\]$/, '$1'), port: brokerPort(url) };
}

/**
 * MQTT.js options that make a client connect to `urls[start]` first and, on each reconnect,
 * to the next one round the list (nothing for a single URL).
 */
export function failoverOptions(urls: readonly string[], start = 0): Pick<IClientOptions, 'servers'> {
  if (urls.length < 2) return {};
  const ordered = [...urls.slice(start), ...urls.slice(0, start)];
  return {
    servers: ordered.map((url) => ({ ...brokerEndpoint(url), protocol: new URL(url).protocol.slice(0, -1) as 'mqtt' | 'mqtts' | 'ws' | 'wss' })),
  };
}
