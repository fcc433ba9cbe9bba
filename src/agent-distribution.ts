/**
 * The standalone agent the hub hands out (`npm run build` makes it: src/build/agent-bundle.ts):
 * `GET /agent/hypha.js`, its SHA-256 at `GET /agent/hypha.js.sha256` (sha256sum's format), and
 * `GET /install.sh`, the one-line installer with this hub's addresses filled in. No
 * authentication: the agent and the script hold no secret (a device's token or enrolment key
 * is given to the script on the device's own command line, never served).
 *
 * The file is read again when it changes on disk, so a new build is served (and sent by
 * `rhizosphere agent upgrade`) without restarting the hub.
 */
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Router, type Request } from 'express';
import { PACKAGE_ROOT } from './package-root.js';

export const DEFAULT_AGENT_FILE = join(PACKAGE_ROOT, 'dist', 'agent', 'hypha.js');
const INSTALL_SCRIPT = join(PACKAGE_ROOT, 'config', 'install.sh');

export interface AgentBuild {
  body: Buffer;
  sha256: string;
  /** From the file's banner (`// hypha 0.1.0: …`), or `unknown`. */
  version: string;
}

/** The version a standalone agent file declares in its second line. */
export function agentVersionOf(body: Buffer): string {
  const head = body.subarray(0, 512).toString('utf8');
  return /^\/\/ hypha (\S+?):/m.exec(head)?.[1] ?? 'unknown';
}

export class AgentDistribution {
  private cached: { build: AgentBuild; mtimeMs: number; size: number } | undefined;

  constructor(readonly file: string = DEFAULT_AGENT_FILE) {}

  /** The current build, or undefined when the file is missing (not built). */
  current(): AgentBuild | undefined {
    let stat;
    try {
      stat = statSync(this.file);
    } catch {
      this.cached = undefined;
      return undefined;
    }
    if (this.cached && this.cached.mtimeMs === stat.mtimeMs && this.cached.size === stat.size) return this.cached.build;
    const body = readFileSync(this.file);
    const build = { body, sha256: createHash('sha256').update(body).digest('hex'), version: agentVersionOf(body) };
    this.cached = { build, mtimeMs: stat.mtimeMs, size: stat.size };
    return build;
  }
}

export interface InstallDefaults {
  /** `--install-url`: the broker URL(s) devices get when the installer is not given `--url`. */
  mqttUrl: string;
  /** The embedded broker's MQTT and MQTT-over-TLS ports (null: none). */
  mqttPort: () => number | null;
  mqttsPort: () => number | null;
  /** `--broker`'s URLs (none on the embedded broker). */
  brokerUrls: string[];
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '::1', '[::1]']);

/**
 * What a device fetching the installer from `hostname` should dial: `--install-url` if set;
 * else the external broker's nodes (a loopback host there means the broker shares the hub's
 * machine, so the device reaches it by the name it reached the hub by); else the hub's own
 * MQTT port, over TLS where the hub has it.
 */
export function installMqttUrl(defaults: InstallDefaults, hostname: string): string {
  if (defaults.mqttUrl) return defaults.mqttUrl;
  const host = hostname.includes(':') && !hostname.startsWith('[') ? `[${hostname}]` : hostname;
  if (defaults.brokerUrls.length > 0) {
    return defaults.brokerUrls
      .map((raw) => {
        const url = new URL(raw);
        if (LOOPBACK.has(url.hostname)) url.hostname = host;
        return url.toString().replace(/\/$/, '');
      })
      .join(',');
  }
  const tlsPort = defaults.mqttsPort();
  if (tlsPort !== null) return `mqtts://${host}:${tlsPort}`;
  const plainPort = defaults.mqttPort();
  return plainPort !== null ? `mqtt://${host}:${plainPort}` : '';
}

/** `http(s)://host[:port]` as the device reached the hub (behind a proxy: its Host and X-Forwarded-Proto). */
function hubOrigin(req: Request): string {
  const forwarded = req.headers['x-forwarded-proto'];
  const proto = typeof forwarded === 'string' && /^https?$/.test(forwarded) ? forwarded : req.protocol;
  return `${proto}://${req.headers.host ?? 'localhost'}`;
}

/** Single-quoted for sh: the only character to take care of is the quote itself. */
function shQuote(value: string): string {
  return `'${value.replaceAll("'", "'\\''")}'`;
}

export function agentRouter(distribution: AgentDistribution, defaults: InstallDefaults): Router {
  const router = Router();
  const notBuilt = { status: 'error', code: 'NOT_FOUND', message: `the standalone agent is not built (${distribution.file} is missing): run npm run build` };
  router.get('/agent/hypha.js', (_req, res) => {
    const build = distribution.current();
    if (!build) return void res.status(404).json(notBuilt);
    res.setHeader('cache-control', 'no-cache');
    res.setHeader('etag', `"${build.sha256}"`);
    res.setHeader('x-hypha-version', build.version);
    res.setHeader('x-hypha-sha256', build.sha256);
    res.type('application/javascript').send(build.body);
  });
  router.get('/agent/hypha.js.sha256', (_req, res) => {
    const build = distribution.current();
    if (!build) return void res.status(404).json(notBuilt);
    res.setHeader('cache-control', 'no-cache');
    res.type('text/plain').send(`${build.sha256}  hypha.js\n`);
  });
  router.get('/install.sh', (req, res) => {
    const origin = hubOrigin(req);
    const mqttUrl = installMqttUrl(defaults, new URL(origin).hostname);
    const script = readFileSync(INSTALL_SCRIPT, 'utf8')
      .replace(/^HUB=.*$/m, `HUB=${shQuote(origin)}`)
      .replace(/^DEFAULT_URL=.*$/m, `DEFAULT_URL=${shQuote(mqttUrl)}`);
    res.setHeader('cache-control', 'no-cache');
    res.type('text/x-shellscript').send(script);
  });
  return router;
}
