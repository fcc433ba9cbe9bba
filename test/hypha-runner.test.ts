/**
 * The runner against real bash and real processes: orders, output capture, timeouts that
 * must take grandchildren with them, and the Runner's queue and concurrency cap.
 */
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { monotonicNow, runCommand, Runner, trimTrailingNewlines, type CommandResponse } from '../src/hypha/runner.js';
import type { Command, Order } from '../src/protocol/schemas.js';
import { isGone } from './helpers.js';

const scratch = mkdtempSync(join(tmpdir(), 'hypha-runner-'));
let counter = 0;
/** Process groups a test started and may leave behind on failure; killed after each test. */
const groupsToKill = new Set<number>();

afterEach(() => {
  for (const pgid of groupsToKill) {
    try {
      process.kill(-pgid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  groupsToKill.clear();
});

afterAll(() => rmSync(scratch, { recursive: true, force: true }));

function command(cmd_str: string, order: Order = 'exec_bash', timeout_ms = 10_000): Command {
  counter += 1;
  return { type: 'command', id: `t-${counter}`, order, cmd_str, timeout_ms };
}

function scratchFile(): string {
  counter += 1;
  return join(scratch, `f-${counter}`);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitUntil(condition: () => boolean, withinMs: number): Promise<boolean> {
  const end = Date.now() + withinMs;
  while (Date.now() < end) {
    if (condition()) return true;
    await sleep(20);
  }
  return condition();
}

/** Pids a command wrote to a file, one per line; the first is bash's own ($$), which is also its process group. */
function pidsIn(file: string): number[] {
  const pids = readFileSync(file, 'utf8').split('\n').filter(Boolean).map(Number);
  if (pids[0] !== undefined) groupsToKill.add(pids[0]);
  return pids;
}

async function timed(run: Promise<CommandResponse>): Promise<{ response: CommandResponse; ms: number }> {
  const start = Date.now();
  const response = await run;
  return { response, ms: Date.now() - start };
}

describe('exec_bash', () => {
  it('answers stdout, stderr and the exit status', async () => {
    const cmd = command('echo out; echo err >&2; exit 7');
    const response = await runCommand(cmd);
    expect(response).toMatchObject({ type: 'response', id: cmd.id, result: 'out', error: 'err', exit_code: 7, truncated: false });
    expect(response.code).toBeUndefined();
    expect(response.duration_ms).toBeGreaterThanOrEqual(0);
  });

  it('removes only the newlines at the very end of each stream', async () => {
    const response = await runCommand(command(`printf 'a\\n\\nb\\n\\n\\r\\n'; printf 'x\\r\\n\\n' >&2`));
    expect(response.result).toBe('a\n\nb');
    expect(response.error).toBe('x');
    expect((await runCommand(command(`printf ' y\\r'`))).result).toBe(' y\r');
    expect((await runCommand(command('true'))).result).toBe('');
  });

  it('trims a long run of newlines without a regex blow-up', () => {
    expect(trimTrailingNewlines(`${'\n'.repeat(500_000)}x\n`)).toBe(`${'\n'.repeat(500_000)}x`);
    expect(trimTrailingNewlines('\r\n\r\n')).toBe('');
  });

  it('reports a death by signal as 128 + the signal number', async () => {
    expect((await runCommand(command('kill -TERM $$'))).exit_code).toBe(143);
    expect((await runCommand(command('kill -KILL $$'))).exit_code).toBe(137);
  });

  it('caps each stream at 1 MiB by default and says so', async () => {
    const response = await runCommand(command(`head -c 3000000 /dev/zero | tr '\\0' a; head -c 2000000 /dev/zero | tr '\\0' b >&2`));
    expect(response.exit_code).toBe(0);
    expect(response.truncated).toBe(true);
    expect(response.result).toBe('a'.repeat(1_048_576));
    expect(response.error).toBe('b'.repeat(1_048_576));
  });

  it('keeps reading past a low cap so the child never blocks on a full pipe', async () => {
    const response = await runCommand(command('echo 0123456789abcdef; head -c 3000000 /dev/zero; echo done >&2', 'exec_bash', 5000), { outputCap: 10 });
    expect(response).toMatchObject({ result: '0123456789', error: 'done', exit_code: 0, truncated: true });
  });

  it('is not truncated at exactly the cap, and decodes a character cut by the cap as U+FFFD', async () => {
    expect(await runCommand(command('printf 0123456789'), { outputCap: 10 })).toMatchObject({ result: '0123456789', truncated: false });
    expect(await runCommand(command(`printf 'a\\xc3\\xa9'`), { outputCap: 2 })).toMatchObject({ result: 'a\uFFFD', truncated: true });
  });

  it('answers 200 ms after bash exits when a background child keeps the pipes open', async () => {
    const file = scratchFile();
    const { response, ms } = await timed(runCommand(command(`echo $$ > ${file}; sleep 100 & echo hi`)));
    pidsIn(file);
    expect(response).toMatchObject({ result: 'hi', exit_code: 0 });
    expect(ms).toBeGreaterThanOrEqual(150);
    expect(ms).toBeLessThan(1000);
  });

  it('answers INTERNAL when bash cannot be started', async () => {
    const response = await runCommand(command('true'), { bash: '/nonexistent/bash' });
    expect(response).toMatchObject({ code: 'INTERNAL', result: null, exit_code: null });
    expect(response.message).toMatch(/ENOENT/);
    const detached = await runCommand(command('true', 'exec_bash_no_return'), { bash: '/nonexistent/bash' });
    expect(detached).toMatchObject({ code: 'INTERNAL', result: null });
  });
});

describe('exec_bash_ret_okng_only', () => {
  it('never says truncated, however much the command printed', async () => {
    const response = await runCommand(command('seq 1 100000; seq 1 100000 >&2', 'exec_bash_ret_okng_only'));
    expect(response).toMatchObject({ result: 'ok', error: '', truncated: false, exit_code: 0 });
  });

  it('answers ok or ng with the exit status and no output', async () => {
    expect(await runCommand(command('echo noise; true', 'exec_bash_ret_okng_only'))).toMatchObject({ result: 'ok', error: '', exit_code: 0 });
    expect(await runCommand(command('echo noise >&2; exit 4', 'exec_bash_ret_okng_only'))).toMatchObject({ result: 'ng', error: '', exit_code: 4 });
  });
});

describe('exec_bash_no_return', () => {
  it('answers as soon as bash started and lets it run on past the timeout', async () => {
    const file = scratchFile();
    const receivedAt = monotonicNow();
    const { response, ms } = await timed(runCommand(command(`echo $$ > ${file}; sleep 5`, 'exec_bash_no_return', 1000), { receivedAt }));
    expect(response).toMatchObject({ result: null, error: '', exit_code: null, truncated: false });
    expect(response.code).toBeUndefined();
    expect(ms).toBeLessThan(1000);
    expect(await waitUntil(() => existsSync(file) && readFileSync(file, 'utf8').endsWith('\n'), 2000)).toBe(true);
    const [bash] = pidsIn(file);
    await sleep(Math.max(0, receivedAt + 1300 - monotonicNow()));
    expect(isGone(bash!)).toBe(false);
  });
});

describe('timeouts', () => {
  it('kills the whole process group, grandchildren included, and answers TIMEOUT with the partial output', async () => {
    const file = scratchFile();
    const script = [
      `echo $$ > ${file}`,
      `(sleep 300 & echo $! >> ${file}; sleep 300) & echo $! >> ${file}`,
      `sleep 300 & echo $! >> ${file}`,
      'echo partial; echo perr >&2; wait',
    ].join('; ');
    // Received 700 ms ago with 1000 ms to go: the deadline is 300 ms away.
    const { response, ms } = await timed(runCommand(command(script, 'exec_bash', 1000), { receivedAt: monotonicNow() - 700 }));
    expect(response).toMatchObject({ code: 'TIMEOUT', message: 'killed after 1000 ms', result: 'partial', error: 'perr', exit_code: null });
    expect(ms).toBeGreaterThanOrEqual(250);
    expect(ms).toBeLessThan(900);
    const pids = pidsIn(file);
    expect(pids).toHaveLength(4);
    expect(await waitUntil(() => pids.every(isGone), 500)).toBe(true);
  });

  it('sends SIGKILL 1 s later to a group that ignores SIGTERM', async () => {
    const file = scratchFile();
    const script = `trap '' TERM; echo $$ > ${file}; sleep 300 & echo $! >> ${file}; wait`;
    const { response, ms } = await timed(runCommand(command(script, 'exec_bash', 1000), { receivedAt: monotonicNow() - 800 }));
    expect(response).toMatchObject({ code: 'TIMEOUT', exit_code: null });
    expect(ms).toBeGreaterThanOrEqual(1100);
    expect(ms).toBeLessThan(2500);
    const pids = pidsIn(file);
    expect(pids).toHaveLength(2);
    expect(await waitUntil(() => pids.every(isGone), 500)).toBe(true);
  });

  it('counts the deadline from receipt, and does not run a command whose deadline has passed', async () => {
    const { response, ms } = await timed(runCommand(command('sleep 5', 'exec_bash', 10_000), { receivedAt: monotonicNow() - 9700 }));
    expect(response.code).toBe('TIMEOUT');
    expect(ms).toBeLessThan(1000);

    const file = scratchFile();
    const expired = await runCommand(command(`touch ${file}`, 'exec_bash', 1000), { receivedAt: monotonicNow() - 2000 });
    expect(expired).toMatchObject({ code: 'TIMEOUT', result: null });
    await sleep(100);
    expect(existsSync(file)).toBe(false);
  });
});

describe('Runner', () => {
  it('never runs more than maxConcurrent commands at once', async () => {
    const runner = new Runner({ maxConcurrent: 2 });
    const script = 'start=$(date +%s%N); sleep 0.3; echo $start $(date +%s%N)';
    const responses = await Promise.all(Array.from({ length: 5 }, () => runner.submit(command(script))));
    const intervals = responses.map((r) => r.result!.split(' ').map((ns) => Number(BigInt(ns) / 1_000_000n)) as [number, number]);
    const mostAtOnce = Math.max(...intervals.map(([start]) => intervals.filter(([s, e]) => s <= start && start < e).length));
    expect(mostAtOnce).toBe(2);
  });

  it('answers BUSY at once when the queue is full', async () => {
    const runner = new Runner({ maxConcurrent: 1, maxQueue: 2 });
    const accepted = [1, 2, 3].map(() => runner.submit(command('sleep 0.2')));
    const { response, ms } = await timed(runner.submit(command('true')));
    expect(response).toMatchObject({ code: 'BUSY', message: 'hypha queue is full (2 waiting)', result: null });
    expect(ms).toBeLessThan(100);
    for (const r of await Promise.all(accepted)) expect(r).toMatchObject({ exit_code: 0 });
  });

  it('starts waiting commands first come, first served', async () => {
    const runner = new Runner({ maxConcurrent: 1 });
    const file = scratchFile();
    await Promise.all([1, 2, 3, 4].map((n) => runner.submit(command(`sleep 0.05; echo ${n} >> ${file}`))));
    expect(readFileSync(file, 'utf8')).toBe('1\n2\n3\n4\n');
  });

  it('answers TIMEOUT for a command whose deadline passes while it waits, without running it', async () => {
    const runner = new Runner({ maxConcurrent: 1 });
    const file = scratchFile();
    const first = runner.submit(command('sleep 0.8'));
    const { response, ms } = await timed(runner.submit(command(`touch ${file}`, 'exec_bash', 1000), monotonicNow() - 700));
    expect(response.code).toBe('TIMEOUT');
    expect(response.message).toMatch(/queue/);
    expect(ms).toBeLessThan(700);
    expect((await first).exit_code).toBe(0);
    await sleep(50);
    expect(existsSync(file)).toBe(false);
  });

  it('killAll kills running groups and answers everything INTERNAL', async () => {
    const runner = new Runner({ maxConcurrent: 1 });
    const file = scratchFile();
    const running = runner.submit(command(`echo $$ > ${file}; sleep 300 & echo $! >> ${file}; wait`));
    const waiting = runner.submit(command('true'));
    expect(await waitUntil(() => existsSync(file) && readFileSync(file, 'utf8').split('\n').length >= 3, 2000)).toBe(true);
    runner.killAll();
    expect(await running).toMatchObject({ code: 'INTERNAL', message: 'hypha is shutting down' });
    expect(await waiting).toMatchObject({ code: 'INTERNAL', message: 'hypha is shutting down' });
    await runner.settled();
    const pids = pidsIn(file);
    expect(await waitUntil(() => pids.every(isGone), 500)).toBe(true);
    expect(await runner.submit(command('true'))).toMatchObject({ code: 'INTERNAL' });
  });
});
