/**
 * The outbox of changes for a Mosquitto's dynamic-security plugin (`--broker-dynsec`,
 * docs/broker-dynsec.md). The plugin's createClient and setClientPassword take the password
 * in plaintext, which only the process that makes a token ever holds (the CLI may be another
 * process than the hub): so while the database is marked as kept in step with a broker,
 * the store methods that give or take credentials write the plugin's commands here, in
 * their own transaction, and the hub sends them (src/external/dynsec.ts) and deletes each
 * row once the broker has answered it. A plaintext is kept only until then.
 */
import { HubError } from '../errors.js';
import { deviceCredentialCommands, deviceRoleName, removalCommands, tokenCredentialCommands, tokenRoleName, type DynsecCommand } from '../auth/dynsec-roles.js';
import type { Role } from '../auth/roles.js';
import { Topics } from '../protocol/topics.js';
import type { Db } from './db.js';

/** The marker row's name: one broker plugin kept in step, for now. */
const DYNSEC = 'dynsec';

/** What the hub wrote when it marked the database: what the commands are built with. */
export interface DynsecMarker {
  topicPrefix: string;
  /** The hub's own user name on the broker: never a device's or a token's. */
  hubUsername: string;
  since: number;
}

export interface OutboxRow {
  seq: number;
  /** `device:ID` or `token:NAME`: whose credentials. */
  subject: string;
  commands: DynsecCommand[];
  /** Words for the hub's log instead of commands (an accepted device the broker cannot know). */
  notice: string | null;
}

export const deviceSubject = (id: string): string => `device:${id}`;
export const tokenSubject = (name: string): string => `token:${name}`;

export class BrokerOutbox {
  private readonly readMarker;
  private readonly insert;

  constructor(private readonly db: Db) {
    this.readMarker = db.prepare<[string], { settings: string; since: number }>('SELECT settings, since FROM broker_sync WHERE name = ?');
    this.insert = db.prepare<[string, string, string | null, number]>('INSERT INTO broker_outbox (subject, commands, notice, created_at) VALUES (?, ?, ?, ?)');
  }

  /** The marker, or null when no broker is kept in step with this database. */
  marker(): DynsecMarker | null {
    const row = this.readMarker.get(DYNSEC);
    if (!row) return null;
    const settings = JSON.parse(row.settings) as { topicPrefix: string; hubUsername: string };
    return { topicPrefix: settings.topicPrefix, hubUsername: settings.hubUsername, since: row.since };
  }

  get synced(): boolean {
    return this.marker() !== null;
  }

  /** The hub at start, with --broker-dynsec: from now on every credential change is queued. */
  mark(topicPrefix: string, hubUsername: string): void {
    const settings = JSON.stringify({ topicPrefix, hubUsername });
    this.db
      .prepare(`INSERT INTO broker_sync (name, settings, since) VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE SET settings = excluded.settings`)
      .run(DYNSEC, settings, Date.now());
  }

  /** The hub at start without --broker-dynsec: nothing is queued any more; returns how many rows were dropped. */
  unmark(): number {
    return this.db.transaction(() => {
      this.db.prepare('DELETE FROM broker_sync WHERE name = ?').run(DYNSEC);
      return this.db.prepare('DELETE FROM broker_outbox').run().changes;
    })();
  }

  /** Device `id` gets (add) or changes (rotate) its token. Call inside the store's transaction. */
  deviceCredentials(id: string, token: string): void {
    const marker = this.marker();
    if (!marker) return;
    this.refuseTakenName('device', id, marker);
    this.queue(deviceSubject(id), deviceCredentialCommands(new Topics(marker.topicPrefix), id, token));
  }

  deviceRemoved(id: string): void {
    if (!this.synced) return;
    this.queue(deviceSubject(id), removalCommands(id, deviceRoleName(id)));
  }

  /** A pending device accepted: the broker cannot be given its token, known only as a hash. */
  deviceAccepted(id: string): void {
    if (!this.synced) return;
    this.queue(deviceSubject(id), [], `device ${id} was accepted, but the broker has no credentials for it (its token is known only as a hash): rotate its token (rhizosphere device rotate ${id}) and give the device the new one`);
  }

  tokenCredentials(name: string, role: Role, secret: string): void {
    const marker = this.marker();
    if (!marker) return;
    this.refuseTakenName('token', name, marker);
    this.queue(tokenSubject(name), tokenCredentialCommands(new Topics(marker.topicPrefix), name, role, secret));
  }

  tokenRemoved(name: string): void {
    if (!this.synced) return;
    this.queue(tokenSubject(name), removalCommands(name, tokenRoleName(name)));
  }

  /** Reconciling queues its own commands here, so they keep their order with the CLI's. */
  queueCommands(subject: string, commands: DynsecCommand[]): void {
    if (commands.length > 0) this.queue(subject, commands);
  }

  /** The oldest rows first. */
  pending(limit: number): OutboxRow[] {
    return this.db
      .prepare<[number], { seq: number; subject: string; commands: string; notice: string | null }>('SELECT seq, subject, commands, notice FROM broker_outbox ORDER BY seq LIMIT ?')
      .all(limit)
      .map((row) => ({ seq: row.seq, subject: row.subject, commands: JSON.parse(row.commands) as DynsecCommand[], notice: row.notice }));
  }

  /** The subjects that have rows waiting: reconciling leaves them alone. */
  pendingSubjects(): Set<string> {
    return new Set(this.db.prepare<[], { subject: string }>('SELECT DISTINCT subject FROM broker_outbox').all().map((row) => row.subject));
  }

  count(): number {
    return this.db.prepare<[], { n: number }>('SELECT count(*) AS n FROM broker_outbox').get()?.n ?? 0;
  }

  /** Rows the broker has answered. */
  delete(seqs: readonly number[]): void {
    const remove = this.db.prepare<[number]>('DELETE FROM broker_outbox WHERE seq = ?');
    this.db.transaction(() => {
      for (const seq of seqs) remove.run(seq);
    })();
  }

  private queue(subject: string, commands: DynsecCommand[], notice: string | null = null): void {
    this.insert.run(subject, JSON.stringify(commands), notice, Date.now());
  }

  /**
   * On the broker, a device id and a token name are both user names, and the hub's own is
   * one too: giving one of them to another would take over (or delete) that user.
   */
  private refuseTakenName(kind: 'device' | 'token', name: string, marker: DynsecMarker): void {
    if (name === marker.hubUsername) throw new HubError('BAD_REQUEST', `${name} is the hub's own user name on the broker (--broker-username): choose another ${kind === 'device' ? 'device id' : 'token name'}`);
    const other =
      kind === 'device'
        ? this.db.prepare<[string], { one: number }>('SELECT 1 AS one FROM tokens WHERE name = ?').get(name)
        : this.db.prepare<[string], { one: number }>('SELECT 1 AS one FROM devices WHERE id = ? AND token_hash IS NOT NULL').get(name);
    if (other) throw new HubError('BAD_REQUEST', `${name} is already ${kind === 'device' ? 'a token name' : 'a device id'}: on a broker with dynamic security, device ids and token names share the broker's user names`);
  }
}
