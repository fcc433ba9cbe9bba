/**
 * A device's own web page through the hub (docs/protocol.md "A device's web page"):
 * `/api/devices/{id}/http/{port}/{path}` is sent as `/{path}` to `localhost:{port}` as the
 * device sees it, over a `tcp` tunnel opened in the caller's name (operators and admins;
 * audited like any tunnel). One tunnel per request.
 *
 * The page is served from the hub's own origin, so it is sandboxed (CSP `sandbox` without
 * `allow-same-origin`): its scripts run in an opaque origin and cannot use the caller's
 * session. The hub's cookie and credentials are never passed to the device.
 */
import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import express, { type Request, type Response, type Router } from 'express';
import type { Authenticator } from '../src/auth/authenticator.js';
import { actorOf, canRunCommands, type Principal } from '../src/auth/roles.js';
import { Tunnel } from '../src/client/tunnel.js';
import { ClientError } from '../src/client/errors.js';
import { tunnelDuplex } from '../src/tunnels/duplex.js';
import { isErrorCode } from '../src/errors.js';
import type { Logger } from '../src/log.js';
import { idProblem } from '../src/protocol/ids.js';
import { decodeFrame } from '../src/protocol/tunnel.js';
import type { TunnelRelay } from '../src/tunnels/relay.js';
import { requirePrincipal } from '../src/web-auth.js';
import { sendError } from './rest-kit.js';

export interface DeviceHttpOptions {
  auth: Authenticator;
  relay: TunnelRelay;
  log: Logger;
}

/** Headers that belong to one hop (RFC 9110 7.6.1), and the hub's own credentials. */
const NOT_FORWARDED = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'host',
  'cookie',
  'authorization',
  'origin',
  'referer',
]);
const NOT_RETURNED = new Set(['connection', 'keep-alive', 'transfer-encoding', 'set-cookie', 'content-security-policy', 'x-frame-options']);

/** What the device's page may do: run its scripts and forms, in an opaque origin of its own. */
const SANDBOX = 'sandbox allow-scripts allow-forms allow-popups allow-downloads';

function forwardedHeaders(headers: IncomingHttpHeaders, port: number): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) if (value !== undefined && !NOT_FORWARDED.has(name)) out[name] = value;
  out.host = port === 80 ? 'localhost' : `localhost:${port}`;
  out.connection = 'close';
  return out;
}

export function deviceHttpRouter({ auth, relay, log }: DeviceHttpOptions): Router {
  const router = express.Router();
  let opened = 0;

  const proxy = async (req: Request, res: Response) => {
    const principal = res.locals.principal as Principal;
    const device = String(req.params.id);
    const portText = String(req.params.port);
    const problem = idProblem(device);
    if (problem) return sendError(res, 'BAD_REQUEST', `device ${problem}`);
    const port = Number(portText);
    if (!/^\d+$/.test(portText) || port < 1 || port > 65535) return sendError(res, 'BAD_REQUEST', 'port must be 1 to 65535');
    if (!canRunCommands(principal)) {
      return sendError(res, 'FORBIDDEN', `${actorOf(principal).actor} may not open a device's web page (role ${'role' in principal ? principal.role : 'none'})`);
    }
    // The page's relative links work only under a trailing slash.
    const rest = (req.params as Record<string, string | string[] | undefined>).rest;
    const base = `/api/devices/${encodeURIComponent(device)}/http/${port}`;
    if (rest === undefined && !req.originalUrl.split('?')[0]!.endsWith('/')) {
      return res.redirect(308, `${base}/${req.originalUrl.includes('?') ? req.originalUrl.slice(req.originalUrl.indexOf('?')) : ''}`);
    }
    const path = `/${Array.isArray(rest) ? rest.map(encodeURIComponent).join('/') : (rest ?? '')}${req.originalUrl.includes('?') ? req.originalUrl.slice(req.originalUrl.indexOf('?')) : ''}`;

    const local = relay.localClient(principal, req.ip ?? null);
    const tunnelId = `http-${++opened}`;
    const tunnel = new Tunnel(tunnelId, device, { kind: 'tcp', host: 'localhost', port }, {
      inTopic: '',
      publish: async (_topic, frame) => local.send(tunnelId, frame),
      forget: () => local.close(),
    });
    local.onFrame = (clientTunnel, frame) => {
      if (clientTunnel === tunnelId) tunnel.receiveFrame(decodeFrame(frame));
    };
    res.on('close', () => void tunnel.close());
    tunnel.start();
    try {
      await tunnel.opened;
    } catch (error) {
      const code = error instanceof ClientError && isErrorCode(error.code) ? error.code : 'INTERNAL';
      return sendError(res, code, `${device} localhost:${port}: ${(error as Error).message}`);
    }
    const socket = tunnelDuplex(tunnel);
    const upstream = httpRequest({ method: req.method, path, headers: forwardedHeaders(req.headers, port), createConnection: () => socket as never }, (answer) => {
      const headers: Record<string, string | string[]> = {};
      for (const [name, value] of Object.entries(answer.headers)) if (value !== undefined && !NOT_RETURNED.has(name)) headers[name] = value;
      // A redirect to an absolute path on the device stays under this device's base.
      const location = answer.headers.location;
      if (typeof location === 'string' && location.startsWith('/') && !location.startsWith('//')) headers.location = `${base}${location}`;
      headers['content-security-policy'] = SANDBOX;
      res.writeHead(answer.statusCode ?? 502, answer.statusMessage, headers);
      answer.pipe(res);
    });
    upstream.on('error', (error) => {
      log.info({ device, port, err: error.message }, 'device web page: the request through the tunnel failed');
      sendError(res, 'CONNECT_FAILED', `${device} localhost:${port}: ${error.message}`);
    });
    req.pipe(upstream);
  };

  const handle = (req: Request, res: Response) => {
    proxy(req, res).catch((error: unknown) => {
      log.error({ err: error }, 'device web page: unexpected failure');
      sendError(res, 'INTERNAL', 'the hub could not reach the device\'s web page');
    });
  };
  router.all('/devices/:id/http/:port', requirePrincipal(auth), handle);
  router.all('/devices/:id/http/:port/{*rest}', requirePrincipal(auth), handle);
  return router;
}
