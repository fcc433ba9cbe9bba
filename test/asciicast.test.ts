/**
 * The console's asciicast v2 player (web/src/asciicast.ts): parsing, idle gaps cut to 2 s,
 * speeds, pause and resume, resize events, replay from the start. Fake timers: no browser.
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { CastError, CastPlayer, parseCast, parseSize, playTimes, type CastSink } from '../web/src/asciicast.js';

const CAST = [
  '{"version":2,"width":80,"height":24,"timestamp":1764000000,"env":{"TERM":"xterm-256color"},"title":"pi-01 by otto"}',
  '[0.5,"o","$ "]',
  '[1.0,"i","l"]',
  '[1.0,"o","l"]',
  '[1.5,"r","100x30"]',
  '[11.5,"o","s\\r\\n"]',
  '[12.0,"o","done\\r\\n"]',
  '',
].join('\n');

function recorder(): CastSink & { log: string[] } {
  const log: string[] = [];
  return {
    log,
    reset: (cols, rows) => log.push(`reset ${cols}x${rows}`),
    output: (text) => log.push(`o ${text}`),
    resize: (cols, rows) => log.push(`r ${cols}x${rows}`),
  };
}

describe('asciicast v2', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('parses the header and the events, and names the line that is wrong', () => {
    const cast = parseCast(CAST);
    expect(cast.header).toMatchObject({ version: 2, width: 80, height: 24, title: 'pi-01 by otto' });
    expect(cast.events).toHaveLength(6);
    expect(cast.events[4]).toEqual({ time: 11.5, code: 'o', data: 's\r\n' });
    expect(() => parseCast('')).toThrow(CastError);
    expect(() => parseCast('{"version":1,"width":80,"height":24}')).toThrow(/version/);
    expect(() => parseCast('{"version":2,"width":0,"height":24}')).toThrow(/width/);
    expect(() => parseCast(`${CAST}[1,"o"]\n`)).toThrow(/line 8 is not an event/);
    expect(() => parseCast(`${CAST}nope\n`)).toThrow(/line 8 is not JSON/);
    expect(parseSize('100x30')).toEqual({ cols: 100, rows: 30 });
    expect(parseSize('100 x 30')).toBeNull();
    expect(parseSize('0x30')).toBeNull();
  });

  it('cuts idle gaps over the limit down to it', () => {
    const { events } = parseCast(CAST);
    expect(playTimes(events, null)).toEqual([0.5, 1, 1, 1.5, 11.5, 12]);
    expect(playTimes(events, 2)).toEqual([0.5, 1, 1, 1.5, 3.5, 4]);
  });

  it('plays with the recorded timing, pauses, resumes, goes faster, and replays from the start', () => {
    const sink = recorder();
    const changes = vi.fn();
    const player = new CastPlayer(parseCast(CAST), sink, { onChange: changes });
    expect(sink.log).toEqual(['reset 80x24']);
    expect(player.duration).toBe(4);
    player.play();
    vi.advanceTimersByTime(499);
    expect(sink.log).toEqual(['reset 80x24']);
    vi.advanceTimersByTime(1);
    expect(sink.log.at(-1)).toBe('o $ ');
    vi.advanceTimersByTime(500);
    // Input is not drawn: its echo is in the output.
    expect(sink.log.slice(1)).toEqual(['o $ ', 'o l']);
    vi.advanceTimersByTime(500);
    expect(sink.log.at(-1)).toBe('r 100x30');

    player.pause();
    expect(player.state).toBe('paused');
    vi.advanceTimersByTime(60_000);
    expect(sink.log).toHaveLength(4);
    expect(player.position).toBeCloseTo(1.5);

    // The 10 s of idle play as 2 s; at 2× that is 1 s.
    player.setSpeed(2);
    player.play();
    vi.advanceTimersByTime(999);
    expect(sink.log).toHaveLength(4);
    vi.advanceTimersByTime(1);
    expect(sink.log.at(-1)).toBe('o s\r\n');
    vi.advanceTimersByTime(250);
    expect(sink.log.at(-1)).toBe('o done\r\n');
    expect(player.state).toBe('ended');
    expect(player.position).toBe(4);
    expect(changes).toHaveBeenCalled();

    // Play after the end starts over, on a blank terminal.
    player.setSpeed(4);
    player.play();
    expect(sink.log.at(-1)).toBe('reset 80x24');
    vi.advanceTimersByTime(1000);
    expect(player.state).toBe('ended');
    expect(sink.log.filter((line) => line === 'o done\r\n')).toHaveLength(2);
  });

  it('plays idle gaps whole when skipping is off, from where it was', () => {
    const sink = recorder();
    const player = new CastPlayer(parseCast(CAST), sink, { skipIdle: false });
    expect(player.duration).toBe(12);
    player.play();
    vi.advanceTimersByTime(1600);
    player.setSkipIdle(true);
    expect(player.state).toBe('playing');
    expect(player.duration).toBe(4);
    vi.advanceTimersByTime(1999);
    expect(sink.log.at(-1)).toBe('r 100x30');
    vi.advanceTimersByTime(1);
    expect(sink.log.at(-1)).toBe('o s\r\n');
    player.stop();
    vi.advanceTimersByTime(10_000);
    expect(sink.log.at(-1)).toBe('o s\r\n');
  });
});
