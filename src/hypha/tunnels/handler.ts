/** What the manager needs from each kind of tunnel (shell, files, tcp). */
import type { Logger } from '../log.js';
import type { Channel } from './channel.js';
import type { SelfUpgrade } from '../self-upgrade.js';

export interface TunnelHandler {
  /** DATA from the hub, in order; the handler calls channel.consumed() once it is written. Absent: the kind takes no DATA. */
  data?(bytes: Buffer): void;
  /** `eof` from the hub. Absent: the kind takes no `eof`. */
  eof?(): void;
  /** `resize` from the hub (already checked). Absent: the kind takes no `resize`. */
  resize?(cols: number, rows: number): void;
  /** The tunnel ended, normally or not: release everything (idempotent; an unfinished upload is deleted here). */
  dispose(): Promise<void> | void;
}

/** Settings every handler may read. */
export interface TunnelContext {
  log: Logger;
  /** Real path of the directory file tunnels are confined to, when set (hypha --file-root). */
  fileRoot?: string;
  /** Largest file a file tunnel moves (hypha --max-file-bytes). */
  maxFileBytes: number;
  /** Loads node-pty; replaceable so a test can act as a device without it. */
  loadPty: () => Promise<unknown>;
  /** How this agent replaces itself; absent: agent_upgrade tunnels are UNSUPPORTED. */
  selfUpgrade?: SelfUpgrade;
}

/**
 * Starts a tunnel of one kind: sets it up, sends `opened`, and returns its handler; throws a
 * TunnelError (or any error, reported INTERNAL) when it cannot.
 */
export type TunnelOpener<Open> = (open: Open, channel: Channel, context: TunnelContext) => Promise<TunnelHandler>;
