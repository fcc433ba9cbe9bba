/**
 * A standalone hub's embedded broker, closing. What Aedes does for each connection as it ends
 * is for a broker that goes on serving, and with 19000 connections it took most of the 5 s the
 * hub needed to stop, which is how long devices are refused in a restart: each connection's
 * subscriptions taken out of the topic tree one by one (with a `$SYS` notice each), and each
 * device's will published to subscribers that are closing too, into a retained store that
 * lives in memory and ends with the process.
 *
 * Only for a broker whose subscriptions and retained messages live in this process: in a
 * cluster, Redis keeps routes, sessions and wills for the other nodes, so every connection
 * ends the long way there.
 */
import type { Aedes } from 'aedes';
import type { Duplex } from 'node:stream';

/** The parts of an Aedes client that its close reads (not in Aedes' typings). */
interface ClosingClient {
  subscriptions: Record<string, unknown>;
  will: unknown;
  conn: Duplex;
}

const clientsOf = (broker: Aedes): ClosingClient[] => Object.values((broker as unknown as { clients: Record<string, ClosingClient> }).clients);

/**
 * Before `broker.close()`: every connection ends without unsubscribing topic by topic and
 * without its will. The connections still close one by one, so presence records each device
 * offline and the dispatcher answers its commands in flight.
 */
export function skipPerClientTeardown(broker: Aedes): void {
  for (const client of clientsOf(broker)) {
    client.subscriptions = {};
    client.will = null;
  }
}

/**
 * How long a hub that exits gives the answers already under way (to commands in flight,
 * given a step before) to reach their sockets: a Reply's first delivery to a client goes
 * through Aedes' whole publish path, a few turns of the event loop.
 */
const EXIT_WRITE_GRACE_MS = 100;

/**
 * The process exits next (the CLI on SIGTERM): the broker reads nothing more from any
 * connection and is left open, so the kernel closes the connections at exit, all at once,
 * instead of Node and Aedes closing them one by one. Resolves once what is under way to them
 * has been written (outbound.ts holds writes corked until its own flush, done here too).
 */
export function leaveConnectionsToExit(broker: Aedes): Promise<void> {
  for (const client of clientsOf(broker)) {
    client.conn.removeAllListeners('readable');
    client.conn.pause();
  }
  return new Promise((resolve) =>
    setTimeout(() => {
      for (const client of clientsOf(broker)) while (client.conn.writableCorked > 0) client.conn.uncork();
      resolve();
    }, EXIT_WRITE_GRACE_MS),
  );
}
