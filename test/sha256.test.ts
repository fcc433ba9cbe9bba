/** The SDK's own SHA-256, fed in pieces, against Node's. */
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Sha256, sha256Hex } from '../src/client/index.js';

describe('SHA-256 in pieces', () => {
  it('matches node:crypto for every length around the block and padding edges, however it is fed', async () => {
    for (const length of [0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 65_536, 100_003]) {
      const data = randomBytes(length);
      const expected = createHash('sha256').update(data).digest('hex');
      const pieces = new Sha256();
      for (let at = 0; at < length; ) {
        const step = Math.min(length - at, 1 + ((at * 7) % 97));
        pieces.update(data.subarray(at, at + step));
        at += step;
      }
      expect(pieces.hex(), `${length} bytes in pieces`).toBe(expected);
      expect(await sha256Hex(data), `${length} bytes whole`).toBe(expected);
    }
    expect(new Sha256().update(new TextEncoder().encode('abc')).hex()).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  });
  it('takes nothing more once finished', () => {
    const hash = new Sha256();
    hash.hex();
    expect(() => hash.update(new Uint8Array(1))).toThrow(/already finished/);
  });
});
