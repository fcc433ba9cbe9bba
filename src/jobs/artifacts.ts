/**
 * Artifacts for software deployment (docs/protocol.md "Software deployment"): files uploaded
 * once to the hub (`POST /api/artifacts`), kept under `<data-dir>/artifacts/` by their SHA-256,
 * and sent from there to each device of a `deploy` job. Uploads are streamed to a temporary
 * file and hashed on the way, never held in memory.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { HubError } from '../errors.js';
import type { ArtifactView } from '../protocol/schedules-artifacts.js';

/** A file name a device may keep as it is: no directories, no hidden files, no shell quoting needed. */
export function artifactNameProblem(name: string): string | null {
  if (!/^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$/.test(name)) return 'must be 1 to 128 of A-Z a-z 0-9 . _ + - (a file name, not starting with a dot or a dash)';
  return null;
}

export class ArtifactStore {
  private readonly dir: string;

  constructor(
    dataDir: string,
    private readonly maxBytes: number,
  ) {
    this.dir = join(dataDir, 'artifacts');
    mkdirSync(this.dir, { recursive: true });
  }

  /** Streams `body` in; resolves with the artifact (the same file uploaded twice is kept once). */
  async put(body: Readable, name: string, actor: string): Promise<ArtifactView> {
    const problem = artifactNameProblem(name);
    if (problem) throw new HubError('BAD_REQUEST', `name ${problem}`);
    const temp = join(this.dir, `.upload-${randomBytes(6).toString('hex')}`);
    const hash = createHash('sha256');
    let size = 0;
    const limit = this.maxBytes;
    try {
      await pipeline(
        body,
        async function* (source: AsyncIterable<Buffer>) {
          for await (const chunk of source) {
            size += chunk.length;
            if (size > limit) throw new HubError('PAYLOAD_TOO_LARGE', `the artifact is larger than ${limit} bytes (--max-file-bytes)`);
            hash.update(chunk);
            yield chunk;
          }
        },
        createWriteStream(temp, { mode: 0o600 }),
      );
    } catch (error) {
      if (existsSync(temp)) unlinkSync(temp);
      throw error;
    }
    if (size === 0) {
      unlinkSync(temp);
      throw new HubError('BAD_REQUEST', 'the artifact is empty');
    }
    const sha256 = hash.digest('hex');
    renameSync(temp, this.file(sha256));
    const artifact: ArtifactView = { sha256, name, size, uploaded_at: new Date().toISOString(), actor };
    writeFileSync(`${this.file(sha256)}.json`, `${JSON.stringify(artifact)}\n`);
    return artifact;
  }

  get(sha256: string): ArtifactView | undefined {
    if (!/^[0-9a-f]{64}$/.test(sha256)) return undefined;
    try {
      return JSON.parse(readFileSync(`${this.file(sha256)}.json`, 'utf8')) as ArtifactView;
    } catch {
      return undefined;
    }
  }

  list(): ArtifactView[] {
    return readdirSync(this.dir)
      .filter((entry) => entry.endsWith('.json'))
      .map((entry) => this.get(entry.slice(0, -5)))
      .filter((artifact): artifact is ArtifactView => artifact !== undefined)
      .sort((a, b) => b.uploaded_at.localeCompare(a.uploaded_at));
  }

  remove(sha256: string): boolean {
    if (!this.get(sha256)) return false;
    unlinkSync(this.file(sha256));
    unlinkSync(`${this.file(sha256)}.json`);
    return true;
  }

  /** The artifact's bytes as a stream (read from disk for each device, never all in memory). */
  read(sha256: string): Readable {
    return createReadStream(this.file(sha256), { highWaterMark: 64 * 1024 });
  }

  size(sha256: string): number {
    return statSync(this.file(sha256)).size;
  }

  private file(sha256: string): string {
    return join(this.dir, sha256);
  }
}
