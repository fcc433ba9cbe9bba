/**
 * The hub's connection to a Mosquitto's dynamic-security control topic
 * (`$CONTROL/dynamic-security/v1`, answers on `…/v1/response`), apart from the uplink so that
 * neither waits for the other. Commands go out in one message per batch, each with a
 * correlationData of this connection's own, and the batch resolves once the broker has
 * answered every command in it. The answer topic is shared by every administrator of the
 * broker (mosquitto_ctrl, other hubs): answers for commands this connection did not send,
 * and anything malformed, are ignored with a debug line.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type { IClientOptions, MqttClient } from 'mqtt';
import { connectMqtt } from './mqtt-connect.js';
import type { DynsecCommand } from '../auth/dynsec-roles.js';
import { StartError } from '../errors.js';
import type { Logger } from '../log.js';
import { credentialOptions, endGracefully, type UplinkCredentials } from './uplink.js';

export const CONTROL_TOPIC = '$CONTROL/dynamic-security/v1';
export const RESPONSE_TOPIC = '$CONTROL/dynamic-security/v1/response';

/** The broker's answer to one command: `error` when it refused, `data` for the commands that read. */
export interface DynsecAnswer {
  command: string;
  error?: string;
  data?: Record<string, unknown>;
}

/** No answer: the connection dropped, or the broker did not answer in time. The batch may be sent again. */
export class DynsecUnanswered extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DynsecUnanswered';
  }
}

export interface DynsecControlOptions extends UplinkCredentials {
  url: string;
  clientId: string;
  log: Logger;
  connectTimeoutMs?: number;
  reconnectPeriodMs?: number;
}

interface Batch {
  answers: (DynsecAnswer | undefined)[];
  left: number;
  resolve: (answers: DynsecAnswer[]) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
}

export class DynsecControl extends EventEmitter<{ up: []; down: [] }> {
  private client!: MqttClient;
  /** correlationData → its batch and place in it. */
  private readonly waiting = new Map<string, { batch: Batch; index: number }>();
  private readonly batches = new Set<Batch>();
  /** Tells this connection's correlation data from other administrators'. */
  private readonly tag = `rz-${randomBytes(6).toString('base64url')}`;
  private sequence = 0;
  private closing = false;
  private wasUp = false;

  private constructor(private readonly options: DynsecControlOptions) {
    super();
  }

  /** Connects and subscribes to the answers; a failure is a StartError naming --broker-dynsec. */
  static async open(options: DynsecControlOptions): Promise<DynsecControl> {
    const control = new DynsecControl(options);
    await control.firstConnect();
    return control;
  }

  get connected(): boolean {
    return this.client.connected;
  }

  /**
   * Sends the commands as one message; resolves with the broker's answers in the same order,
   * or rejects with DynsecUnanswered. The commands must not carry correlationData.
   */
  send(commands: readonly DynsecCommand[], timeoutMs = 10_000): Promise<DynsecAnswer[]> {
    if (commands.length === 0) return Promise.resolve([]);
    if (!this.client.connected) return Promise.reject(new DynsecUnanswered('no connection to the broker'));
    return new Promise<DynsecAnswer[]>((resolve, reject) => {
      const batch: Batch = {
        answers: new Array<DynsecAnswer | undefined>(commands.length),
        left: commands.length,
        resolve,
        reject,
        timer: setTimeout(() => this.fail(batch, new DynsecUnanswered(`no answer within ${timeoutMs} ms`)), timeoutMs),
      };
      this.batches.add(batch);
      const tagged = commands.map((command, index) => {
        const correlationData = `${this.tag}:${++this.sequence}`;
        this.waiting.set(correlationData, { batch, index });
        return { ...command, correlationData };
      });
      // QoS 1: the broker's plugin reads it once it has it; its answers come at QoS 0.
      this.client.publish(CONTROL_TOPIC, JSON.stringify({ commands: tagged }), { qos: 1 }, (error) => {
        if (error) this.fail(batch, new DynsecUnanswered(`publish failed: ${error.message}`));
      });
    });
  }

  /** Resolves on the next connect (at once when connected), or false after `timeoutMs`. */
  waitUp(timeoutMs: number): Promise<boolean> {
    if (this.client.connected) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.off('up', up);
        resolve(false);
      }, timeoutMs);
      const up = () => {
        clearTimeout(timer);
        resolve(true);
      };
      this.once('up', up);
    });
  }

  async close(): Promise<void> {
    this.closing = true;
    for (const batch of [...this.batches]) this.fail(batch, new DynsecUnanswered('closing'));
    await endGracefully(this.client);
  }

  private clientOptions(): IClientOptions {
    const { clientId } = this.options;
    return {
      clientId,
      protocolVersion: 4,
      // Nothing to keep across a drop: a batch without an answer is sent again.
      clean: true,
      keepalive: 30,
      reconnectPeriod: 0,
      connectTimeout: this.options.connectTimeoutMs ?? 10_000,
      resubscribe: false,
      ...credentialOptions(this.options),
    };
  }

  private async firstConnect(): Promise<void> {
    const { url, username } = this.options;
    const client = connectMqtt(url, this.clientOptions());
    const outcome = await new Promise<{ ok: true } | { ok: false; error: Error }>((resolve) => {
      client.once('connect', () => resolve({ ok: true }));
      client.once('error', (error) => resolve({ ok: false, error }));
      client.once('close', () => resolve({ ok: false, error: new Error('connection closed before CONNACK') }));
    });
    if (!outcome.ok) {
      client.end(true);
      throw new StartError(`--broker-dynsec: cannot open the hub's control connection to ${url} (${outcome.error.message})`, { cause: outcome.error });
    }
    this.client = client;
    const subscribed = await this.subscribe();
    if (!subscribed) {
      client.end(true);
      throw new StartError(
        `--broker-dynsec: ${url} refused the hub's subscription to ${RESPONSE_TOPIC}: --broker-username ${username ?? ''} needs the dynamic-security admin role (docs/broker-dynsec.md)`,
      );
    }
    this.wasUp = true;
    this.attach();
  }

  /** True when the broker granted the subscription to the answers. */
  private async subscribe(): Promise<boolean> {
    try {
      const granted = await this.client.subscribeAsync(RESPONSE_TOPIC, { qos: 1 });
      return granted.every((g) => (g.qos & 0x80) === 0);
    } catch {
      return false;
    }
  }

  private attach(): void {
    const { log, url } = this.options;
    this.client.options.reconnectPeriod = this.options.reconnectPeriodMs ?? 1000;
    this.client.on('message', (topic, payload) => {
      if (topic === RESPONSE_TOPIC) this.onAnswers(payload);
    });
    this.client.on('connect', () => {
      void this.subscribe().then((ok) => {
        if (!ok) log.error({ code: 'DYNSEC_REFUSED', broker: url }, `the broker refused the subscription to ${RESPONSE_TOPIC}: broker changes wait until the hub's user may administer dynamic security again`);
        this.wasUp = true;
        log.info({ broker: url }, 'dynamic-security control connection up');
        this.emit('up');
      });
    });
    this.client.on('error', (error) => log.debug({ broker: url, err: error.message }, 'dynamic-security control connection error'));
    this.client.on('close', () => {
      // The broker drops connections whose user's roles change (the hub's own, once, at the first start).
      for (const batch of [...this.batches]) this.fail(batch, new DynsecUnanswered('connection lost'));
      if (this.closing || !this.wasUp) return;
      this.wasUp = false;
      log.info({ broker: url }, 'dynamic-security control connection lost; it reconnects by itself');
      this.emit('down');
    });
  }

  private onAnswers(payload: Buffer): void {
    const { log } = this.options;
    let answers: unknown;
    try {
      answers = (JSON.parse(payload.toString('utf8')) as { responses?: unknown }).responses;
    } catch {
      log.debug({ bytes: payload.length }, 'dynamic-security answer that is not JSON: ignored');
      return;
    }
    if (!Array.isArray(answers)) {
      log.debug('dynamic-security answer without a responses array: ignored');
      return;
    }
    let foreign = 0;
    for (const answer of answers as unknown[]) {
      const { command, error, data, correlationData } = (answer ?? {}) as Record<string, unknown>;
      const place = typeof correlationData === 'string' ? this.waiting.get(correlationData) : undefined;
      if (!place || typeof command !== 'string') {
        foreign += 1;
        continue;
      }
      this.waiting.delete(correlationData as string);
      const { batch, index } = place;
      batch.answers[index] = {
        command,
        ...(typeof error === 'string' ? { error } : {}),
        ...(data !== null && typeof data === 'object' ? { data: data as Record<string, unknown> } : {}),
      };
      batch.left -= 1;
      if (batch.left === 0) this.settle(batch);
    }
    if (foreign > 0) log.debug({ answers: foreign }, 'dynamic-security answers for commands this hub did not send (or malformed): ignored');
  }

  private settle(batch: Batch): void {
    clearTimeout(batch.timer);
    this.batches.delete(batch);
    batch.resolve(batch.answers as DynsecAnswer[]);
  }

  private fail(batch: Batch, error: Error): void {
    if (!this.batches.delete(batch)) return;
    clearTimeout(batch.timer);
    for (const [key, place] of this.waiting) if (place.batch === batch) this.waiting.delete(key);
    batch.reject(error);
  }
}
