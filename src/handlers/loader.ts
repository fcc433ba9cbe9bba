/**
 * Loads and runs the server-side handlers the config names (docs/handlers.md), after
 * node-red's loader: each module is imported and handed a context object built for it
 * alone. The context records everything it hands out (listeners, broker subscriptions,
 * the router, timers), so stopping a handler releases all of it without its help, and an
 * error thrown in any callback is caught, logged under the handler's name and goes no further.
 */
import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Aedes, AedesPublishPacket } from 'aedes';
import express, { type NextFunction, type Request, type Response, type Router } from 'express';
import type { Authenticator } from '../auth/authenticator.js';
import { canRunCommands, type Principal } from '../auth/roles.js';
import type { HandlerSpec } from '../config.js';
import { HubError } from '../errors.js';
import type { ExecCommand, Hub } from '../hub.js';
import type { Logger } from '../log.js';
import type { Db } from '../store/db.js';
import type { Status } from '../protocol/schemas.js';
import { requirePrincipal } from '../web-auth.js';
import { isHandler, type Handler, type HandlerContext, type HandlerEventName, type HandlerEvents, type HandlerStore, type MessageListener, type StopFunction } from './contract.js';

/** A start that takes longer than this ends the hub's start. */
export const HANDLER_START_TIMEOUT_MS = 30_000;
/** A stop that takes longer than this is abandoned (and logged) so the hub still closes. */
export const HANDLER_STOP_TIMEOUT_MS = 2_000;
export const STORE_VALUE_MAX_BYTES = 1024 * 1024;
const BODY_LIMIT = '1mb';

/** An error's message on one line (the CLI prints a start failure as one line). */
function oneLine(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.split('\n').map((line) => line.trim()).filter(Boolean).join(' ') || (error instanceof Error ? error.name : 'unknown error');
}

/** Where a handler's module is imported from: files by URL (relative to the working directory), packages by name. */
export function moduleSpecifier(module: string, baseDir = process.cwd()): string {
  if (module.startsWith('.') || isAbsolute(module)) return pathToFileURL(resolve(baseDir, module)).href;
  return module;
}

/** Picks the handler out of a module: its default export, or a named `handler`. */
function handlerOf(mod: Record<string, unknown>): Handler | null {
  for (const candidate of [mod.default, mod.handler]) if (isHandler(candidate)) return candidate;
  return null;
}

function withTimeout<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
    timer.unref();
    work.then(
      (value) => {
        clearTimeout(timer);
        resolvePromise(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}

export interface HandlerHostOptions {
  log: Logger;
  broker: Aedes;
  db: Db;
  auth: Authenticator;
}

/** A handler that failed to load or start: the hub's start ends with this (see StartError). */
export class HandlerStartError extends Error {
  constructor(
    readonly handler: string,
    readonly module: string,
    readonly stage: 'load' | 'start',
    options: { cause: unknown },
  ) {
    super(`handler "${handler}" (module ${module}) ${stage === 'load' ? 'failed to load' : 'failed to start'}: ${oneLine(options.cause)}`, options);
    this.name = 'HandlerStartError';
  }
}

/** One running handler and everything its context handed out. */
class RunningHandler {
  readonly controller = new AbortController();
  readonly router: Router = express.Router();
  private readonly releases = new Set<() => void | Promise<void>>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private ownStop: StopFunction | null = null;
  stopped = false;
  /** Errors caught from its callbacks since it started. */
  errors = 0;
  readonly context: HandlerContext;

  constructor(
    readonly spec: HandlerSpec,
    private readonly hub: Hub,
    private readonly host: HandlerHostOptions,
    readonly log: Logger,
  ) {
    this.context = this.makeContext();
  }

  /** Runs a callback of the handler's; whatever it throws (or rejects with) is logged here and stops here. */
  guard<A extends unknown[]>(where: string, callback: (...args: A) => unknown): (...args: A) => void {
    return (...args: A) => {
      if (this.stopped) return;
      try {
        const result = callback(...args);
        if (result instanceof Promise) result.catch((error: unknown) => this.failed(where, error));
      } catch (error) {
        this.failed(where, error);
      }
    };
  }

  failed(where: string, error: unknown): void {
    this.errors++;
    this.log.error({ err: error, where }, `handler ${this.spec.name}: error in ${where} (isolated; the handler keeps running)`);
  }

  private track(release: () => void | Promise<void>): () => void {
    let done = false;
    const once = () => {
      if (done) return;
      done = true;
      this.releases.delete(once);
      return release();
    };
    this.releases.add(once);
    return () => void once();
  }

  private alive(what: string): void {
    if (this.stopped) throw new HubError('INTERNAL', `handler ${this.spec.name} is stopped (${what})`);
  }

  private makeContext(): HandlerContext {
    const { hub, host, spec } = this;
    const name = spec.name;
    const topics = hub.topics;
    const own = `${topics.prefix}/handlers/${name}`;
    const relative = (topic: string) => (topic.startsWith(`${topics.prefix}/`) ? topic.slice(topics.prefix.length + 1) : topic);
    const checkTopic = (topic: string, what: string) => {
      if (typeof topic !== 'string' || topic.length === 0 || topic.startsWith('/') || topic.includes('\u0000')) {
        throw new HubError('BAD_REQUEST', `${what} must be a non-empty topic relative to ${what === 'filter' ? `the prefix ${topics.prefix}/` : `${own}/`}, without a leading /`);
      }
    };

    const subscribe = (filter: string, listener: MessageListener): Promise<() => void> => {
      this.alive('subscribe');
      checkTopic(filter, 'filter');
      const absolute = `${topics.prefix}/${filter}`;
      const guarded = this.guard(`a message on ${filter}`, listener);
      const deliver = (packet: AedesPublishPacket, done: () => void) => {
        guarded(relative(packet.topic), Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload));
        done();
      };
      return new Promise((resolveSub) => {
        host.broker.subscribe(absolute, deliver, () => {
          resolveSub(this.track(() => new Promise<void>((r) => host.broker.unsubscribe(absolute, deliver, () => r()))));
        });
      });
    };

    const on = <E extends HandlerEventName>(event: E, listener: (...args: HandlerEvents[E]) => void | Promise<void>): (() => void) => {
      this.alive('on');
      const guarded = this.guard(`an ${event} listener`, listener as (...args: unknown[]) => unknown);
      switch (event) {
        case 'online':
        case 'offline': {
          const emitter = hub as unknown as NodeJS.EventEmitter;
          emitter.on(event, guarded);
          return this.track(() => void emitter.off(event, guarded));
        }
        case 'status':
        case 'telemetry': {
          // The broker subscription is made at once; messages before it is in place are missed.
          const filter = event === 'status' ? `devices/+/status` : `devices/+/telemetry/#`;
          let unsubscribe: (() => void) | null = null;
          let removed = false;
          void subscribe(filter, (topic, payload) => {
            const parsed = topics.parseDeviceTopic(`${topics.prefix}/${topic}`);
            if (!parsed) return;
            let json: unknown;
            if (payload.length > 0) {
              try {
                json = JSON.parse(payload.toString('utf8'));
              } catch {
                json = undefined;
              }
            }
            if (event === 'status') {
              if (parsed.kind !== 'status') return;
              guarded(parsed.id, (json ?? null) as Status | null);
            } else {
              if (parsed.kind !== 'telemetry') return;
              const subtopic = topic.split('/').slice(3).join('/');
              guarded({ device: parsed.id, subtopic, payload, json });
            }
          }).then((off) => {
            unsubscribe = off;
            if (removed) off();
          });
          return () => {
            removed = true;
            unsubscribe?.();
          };
        }
        default:
          throw new HubError('BAD_REQUEST', `no event "${String(event)}" (online, offline, status, telemetry)`);
      }
    };

    const store = this.makeStore();
    const timer = (kind: 'timeout' | 'interval', callback: () => void | Promise<void>, ms: number): NodeJS.Timeout => {
      this.alive(kind === 'timeout' ? 'setTimeout' : 'setInterval');
      const guarded = this.guard(kind === 'timeout' ? 'a timer' : 'an interval', callback);
      const handle: NodeJS.Timeout =
        kind === 'timeout'
          ? setTimeout(() => {
              this.timers.delete(handle);
              guarded();
            }, ms)
          : setInterval(guarded, ms);
      this.timers.add(handle);
      return handle;
    };

    return {
      name,
      options: spec.options,
      log: this.log,
      devices: {
        get: (id) => hub.device(id),
        list: () => hub.devices(),
        online: () => hub.devices().filter((device) => device.online),
        status: (id) => hub.status(id),
      },
      on,
      exec: async (deviceId: string, command: ExecCommand) => {
        this.alive('exec');
        return hub.exec(deviceId, command, { clientId: `handler:${name}`, via: 'api', actor: name, actorKind: 'handler' });
      },
      jobs: {
        create: (spec) => {
          this.alive('jobs.create');
          return hub.jobs.create(spec, { actor: name, actorKind: 'handler' });
        },
        get: (id) => hub.jobs.get(id),
        cancel: (id) => hub.jobs.cancel(id),
        list: (limit) => hub.jobs.list(limit),
      },
      state: {
        get: (deviceId) => hub.state.get(deviceId),
        setDesired: (deviceId, patch, options = {}) => {
          this.alive('state.setDesired');
          return hub.state.setDesired(deviceId, patch, { replace: options.replace === true, by: { actor: name, actorKind: 'handler' } });
        },
      },
      publish: (topic, payload, options = {}) => {
        this.alive('publish');
        checkTopic(topic, 'topic');
        const bytes = Buffer.isBuffer(payload) ? payload : Buffer.from(typeof payload === 'string' ? payload : JSON.stringify(payload));
        return new Promise<void>((resolvePublish, reject) => {
          host.broker.publish({ cmd: 'publish', topic: `${own}/${topic}`, payload: bytes, qos: options.qos ?? 1, retain: options.retain ?? false, dup: false }, (error) =>
            error ? reject(error) : resolvePublish(),
          );
        });
      },
      topic: (topic) => `${own}/${topic}`,
      subscribe,
      router: this.router,
      store,
      signal: this.controller.signal,
      setTimeout: (callback, ms) => timer('timeout', callback, ms),
      setInterval: (callback, ms) => timer('interval', callback, ms),
    } satisfies HandlerContext;
  }

  private makeStore(): HandlerStore {
    const { db } = this.host;
    const handler = this.spec.name;
    const select = db.prepare<[string, string], { value: string }>('SELECT value FROM handler_kv WHERE handler = ? AND key = ?');
    const upsert = db.prepare('INSERT INTO handler_kv (handler, key, value, updated_at) VALUES (?, ?, ?, ?) ON CONFLICT (handler, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at');
    const remove = db.prepare('DELETE FROM handler_kv WHERE handler = ? AND key = ?');
    const keys = db.prepare<[string], { key: string }>('SELECT key FROM handler_kv WHERE handler = ? ORDER BY key');
    const checkKey = (key: string) => {
      if (typeof key !== 'string' || key.length === 0 || key.length > 1024) throw new HubError('BAD_REQUEST', 'a store key must be a string of 1 to 1024 characters');
    };
    return {
      get: <T>(key: string) => {
        checkKey(key);
        const row = select.get(handler, key);
        return row ? (JSON.parse(row.value) as T) : undefined;
      },
      set: (key, value) => {
        checkKey(key);
        const json = JSON.stringify(value);
        if (json === undefined) throw new HubError('BAD_REQUEST', `the value of "${key}" cannot be stored as JSON`);
        if (Buffer.byteLength(json) > STORE_VALUE_MAX_BYTES) throw new HubError('PAYLOAD_TOO_LARGE', `the value of "${key}" is over ${STORE_VALUE_MAX_BYTES} bytes of JSON`);
        upsert.run(handler, key, json, Date.now());
      },
      delete: (key) => {
        checkKey(key);
        return remove.run(handler, key).changes > 0;
      },
      keys: () => keys.all(handler).map((row) => row.key),
    };
  }

  async start(handler: Handler): Promise<void> {
    const started = typeof handler === 'function' ? handler(this.context) : handler.start(this.context);
    const returned = await withTimeout(Promise.resolve(started), HANDLER_START_TIMEOUT_MS, 'start');
    if (typeof returned === 'function') this.ownStop = returned;
    else if (typeof handler !== 'function' && typeof handler.stop === 'function') this.ownStop = () => handler.stop!();
  }

  /**
   * Stops it: no more events, routes (404) or timers at once; then its own stop (which may
   * still publish or write its store); then its broker subscriptions go.
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.controller.abort(new Error(`handler ${this.spec.name} stopped`));
    for (const handle of this.timers) clearTimeout(handle);
    this.timers.clear();
    const ownStop = this.ownStop;
    this.ownStop = null;
    if (ownStop) {
      try {
        await withTimeout(Promise.resolve().then(ownStop), HANDLER_STOP_TIMEOUT_MS, 'stop');
      } catch (error) {
        this.failed('stop', error);
      }
    }
    this.stopped = true;
    for (const release of [...this.releases]) {
      try {
        await release();
      } catch (error) {
        this.log.warn({ err: error }, 'error while releasing a handler resource');
      }
    }
    for (const handle of this.timers) clearTimeout(handle);
    this.timers.clear();
  }
}

/** What the hub shows of its handlers. */
export interface HandlerState {
  name: string;
  module: string;
  /** Errors caught from its callbacks since it started. */
  errors: number;
}

/**
 * The handlers of one hub: `router` is mounted at `/handlers` by the hub (behind the REST
 * API's authentication), `startAll` loads and starts them in order, `stopAll` stops them
 * in reverse.
 */
export class HandlerHost {
  /** Mounted by the hub at `/handlers`. */
  readonly router: Router;
  private readonly running = new Map<string, RunningHandler>();

  constructor(private readonly options: HandlerHostOptions) {
    const router = express.Router();
    const json = express.json({ limit: BODY_LIMIT });
    router.use('/:name', requirePrincipal(options.auth), (req: Request<{ name: string }>, res: Response, next: NextFunction) => {
      const running = this.running.get(req.params.name);
      if (!running || running.stopped) return next();
      const principal = res.locals.principal as Principal;
      if (principal.kind === 'device') {
        res.status(403).json({ status: 'error', code: 'FORBIDDEN', message: 'devices may not use handler routes' });
        return;
      }
      if (req.method !== 'GET' && req.method !== 'HEAD' && !canRunCommands(principal)) {
        res.status(403).json({ status: 'error', code: 'FORBIDDEN', message: `a ${principal.role} may only read (GET) the routes of handler ${running.spec.name}` });
        return;
      }
      json(req, res, (error?: unknown) => {
        if (error) {
          res.status(400).json({ status: 'error', code: 'BAD_REQUEST', message: 'body is not valid JSON or too large' });
          return;
        }
        running.router(req, res, (routeError?: unknown) => {
          if (routeError && routeError !== 'router' && routeError !== 'route') {
            running.failed(`route ${req.method} ${req.originalUrl}`, routeError);
            if (!res.headersSent) res.status(500).json({ status: 'error', code: 'INTERNAL', message: `handler ${running.spec.name} failed on this request` });
            else res.end();
            return;
          }
          next();
        });
      });
    });
    router.use('/:name', (req: Request<{ name: string }>, res: Response) => {
      res.status(404).json({ status: 'error', code: 'BAD_REQUEST', message: `no route ${req.method} ${req.originalUrl}` });
    });
    this.router = router;
  }

  list(): HandlerState[] {
    return [...this.running.values()].map((r) => ({ name: r.spec.name, module: r.spec.module, errors: r.errors }));
  }

  /**
   * Imports and starts each handler in order. On the first failure the ones already started
   * are stopped again and a HandlerStartError names the handler, its module and the cause.
   */
  async startAll(specs: readonly HandlerSpec[], hub: Hub): Promise<void> {
    for (const spec of specs) {
      try {
        await this.startOne(spec, hub);
      } catch (error) {
        await this.stopAll();
        throw error;
      }
    }
  }

  private async startOne(spec: HandlerSpec, hub: Hub): Promise<void> {
    if (this.running.has(spec.name)) throw new HandlerStartError(spec.name, spec.module, 'load', { cause: new Error('a handler of that name is already running') });
    let mod: Record<string, unknown>;
    try {
      mod = (await import(moduleSpecifier(spec.module))) as Record<string, unknown>;
    } catch (error) {
      throw new HandlerStartError(spec.name, spec.module, 'load', { cause: error });
    }
    const handler = handlerOf(mod);
    if (!handler) {
      const cause = new Error('the module exports no handler (export default defineHandler(...), or export const handler = ...)');
      throw new HandlerStartError(spec.name, spec.module, 'load', { cause });
    }
    const log = this.options.log.child({ handler: spec.name });
    const running = new RunningHandler(spec, hub, this.options, log);
    this.running.set(spec.name, running);
    try {
      await running.start(handler);
    } catch (error) {
      await running.stop();
      this.running.delete(spec.name);
      throw new HandlerStartError(spec.name, spec.module, 'start', { cause: error });
    }
    log.info({ module: spec.module }, 'handler started');
  }

  /** Stops one handler: its listeners, subscriptions, routes and timers go. False when no such handler runs. */
  async stop(name: string): Promise<boolean> {
    const running = this.running.get(name);
    if (!running) return false;
    await running.stop();
    this.running.delete(name);
    running.log.info('handler stopped');
    return true;
  }

  /** Stops every handler, the last started first. */
  async stopAll(): Promise<void> {
    for (const name of [...this.running.keys()].reverse()) await this.stop(name);
  }
}
