/**
 * A file sent to a device by the hub itself (agent upgrades, deployments), through the tunnel
 * relay as a client inside the hub acting for `principal`: audited as that principal's tunnel,
 * flow-controlled like any upload, checked by the device against `sha256`.
 */
import type { Principal } from '../auth/roles.js';
import { ClientError, type TunnelEnd, type TunnelSpec } from '../client/index.js';
import { Tunnel } from '../client/tunnel.js';
import { isErrorCode, type ErrorCode } from '../errors.js';
import { decodeFrame, MAX_DATA_BYTES } from '../protocol/tunnel.js';
import type { TunnelRelay } from './relay.js';

export type UploadOutcome = { ok: true; end: TunnelEnd } | { ok: false; code: ErrorCode; message: string };

let uploads = 0;

/** Sends `chunks` (at most 64 KiB each is best; larger are split) as the tunnel `spec` (file_put or agent_upgrade). */
export async function uploadFromHub(
  relay: TunnelRelay,
  principal: Principal,
  remote: string | null,
  device: string,
  spec: TunnelSpec,
  chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
): Promise<UploadOutcome> {
  const local = relay.localClient(principal, remote);
  const tunnelId = `hub-upload-${++uploads}`;
  const tunnel = new Tunnel(tunnelId, device, spec, {
    inTopic: '',
    publish: async (_topic, frame) => local.send(tunnelId, frame),
    forget: () => local.close(),
  });
  local.onFrame = (clientTunnel, frame) => {
    if (clientTunnel === tunnelId) tunnel.receiveFrame(decodeFrame(frame));
  };
  tunnel.start();
  try {
    await tunnel.opened;
    for await (const chunk of chunks) {
      for (let offset = 0; offset < chunk.byteLength; offset += MAX_DATA_BYTES) {
        await tunnel.write(chunk.subarray(offset, Math.min(chunk.byteLength, offset + MAX_DATA_BYTES)));
      }
    }
    await tunnel.eof();
    const end = await tunnel.ended;
    if (end.reason === 'error') return { ok: false, code: isErrorCode(end.code) ? end.code : 'INTERNAL', message: end.message ?? 'the tunnel ended with an error' };
    return { ok: true, end };
  } catch (error) {
    void tunnel.close();
    const code = error instanceof ClientError && isErrorCode(error.code) ? error.code : 'INTERNAL';
    return { ok: false, code, message: (error as Error).message };
  } finally {
    local.close();
  }
}
