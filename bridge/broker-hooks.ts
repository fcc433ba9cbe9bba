/**
 * HTTP hooks for brokers that ask a web service who may connect, publish and subscribe
 * (docs/broker-hooks.md): EMQX 5's HTTP authenticator and HTTP authorizer, and the HTTP
 * backend of mosquitto-go-auth. The answers come from the embedded broker's own Authenticator
 * and rules (src/auth/acl.ts), read from the registry on every call: a rotated token or a
 * removed device is refused on its very next check, whichever process changed it.
 *
 * The registry has no in-memory copy to reuse: the embedded broker's CONNECT reads SQLite too
 * (one primary-key lookup, in-process, microseconds), and so does each check here.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import { z } from 'zod';
import { filterCovers, mayPublish, maySubscribe, type Verdict } from '../src/auth/acl.js';
import { CONSOLE_USERNAME, type Authenticator } from '../src/auth/authenticator.js';
import type { Principal } from '../src/auth/roles.js';
import { ERROR_CODES, StartError } from '../src/errors.js';
import { EveryMinute } from '../src/every-minute.js';
import type { Logger } from '../src/log.js';
import { idProblem } from '../src/protocol/ids.js';
import { expect, validate } from '../src/protocol/schemas.js';
import type { Topics } from '../src/protocol/topics.js';
import type { DeviceStore } from '../src/store/devices.js';
import type { TokenStore } from '../src/store/people.js';
import { bearerOf } from '../src/web-auth.js';
import { sendError } from './rest-kit.js';

export const HOOK_SECRET_MIN_LENGTH = 16;
/** Far above any real call (the longest MQTT topic is 65535 bytes), far below harm. */
export const HOOK_BODY_MAX_BYTES = 512 * 1024;
/** The longest string MQTT can carry (a two-byte length). */
const MQTT_STRING_MAX = 65535;

/** The secret the broker presents, from the first line of --broker-hook-secret-file; a StartError naming the flag otherwise. */
export function loadHookSecret(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new StartError(`--broker-hook-secret-file: cannot read ${file} (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
  }
  const secret = (text.split(/\r?\n/, 1)[0] ?? '').trim();
  if (secret.length < HOOK_SECRET_MIN_LENGTH) {
    throw new StartError(`--broker-hook-secret-file: the secret (the first line of ${file}) has ${secret.length} characters; it needs at least ${HOOK_SECRET_MIN_LENGTH}`);
  }
  // It travels in an HTTP header (EMQX) or a URL (mosquitto-go-auth).
  if (!/^[\x21-\x7e]+$/.test(secret)) throw new StartError(`--broker-hook-secret-file: the secret in ${file} must be printable ASCII without spaces (letters and digits are safest)`);
  return secret;
}

// ---- Request bodies, checked at the edge. EMQX renders every placeholder as a JSON string
// (emqx_auth_template: `${qos}` arrives as "1", `${retain}` as "false", an undefined one as "").

const mqttString = z
  .string({ error: expect('must be a string') })
  .max(MQTT_STRING_MAX, { error: `must be at most ${MQTT_STRING_MAX} characters (the longest string MQTT carries)` });

/** EMQX 5 HTTP authenticator (POST, JSON), with the body template of docs/broker-hooks.md. */
export const EmqxAuthSchema = z.object({ username: mqttString, password: mqttString, clientid: mqttString });
export type EmqxAuthRequest = z.infer<typeof EmqxAuthSchema>;
export interface EmqxAuthAnswer {
  result: 'allow' | 'deny' | 'ignore';
  is_superuser: boolean;
}

/** EMQX 5 HTTP authorizer (POST, JSON). */
export const EmqxAclSchema = z.object({
  username: mqttString,
  clientid: mqttString,
  topic: mqttString,
  action: z.enum(['publish', 'subscribe'], { error: expect('must be "publish" or "subscribe"') }),
  qos: z.union([z.literal([0, 1, 2]), z.enum(['0', '1', '2', ''])], { error: expect('must be 0, 1 or 2') }).optional(),
  retain: z.union([z.boolean(), z.enum(['true', 'false', ''])], { error: expect('must be true or false') }).optional(),
});
export type EmqxAclRequest = z.infer<typeof EmqxAclSchema>;
export interface EmqxAclAnswer {
  result: 'allow' | 'deny';
}

/** mosquitto-go-auth, HTTP backend: JSON (the default) or a form (`http_params_mode form`, where every value is a string). */
export const GoAuthUserSchema = z.object({ username: mqttString, password: mqttString, clientid: mqttString });
export const GoAuthSuperuserSchema = z.object({ username: mqttString });
/** `acc`: Mosquitto's MOSQ_ACL_READ 1 (a message about to be delivered), WRITE 2, both 3, SUBSCRIBE 4. */
export const GoAuthAclSchema = z.object({
  username: mqttString,
  clientid: mqttString,
  topic: mqttString,
  acc: z.union([z.literal([1, 2, 3, 4]), z.enum(['1', '2', '3', '4'])], { error: expect('must be 1 (read), 2 (write), 3 (read and write) or 4 (subscribe)') }),
});
/** What go-auth reads back under `http_response_mode json`; under `status` (its default) only the HTTP status counts. */
export interface GoAuthAnswer {
  ok: boolean;
  error?: string;
}

// ---- The decisions.

/** The hub's own user on the broker (--broker-username, --broker-password-file): allowed everything. */
export interface HubUser {
  username: string;
  /** undefined without --broker-password-file: the hooks cannot vouch for it, and leave it to the broker's other authenticators. */
  password: string | undefined;
}

export type Access = 'publish' | 'subscribe' | 'read';

export interface AuthDecision {
  result: 'allow' | 'deny' | 'ignore';
  superuser: boolean;
  why: string;
}

export interface BrokerDecisionOptions {
  auth: Authenticator;
  devices: DeviceStore;
  tokens: TokenStore;
  topics: Topics;
  hubUser: HubUser;
}

const ALLOW: Verdict = { ok: true };
const deny = (why: string): Verdict => ({ ok: false, why });
const ANONYMOUS: Principal = { kind: 'anonymous', role: 'operator' };

function sameSecret(given: string, expected: string): boolean {
  const digest = (text: string) => createHash('sha256').update(text, 'utf8').digest();
  return timingSafeEqual(digest(given), digest(expected));
}

export interface BrokerDecisions {
  /** CONNECT: the broker passes what the client sent. */
  authenticate(username: string, password: string, clientId: string): AuthDecision;
  /** PUBLISH, SUBSCRIBE, or (go-auth) a message about to be delivered, of an authenticated connection. */
  authorize(username: string, clientId: string, access: Access, topic: string, retain: boolean): Verdict;
  isHubUser(username: string): boolean;
}

export function brokerDecisions({ auth, devices, tokens, topics, hubUser }: BrokerDecisionOptions): BrokerDecisions {
  /**
   * Who an authenticated connection is, from its user name and client id alone (an ACL check
   * carries no password), by the path Authenticator.mqtt took to let it in: the user name equal
   * to the client id is a device when one with a token is registered under it (a wrong token
   * never falls through to API tokens), else an API token of that name.
   */
  const principalOf = (username: string, clientId: string): Principal | null => {
    if (username === '') return auth.allowAnonymous ? ANONYMOUS : null;
    if (username === CONSOLE_USERNAME || idProblem(username) !== null) return null;
    if (username === clientId) {
      const device = devices.get(clientId);
      if (device?.hasToken) return device.state === 'active' ? { kind: 'device', id: clientId } : null;
      if (device && auth.allowAnonymous) return ANONYMOUS;
    }
    const role = tokens.role(username);
    return role ? { kind: 'token', name: username, role } : null;
  };

  /**
   * acl.ts, plus what on the embedded broker the request bridge and the tunnel relay check as
   * the message arrives: there the hub sees the publisher, on an external broker it does not
   * (src/external/requests.ts takes a Request's client id from its topic). So the broker must
   * refuse another client's Request or tunnel frame, a viewer's, and a retained one.
   */
  const publishVerdict = (principal: Principal, clientId: string, topic: string, retain: boolean): Verdict => {
    if (/[+#]/.test(topic)) return deny('a topic published on has no wildcards');
    const verdict = mayPublish(principal, clientId, topic, topics);
    if (!verdict.ok) return verdict;
    const client = topics.parseClientTopic(topic);
    if (client && principal.kind !== 'device') {
      if (client.id !== clientId) return deny(`client ${clientId} may publish only on its own ${topics.clientRequest(clientId)} and ${topics.clientTunnel(clientId, '{tunnel}', 'in')}`);
      if (principal.role === 'viewer') return deny('a viewer may not run commands or open tunnels');
    }
    const device = topics.parseDeviceTopic(topic);
    if (retain && (device?.kind === 'response' || device?.kind === 'tunnel' || client?.kind === 'request' || client?.kind === 'tunnel')) {
      return deny('Requests, Responses and tunnel frames are never retained');
    }
    return verdict;
  };

  /** A concrete topic is readable where some filter the principal may subscribe to matches it (a device's tunnels: one filter, tunnels/+/in). */
  const readVerdict = (principal: Principal, clientId: string, topic: string): Verdict => {
    const verdict = maySubscribe(principal, clientId, topic, topics);
    if (verdict.ok || principal.kind !== 'device') return verdict;
    return filterCovers(topics.deviceTunnelsIn(principal.id), topic) ? ALLOW : verdict;
  };

  const isHubUser = (username: string) => hubUser.username !== '' && username === hubUser.username;

  return {
    isHubUser,

    authenticate(username, password, clientId) {
      if (isHubUser(username)) {
        if (hubUser.password === undefined) return { result: 'ignore', superuser: false, why: 'the hub\'s own user, whose password the hub was not given (--broker-password-file)' };
        return sameSecret(password, hubUser.password)
          ? { result: 'allow', superuser: true, why: 'the hub\'s own user' }
          : { result: 'deny', superuser: false, why: `wrong password for the hub's own user ${username}` };
      }
      const clientProblem = idProblem(clientId);
      if (clientProblem) return { result: 'deny', superuser: false, why: `client id ${clientProblem}` };
      if (username === CONSOLE_USERNAME) return { result: 'deny', superuser: false, why: 'console tokens are for the hub\'s own /mqtt, not for the broker' };
      const userProblem = username === '' ? null : idProblem(username);
      if (userProblem) return { result: 'deny', superuser: false, why: `user name ${userProblem}` };
      const result = auth.mqtt(clientId, username === '' ? undefined : username, Buffer.from(password, 'utf8'));
      if (!result.ok) return { result: 'deny', superuser: false, why: result.reason };
      const who = result.principal;
      return { result: 'allow', superuser: false, why: who.kind === 'device' ? `device ${who.id}` : who.kind === 'token' ? `token ${who.name} (${who.role})` : 'anonymous' };
    },

    authorize(username, clientId, access, topic, retain) {
      if (isHubUser(username)) return ALLOW;
      const clientProblem = idProblem(clientId);
      if (clientProblem) return deny(`client id ${clientProblem}`);
      if (topic === '') return deny('the topic is empty');
      const principal = principalOf(username, clientId);
      if (!principal) return deny(`no accepted device or API token ${username === '' ? '(anonymous access is off)' : `is named ${username}`}`);
      if (access === 'subscribe') return maySubscribe(principal, clientId, topic, topics);
      if (access === 'read') return readVerdict(principal, clientId, topic);
      return publishVerdict(principal, clientId, topic, retain);
    },
  };
}

// ---- The routes.

export interface BrokerHooksOptions extends BrokerDecisionOptions {
  /** From --broker-hook-secret-file. */
  secret: string;
  log: Logger;
}

/** For the log: a hostile value is cut short. */
const short = (value: string) => (value.length > 200 ? `${value.slice(0, 200)}…` : value);

/**
 * Mounted at `/broker`: `POST auth` and `POST acl` (EMQX 5), `POST go-auth/user`,
 * `go-auth/superuser`, `go-auth/acl` (mosquitto-go-auth). Every call presents the secret as
 * `Authorization: Bearer SECRET`; go-auth, which cannot send headers, as `?secret=SECRET`.
 */
export function brokerHooksRouter(options: BrokerHooksOptions): Router {
  const { secret, log } = options;
  const decide = brokerDecisions(options);
  const router = express.Router();
  const refusedCallers = new EveryMinute();

  router.use((req: Request, res: Response, next: NextFunction) => {
    const query = req.path.startsWith('/go-auth/') ? req.query.secret : undefined;
    const given = bearerOf(req) ?? (typeof query === 'string' ? query : null);
    if (given !== null && sameSecret(given, secret)) return next();
    const refused = refusedCallers.count();
    if (refused > 0) log.warn({ code: 'FORBIDDEN', refused, remote: req.socket.remoteAddress, path: req.path }, 'broker hook calls refused: no or wrong secret (--broker-hook-secret-file)');
    res.setHeader('www-authenticate', 'Bearer realm="rhizosphere broker hooks"');
    sendError(res, 'FORBIDDEN', 'the broker hooks need the secret of --broker-hook-secret-file: Authorization: Bearer SECRET', 401);
  });

  const json = express.json({ limit: HOOK_BODY_MAX_BYTES, strict: true, type: () => true });
  const form = express.urlencoded({ limit: HOOK_BODY_MAX_BYTES, extended: false, parameterLimit: 16 });
  router.use((req: Request, res: Response, next: NextFunction) => {
    const parser = req.is('application/x-www-form-urlencoded') ? form : json;
    parser(req, res, (error?: unknown) => {
      if (error === undefined) return next();
      const failure = error as { type?: string; status?: number; message?: string };
      if (failure.status === 413) return sendError(res, 'PAYLOAD_TOO_LARGE', `body is larger than ${HOOK_BODY_MAX_BYTES} bytes`);
      if (failure.status !== undefined && failure.status >= 400 && failure.status < 500) {
        return sendError(res, 'BAD_REQUEST', failure.type === 'entity.parse.failed' ? 'body is not valid JSON (an object)' : `body cannot be read: ${failure.message}`);
      }
      next(error);
    });
  });

  /** The body as `schema` has it, or a 400 naming the field (and undefined). */
  const bodyOf = <T>(req: Request, res: Response, schema: z.ZodType<T>): T | undefined => {
    const checked = validate(schema, req.body ?? {});
    if (checked.ok) return checked.value;
    sendError(res, 'BAD_REQUEST', checked.message);
    return undefined;
  };

  const authenticate = (username: string, password: string, clientId: string): AuthDecision => {
    const decision = decide.authenticate(username, password, clientId);
    if (decision.result === 'deny') log.warn({ code: 'FORBIDDEN', clientId: short(clientId), username: short(username) }, `broker hook: connection refused: ${decision.why}`);
    else log.debug({ clientId, username, result: decision.result }, `broker hook: ${decision.why}`);
    return decision;
  };

  const authorize = (username: string, clientId: string, access: Access, topic: string, retain: boolean): Verdict => {
    const verdict = decide.authorize(username, clientId, access, topic, retain);
    if (!verdict.ok) log.info({ code: 'FORBIDDEN', clientId: short(clientId), username: short(username), access, topic: short(topic) }, `broker hook: ${access} refused: ${verdict.why}`);
    return verdict;
  };

  router.post('/auth', (req, res) => {
    const body = bodyOf(req, res, EmqxAuthSchema);
    if (!body) return;
    const decision = authenticate(body.username, body.password, body.clientid);
    const answer: EmqxAuthAnswer = { result: decision.result, is_superuser: decision.superuser };
    res.json(answer);
  });

  router.post('/acl', (req, res) => {
    const body = bodyOf(req, res, EmqxAclSchema);
    if (!body) return;
    const verdict = authorize(body.username, body.clientid, body.action, body.topic, body.retain === true || body.retain === 'true');
    const answer: EmqxAclAnswer = { result: verdict.ok ? 'allow' : 'deny' };
    res.json(answer);
  });

  const goAuth = (res: Response, ok: boolean, why: string) => {
    const answer: GoAuthAnswer = ok ? { ok: true } : { ok: false, error: why };
    res.status(ok ? 200 : 403).json(answer);
  };

  router.post('/go-auth/user', (req, res) => {
    const body = bodyOf(req, res, GoAuthUserSchema);
    if (!body) return;
    const decision = authenticate(body.username, body.password, body.clientid);
    goAuth(res, decision.result === 'allow', decision.why);
  });

  router.post('/go-auth/superuser', (req, res) => {
    const body = bodyOf(req, res, GoAuthSuperuserSchema);
    if (!body) return;
    const hub = decide.isHubUser(body.username);
    goAuth(res, hub, hub ? 'the hub\'s own user' : `${short(body.username)} is not the hub's own user`);
  });

  router.post('/go-auth/acl', (req, res) => {
    const body = bodyOf(req, res, GoAuthAclSchema);
    if (!body) return;
    const acc = Number(body.acc);
    const check = (access: Access) => authorize(body.username, body.clientid, access, body.topic, false);
    // Read and write (3): both must hold. Mosquitto does not tell the plugin whether a publish is retained.
    const verdict = acc === 4 ? check('subscribe') : acc === 2 ? check('publish') : acc === 1 ? check('read') : [check('read'), check('publish')].find((v) => !v.ok) ?? ALLOW;
    goAuth(res, verdict.ok, verdict.ok ? '' : verdict.why);
  });

  router.use((req: Request, res: Response) => {
    sendError(res, 'BAD_REQUEST', `no route ${req.method} /broker${req.path} (the hooks are POST /broker/auth, /broker/acl and /broker/go-auth/user|superuser|acl)`, 404);
  });

  router.use((error: Error, _req: Request, res: Response, _next: NextFunction) => {
    log.error({ err: error }, 'broker hook failed');
    sendError(res, 'INTERNAL', ERROR_CODES.INTERNAL.summary);
  });

  return router;
}
