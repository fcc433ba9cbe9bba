/**
 * Terminal recordings in asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/): a
 * header line, then one JSON array per event, `[seconds, "o"|"i"|"r", text]`. Each direction
 * has its own streaming decoder, so a UTF-8 sequence split across two DATA frames is written
 * whole. Writes go through a file stream; nothing waits for the disk on the relay's path.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../log.js';

/** A recording's id is the device-side tunnel id: 16 hex digits, safe as a file name. */
export const RECORDING_ID = /^[0-9a-f]{16}$/;

export function recordingPath(dir: string, id: string): string {
  if (!RECORDING_ID.test(id)) throw new Error(`not a recording id: ${JSON.stringify(id)}`);
  return join(dir, `${id}.cast`);
}

export interface CastHeader {
  width: number;
  height: number;
  term: string;
  title: string;
  /** Epoch ms of the start. */
  startedAt: number;
}

export class CastRecorder {
  private readonly stream: WriteStream;
  private readonly output = new TextDecoder('utf-8');
  private readonly input = new TextDecoder('utf-8');
  private readonly started: number;
  private failed = false;
  private closing: Promise<number> | null = null;

  constructor(
    readonly file: string,
    header: CastHeader,
    private readonly log: Logger,
  ) {
    this.started = header.startedAt;
    // 'wx': a recording is never overwritten (ids are random; a clash is a bug to see).
    this.stream = createWriteStream(file, { flags: 'wx', mode: 0o600 });
    this.stream.on('error', (error) => {
      if (!this.failed) log.warn({ err: error.message, file }, 'cannot write a terminal recording; the tunnel goes on unrecorded');
      this.failed = true;
    });
    this.line({
      version: 2,
      width: header.width,
      height: header.height,
      timestamp: Math.floor(header.startedAt / 1000),
      env: { TERM: header.term },
      title: header.title,
    });
  }

  /** Terminal output (device → client). */
  out(bytes: Uint8Array): void {
    this.event('o', this.output.decode(bytes, { stream: true }));
  }

  /** Keystrokes (client → device). */
  in(bytes: Uint8Array): void {
    this.event('i', this.input.decode(bytes, { stream: true }));
  }

  resize(cols: number, rows: number): void {
    this.event('r', `${cols}x${rows}`);
  }

  /** Flushes what the decoders hold and closes the file; resolves with its size in bytes. */
  close(): Promise<number> {
    this.closing ??= (() => {
      this.event('o', this.output.decode());
      this.event('i', this.input.decode());
      return new Promise<number>((resolve) => {
        if (this.failed) return resolve(this.stream.bytesWritten);
        this.stream.end(() => resolve(this.stream.bytesWritten));
      });
    })();
    return this.closing;
  }

  private event(code: 'o' | 'i' | 'r', text: string): void {
    if (text.length === 0) return;
    const seconds = Math.round((Date.now() - this.started) * 1000) / 1_000_000;
    this.line([seconds, code, text]);
  }

  private line(value: unknown): void {
    if (this.failed || this.closing) return;
    this.stream.write(`${JSON.stringify(value)}\n`);
  }
}
