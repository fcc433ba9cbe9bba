/** The Replies a hub task (agent upgrade, deployment) gives the job runner for one target. */
import type { ErrorCode } from '../errors.js';
import type { Reply } from '../protocol/schemas.js';

export const taskError = (device: string, code: ErrorCode, message: string): Reply => ({ type: 'response', id: null, device, status: 'error', code, message });

/** A success: `result` is what the target's row shows; `exitCode` of the last command run, 0 when none. */
export const taskDone = (device: string, result: string, exitCode = 0, error = ''): Reply => ({
  type: 'response',
  id: null,
  device,
  status: 'ok',
  result,
  error,
  exit_code: exitCode,
  duration_ms: null,
  truncated: false,
});
