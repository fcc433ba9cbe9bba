/**
 * The hub's TLS: the certificate it presents on the MQTTS and HTTPS ports, and mutual TLS,
 * where a device proves who it is with a client certificate signed by `--tls-ca` and the
 * certificate's subject CN is its device id.
 */
import type { Server as HttpsServer } from 'node:https';
import { createServer as createHttpsServer } from 'node:https';
import { createServer as createTlsServer, TLSSocket, type Server as TlsServer, type TlsOptions } from 'node:tls';
import type { Client } from 'aedes';
import { ConfigError, type HubConfig } from './config.js';
import type { Logger } from './log.js';
import { loadPemFiles } from './pem.js';

export interface TlsMaterial {
  cert: string;
  key: string;
  /** The CA that signs device certificates; absent without mutual TLS. */
  ca?: string;
  requireClientCert: boolean;
  /** When the hub's certificate stops being valid. */
  validTo: Date;
}

/** Reads and checks the TLS files of the config; null when TLS is off. Throws a ConfigError naming the flag. */
export function loadTls(config: HubConfig): TlsMaterial | null {
  if (!config.tlsCert) return null;
  const loaded = loadPemFiles(
    { cert: config.tlsCert, key: config.tlsKey, ca: config.tlsCa || undefined },
    { cert: '--tls-cert', key: '--tls-key', ca: '--tls-ca' },
  );
  if ('problem' in loaded) throw new ConfigError(loaded.problem);
  return {
    cert: loaded.cert!,
    key: loaded.key!,
    ca: loaded.ca,
    requireClientCert: config.requireClientCert,
    validTo: new Date(loaded.leaf!.validTo),
  };
}

/** Says at start what would otherwise show only as failed handshakes on every device. */
export function warnAboutValidity(tls: TlsMaterial, log: Logger): void {
  const daysLeft = (tls.validTo.getTime() - Date.now()) / 86_400_000;
  if (daysLeft < 0) log.error({ validTo: tls.validTo.toISOString() }, 'the hub certificate (--tls-cert) has expired: devices will refuse to connect');
  else if (daysLeft < 14) log.warn({ validTo: tls.validTo.toISOString() }, `the hub certificate (--tls-cert) expires in ${Math.floor(daysLeft)} days`);
}

function serverOptions(tls: TlsMaterial): TlsOptions {
  // Without a CA there is nothing to check a client certificate against, so none is asked for.
  return { cert: tls.cert, key: tls.key, ...(tls.ca ? { ca: tls.ca, requestCert: true } : {}) };
}

/**
 * The MQTTS listener. With --require-client-cert a connection without a certificate signed
 * by --tls-ca fails in the handshake, before any MQTT; otherwise a certificate is optional
 * and an unverified one is simply not used (username and password rules apply).
 */
export function createMqttsServer(tls: TlsMaterial, onConnection: (socket: TLSSocket) => void, log: Logger): TlsServer {
  const server = createTlsServer(
    // TCP_NODELAY, as on the plain MQTT port: QoS 1 round trips suffer from Nagle plus delayed ACK.
    { ...serverOptions(tls), noDelay: true, rejectUnauthorized: tls.requireClientCert },
    onConnection,
  );
  server.on('tlsClientError', (error, socket) => logHandshakeFailure(error, socket, log));
  return server;
}

/**
 * The HTTPS server of the HTTP port (REST, console, WSS). It asks for a client certificate
 * when there is a CA, so a device on wss:// can use one, but never requires it: browsers and
 * scripts log in with passwords and API tokens.
 */
export function createHubHttpsServer(tls: TlsMaterial, log: Logger): HttpsServer {
  const server = createHttpsServer({ ...serverOptions(tls), rejectUnauthorized: false });
  server.on('tlsClientError', (error, socket) => logHandshakeFailure(error, socket, log));
  return server;
}

/**
 * Certificate problems are what an operator needs to see. Node checks a client certificate
 * only once the handshake is over and then destroys the socket, so the error is a bare
 * "socket hang up" and the verdict is in `authorizationError`.
 */
function logHandshakeFailure(error: Error & { code?: string }, socket: TLSSocket, log: Logger): void {
  const verdict = socket.authorizationError ? String(socket.authorizationError) : undefined;
  const reason = verdict ?? error.code ?? error.message;
  const details = { code: 'FORBIDDEN', remote: socket.remoteAddress, reason };
  // A client certificate refused here, or the hub's refused by the client (an alert such as "unknown ca").
  if (verdict || /CERT|UNKNOWN_CA/i.test(reason)) log.warn(details, 'TLS handshake refused');
  // Others are mostly port scanners and dropped connections.
  else log.debug({ ...details, err: error.message }, 'TLS handshake failed');
}

/**
 * The device id vouched for by the connection's client certificate: the subject CN of a
 * certificate that the TLS layer verified against --tls-ca. MQTTS connections carry their
 * TLS socket as `conn`; MQTT over WSS as the socket of the upgrade request.
 */
export function certificateIdOf(client: Client): string | undefined {
  const socket = client.conn instanceof TLSSocket ? client.conn : client.req?.socket;
  if (!(socket instanceof TLSSocket) || !socket.authorized) return undefined;
  const commonName: unknown = socket.getPeerCertificate().subject?.CN;
  // Several CNs identify no one in particular: such a certificate names no device.
  return typeof commonName === 'string' ? commonName : undefined;
}
