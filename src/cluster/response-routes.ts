/**
 * In a cluster, a device's Response goes to the node that sent the command, and to no other.
 * Command ids start with the sending node's id and `~` (the dispatcher's prefix); the node
 * holding the device reads that off the Response's id and republishes it on
 * `P/cluster/nodes/{node}/responses/{device}`, which only that node subscribes to. Before,
 * every node subscribed to `P/devices/+/response` and decoded every Response of the fleet.
 */
import type { Aedes } from 'aedes';
import { peekId } from '../dispatcher.js';
import type { Topics } from '../protocol/topics.js';

export const NODE_SEPARATOR = '~';

/** The dispatcher's command id prefix for a node. */
export function commandIdPrefix(nodeId: string): string {
  return `${nodeId}${NODE_SEPARATOR}`;
}

/** The node that sent a command, from its id; null for an id without one. */
export function senderOf(commandId: string): string | null {
  const at = commandId.indexOf(NODE_SEPARATOR);
  return at > 0 ? commandId.slice(0, at) : null;
}

/**
 * For the node holding `device`: sends a Response to the node whose command it answers.
 * False when it is this node's own (or carries no node): the local dispatcher takes it.
 */
export function responseRouter(broker: Aedes, topics: Topics, self: string): (device: string, payload: Buffer | string) => boolean {
  return (device, payload) => {
    const id = peekId(payload);
    const node = id ? senderOf(id) : null;
    if (!node || node === self) return false;
    broker.publish({ cmd: 'publish', topic: topics.nodeResponse(node, device), payload: typeof payload === 'string' ? Buffer.from(payload) : payload, qos: 1, retain: false, dup: false }, () => {});
    return true;
  };
}
