/**
 * The brokers an agent may connect to, tried in turn, and the part of MQTT.js's options that
 * changes from one to the next. MQTT.js builds each connection's stream from `client.options`
 * (host, port, protocol, path) when it (re)connects, so pointing those at another broker before
 * a retry moves the connection there while the client, its session state and its outgoing store
 * stay the same.
 */
import type { IClientOptions } from 'mqtt';
import type { PresenceTransport } from './presence.js';

export const SUPPORTED_URL_SCHEMES = ['mqtt:', 'mqtts:', 'ws:', 'wss:'] as const;

type Scheme = 'mqtt' | 'mqtts' | 'ws' | 'wss';

const DEFAULT_PORTS: Record<Scheme, number> = { mqtt: 1883, mqtts: 8883, ws: 80, wss: 443 };

export interface BrokerTarget {
  /** As given, for log lines (after redactUrl) and `agent.url`. */
  url: string;
  scheme: Scheme;
  /** Without the brackets of an IPv6 literal, as net and tls want it. */
  host: string;
  port: number;
  /** Path and query of a WebSocket URL. */
  path: string | undefined;
  /** Credentials written into the URL; they win over the token, as they did when MQTT.js parsed the URL itself. */
  username: string | undefined;
  password: string | undefined;
  transport: PresenceTransport;
  tls: boolean;
}

/** Why an agent URL is refused, or null. */
export function urlProblem(url: string): string | null {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return `${JSON.stringify(url)} is not a URL`;
  }
  if (!(SUPPORTED_URL_SCHEMES as readonly string[]).includes(parsed.protocol)) {
    return `${JSON.stringify(url)} must start with mqtt://, mqtts://, ws:// or wss://`;
  }
  return null;
}

/**
 * A checked URL (urlProblem) as a target. With a client certificate, mqtt:// and ws:// mean
 * TLS anyway: MQTT.js has always upgraded them so, and agents in the field may rely on it.
 */
export function brokerTarget(url: string, hasClientCertificate: boolean): BrokerTarget {
  const parsed = new URL(url);
  const given = parsed.protocol.slice(0, -1) as Scheme;
  const scheme: Scheme = hasClientCertificate && given === 'mqtt' ? 'mqtts' : hasClientCertificate && given === 'ws' ? 'wss' : given;
  const webSocket = scheme === 'ws' || scheme === 'wss';
  return {
    url,
    scheme,
    host: parsed.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: parsed.port === '' ? DEFAULT_PORTS[scheme] : Number(parsed.port),
    path: webSocket ? `${parsed.pathname}${parsed.search}` : undefined,
    username: parsed.username === '' ? undefined : decodeURIComponent(parsed.username),
    password: parsed.password === '' ? undefined : decodeURIComponent(parsed.password),
    transport: webSocket ? 'mqtt-ws' : 'mqtt',
    tls: scheme === 'mqtts' || scheme === 'wss',
  };
}

/**
 * Points MQTT.js's options at the target. Every field a stream builder reads or leaves behind
 * is set: the TCP builder would take a stale `path` for a Unix socket, the TLS one keeps the
 * first host's `servername`, and both write default ports back.
 */
export function applyTarget(options: IClientOptions, target: BrokerTarget, fallback: { username?: string; password?: string }): void {
  options.protocol = target.scheme;
  options.host = target.host;
  // MQTT.js builds a WebSocket URL from `hostname` as it is, so an IPv6 literal keeps its brackets there.
  options.hostname = target.path !== undefined && target.host.includes(':') ? `[${target.host}]` : target.host;
  options.port = target.port;
  if (target.path !== undefined) options.path = target.path;
  else delete options.path;
  delete options.servername;
  const username = target.username ?? fallback.username;
  const password = target.password ?? fallback.password;
  if (username !== undefined) options.username = username;
  else delete options.username;
  if (password !== undefined) options.password = password;
  else delete options.password;
}
