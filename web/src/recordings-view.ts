/**
 * Terminal recordings (operators and admins): every shell tunnel is recorded by the hub in
 * asciicast v2. The list (`#/recordings`, and a device's Recordings tab) comes from
 * `GET /api/recordings`, newest first; the player (`#/recordings/TUNNEL`) fetches one with
 * `GET /api/recordings/TUNNEL` and replays it in an xterm.js terminal with its timing:
 * play/pause, 1×/2×/4×, idle gaps cut to 2 s (asciicast.ts does the timing). A recording holds
 * whatever was typed and shown: it is only ever written into the terminal, never into the page.
 */
import { Terminal } from '@xterm/xterm';
import { callApi, getText } from './api.js';
import { CastError, CastPlayer, IDLE_LIMIT_S, parseCast, SPEEDS, type Cast } from './asciicast.js';
import { cell, codedError, dateTime, duration, el, emptyRow, field, scrollingTable } from './format.js';
import { links } from './router.js';
import { TERMINAL_FONT, TERMINAL_THEME } from './terminal-view.js';

/** One row of `GET /api/recordings`. */
export interface Recording {
  tunnel: string;
  device: string;
  actor: string;
  startedAt: string;
  endedAt: string | null;
  /** The recording's size. */
  bytes: number;
}

const COLUMNS = ['Started', 'Device', 'Actor', 'Duration', 'Size', ''];
const LIMIT = 100;

/** The list of recordings: all of them, or one device's. */
export class RecordingsList {
  readonly root = el('div', 'recordings-list');
  private readonly summary = el('p', 'admin-summary recordings-summary');
  private readonly messages = el('div', 'admin-messages');
  private readonly body = el('tbody');
  private query = 0;

  constructor() {
    this.root.append(this.messages, this.summary, scrollingTable('recordings-table', COLUMNS, this.body));
  }

  async load(device: string | null): Promise<void> {
    const query = ++this.query;
    this.summary.textContent = 'loading…';
    const params = new URLSearchParams({ limit: String(LIMIT) });
    if (device) params.set('device', device);
    const result = await callApi<Recording[]>('GET', `/api/recordings?${params.toString()}`);
    if (query !== this.query) return;
    if (!result.ok) {
      this.summary.textContent = '';
      this.messages.replaceChildren(codedError('problem', result.code, result.message));
      return;
    }
    this.messages.replaceChildren();
    const list = result.value;
    this.summary.textContent = `${list.length === 1 ? '1 recording' : `${list.length} recordings`}, newest first${list.length >= LIMIT ? ' (the newest ' + LIMIT + ')' : ''}`;
    this.body.replaceChildren(...(list.length ? list.map(recordingRow) : [emptyRow(device ? `No terminal sessions on ${device} were recorded yet.` : 'No terminal sessions were recorded yet.', COLUMNS.length)]));
  }
}

function recordingRow(recording: Recording): HTMLTableRowElement {
  const row = el('tr');
  row.dataset.tunnel = recording.tunnel;
  const time = el('time', '', dateTime(recording.startedAt));
  time.dateTime = recording.startedAt;
  const device = el('a', '', recording.device);
  device.href = links.device(recording.device);
  const play = el('a', 'play-recording', 'Play');
  play.href = links.recording(recording.tunnel);
  const ms = recording.endedAt ? Date.parse(recording.endedAt) - Date.parse(recording.startedAt) : null;
  row.append(
    cell('cell-time', time),
    cell('cell-device', device),
    cell('cell-actor', recording.actor),
    cell('cell-duration', ms === null || Number.isNaN(ms) ? '' : duration(ms)),
    cell('cell-size', byteSize(recording.bytes)),
    cell('cell-play', play),
  );
  return row;
}

/** `#/recordings` and `#/recordings/TUNNEL`. */
export class RecordingsView {
  private readonly list = new RecordingsList();
  private readonly deviceInput = el('input', 'recordings-device');
  private player: RecordingPlayer | null = null;

  show(root: HTMLElement, tunnel: string | null): void {
    this.hide();
    if (tunnel) {
      this.player = new RecordingPlayer(tunnel);
      root.replaceChildren(this.player.root);
      void this.player.load();
      return;
    }
    const page = el('section', 'admin-page recordings');
    page.setAttribute('aria-label', 'recordings');
    const header = el('header', 'admin-header');
    header.append(el('h2', '', 'Terminal recordings'), el('p', 'admin-lead', 'Every terminal session, as the device showed it, newest first.'));
    const form = el('form', 'admin-form recordings-filters');
    this.deviceInput.type = 'search';
    this.deviceInput.placeholder = 'any device';
    this.deviceInput.autocomplete = 'off';
    this.deviceInput.spellcheck = false;
    const refresh = el('button', 'send', 'Refresh');
    refresh.type = 'submit';
    form.append(field('Device', this.deviceInput), refresh);
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      void this.list.load(this.deviceInput.value.trim() || null);
    });
    page.append(header, form, this.list.root);
    root.replaceChildren(page);
    void this.list.load(this.deviceInput.value.trim() || null);
  }

  /** Leaving the view: a playing recording stops. */
  hide(): void {
    this.player?.dispose();
    this.player = null;
  }
}

/** The player of one recording. */
export class RecordingPlayer {
  readonly root = el('section', 'admin-page recording-player');
  private readonly title = el('h2', '', 'Recording');
  private readonly facts = el('p', 'admin-lead recording-facts');
  private readonly messages = el('div', 'admin-messages');
  private readonly playButton = el('button', 'send player-play', 'Play');
  private readonly speed = el('select', 'player-speed');
  private readonly skipIdle = el('input', 'player-skip-idle');
  private readonly clock = el('span', 'player-clock', '');
  private readonly bar = el('progress', 'player-progress');
  private readonly screen = el('div', 'player-screen');
  private term: Terminal | null = null;
  private player: CastPlayer | null = null;
  private clockTimer = 0;
  private disposed = false;

  constructor(readonly tunnel: string) {
    this.root.setAttribute('aria-label', 'recording player');
    const back = el('a', 'back', '← All recordings');
    back.href = links.recordings;
    const header = el('header', 'admin-header');
    header.append(back, this.title, this.facts);
    for (const speed of SPEEDS) {
      const option = el('option', '', `${speed}×`);
      option.value = String(speed);
      this.speed.append(option);
    }
    this.speed.setAttribute('aria-label', 'speed');
    this.speed.addEventListener('change', () => this.player?.setSpeed(Number(this.speed.value)));
    this.skipIdle.type = 'checkbox';
    this.skipIdle.checked = true;
    this.skipIdle.addEventListener('change', () => this.player?.setSkipIdle(this.skipIdle.checked));
    const skip = el('label', 'player-skip', ` skip idle over ${IDLE_LIMIT_S} s`);
    skip.prepend(this.skipIdle);
    this.playButton.type = 'button';
    this.playButton.disabled = true;
    this.playButton.addEventListener('click', () => this.player?.toggle());
    const controls = el('div', 'player-controls');
    controls.append(this.playButton, this.speed, skip, this.bar, this.clock);
    this.root.append(header, this.messages, controls, this.screen);
  }

  async load(): Promise<void> {
    this.facts.textContent = 'loading…';
    const result = await getText(`/api/recordings/${encodeURIComponent(this.tunnel)}`);
    if (this.disposed) return;
    if (!result.ok) {
      this.facts.textContent = '';
      this.messages.replaceChildren(codedError('problem', result.code, result.message));
      return;
    }
    let cast: Cast;
    try {
      cast = parseCast(result.value);
    } catch (error) {
      this.facts.textContent = '';
      this.messages.replaceChildren(codedError('problem', 'BAD_REQUEST', error instanceof CastError ? error.message : String(error)));
      return;
    }
    this.start(cast);
  }

  private start(cast: Cast): void {
    const { header } = cast;
    this.title.textContent = header.title ? `Recording: ${header.title}` : `Recording ${this.tunnel}`;
    const started = header.timestamp ? dateTime(new Date(header.timestamp * 1000).toISOString()) : '';
    this.facts.textContent = [started && `started ${started}`, `${header.width}×${header.height}`, `${cast.events.length} events`].filter(Boolean).join(' · ');
    const term = new Terminal({ cols: header.width, rows: header.height, fontFamily: TERMINAL_FONT, fontSize: 13, theme: TERMINAL_THEME, disableStdin: true, scrollback: 1000 });
    this.term = term;
    term.open(this.screen);
    this.player = new CastPlayer(
      cast,
      {
        reset: (cols, rows) => {
          term.reset();
          term.resize(cols, rows);
        },
        output: (text) => term.write(text),
        resize: (cols, rows) => term.resize(cols, rows),
      },
      { skipIdle: this.skipIdle.checked, onChange: () => this.update() },
    );
    this.player.setSpeed(Number(this.speed.value));
    this.playButton.disabled = false;
    // The clock moves between events too.
    this.clockTimer = window.setInterval(() => this.update(), 250);
    this.player.play();
  }

  private update(): void {
    const player = this.player;
    if (!player) return;
    this.playButton.textContent = player.state === 'playing' ? 'Pause' : player.state === 'ended' ? 'Replay' : 'Play';
    this.root.dataset.state = player.state;
    this.bar.max = Math.max(player.duration, 0.001);
    this.bar.value = player.position;
    this.clock.textContent = `${clock(player.position)} / ${clock(player.duration)}`;
  }

  dispose(): void {
    this.disposed = true;
    this.player?.stop();
    this.player = null;
    window.clearInterval(this.clockTimer);
    this.term?.dispose();
    this.term = null;
  }
}

function clock(seconds: number): string {
  const whole = Math.floor(seconds);
  return `${Math.floor(whole / 60)}:${String(whole % 60).padStart(2, '0')}`;
}

function byteSize(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}
