/**
 * The control frames hypha acts on, checked once at the edge (docs/protocol.md "Remote access:
 * tunnels"): the `open` (shared with the hub, src/protocol/tunnel-open.ts), `resize` and `ack`.
 */
import { z } from 'zod';
import { validate, type Validation } from '../../protocol/schemas.js';
import { byteCount, terminalSize } from '../../protocol/tunnel-open.js';

export {
  DEFAULT_COLS,
  DEFAULT_FILE_MODE,
  DEFAULT_ROWS,
  DEFAULT_TERM,
  MAX_WINDOW_BYTES,
  parseOpen,
  type FileGetOpenRequest,
  type FilePutOpenRequest,
  type AgentUpgradeOpenRequest,
  type OpenRequest,
  type ShellOpenRequest,
  type TcpOpenRequest,
} from '../../protocol/tunnel-open.js';

/** `resize`: the new terminal size, or what is wrong with it. */
export function parseResize(control: unknown): Validation<{ cols: number; rows: number }> {
  return validate(z.object({ cols: terminalSize, rows: terminalSize }), control);
}

/** `ack`: the cumulative byte count, or what is wrong with it. */
export function parseAck(control: unknown): Validation<{ bytes: number }> {
  return validate(z.object({ bytes: byteCount }), control);
}
