/**
 * Terminals on a device (the Terminal tab of its page): each an xterm.js terminal attached to
 * a shell tunnel, a pseudo-terminal on the device (docs/protocol.md "Remote access: tunnels"),
 * so full-screen programs work and Ctrl-C is just the byte \x03. Keystrokes go to the tunnel
 * in the order they were typed; output is written to the terminal, and the tunnel is paused
 * while xterm.js still has output to draw, so a flooding program is slowed down on the device
 * instead of piling up in the page. Each terminal follows the size of its box (the fit addon)
 * and tells the PTY. "New terminal" opens another one, each in its own tab; sessions live on
 * while the console shows other pages.
 */
import { FitAddon } from '@xterm/addon-fit';
import { Terminal, type ITheme } from '@xterm/xterm';
import { ClientError, type Tunnel, type TunnelEnd } from 'rhizosphere/client';
import { el } from './format.js';
import type { HubClient } from './hub-client.js';

/** The console's dark code colours (console.css --code-bg, --code-ink). */
export const TERMINAL_THEME: ITheme = { background: '#111614', foreground: '#e6ece8', cursor: '#e6ece8', selectionBackground: '#3c5a4b' };
export const TERMINAL_FONT = 'ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace';

type SessionState = 'connecting' | 'connected' | 'ended' | 'failed';

/** The Terminal tab of one device: its terminals, one shown at a time. */
export class TerminalsPanel {
  readonly root = el('section', 'terminals');
  private readonly tabs = el('div', 'terminal-tabs');
  private readonly stage = el('div', 'terminal-stage');
  private readonly sessions: TerminalSession[] = [];
  private current: TerminalSession | null = null;
  private opened = 0;

  constructor(
    private readonly hub: HubClient,
    readonly device: string,
  ) {
    this.root.setAttribute('aria-label', 'terminals');
    this.tabs.setAttribute('role', 'tablist');
    const add = el('button', 'new-terminal', 'New terminal');
    add.type = 'button';
    add.addEventListener('click', () => this.open());
    const bar = el('div', 'terminal-bar');
    bar.append(this.tabs, add);
    this.root.append(bar, this.stage);
  }

  /** The tab is on screen: the first visit opens a terminal, later ones refit and focus. */
  shown(): void {
    if (this.sessions.length === 0) this.open();
    else this.current?.shown();
  }

  /** Opens one more terminal and shows it. */
  open(): void {
    const session = new TerminalSession(this.hub, this.device, `Terminal ${++this.opened}`, () => this.remove(session));
    session.tab.addEventListener('click', () => this.select(session));
    this.sessions.push(session);
    this.tabs.append(session.tab);
    this.stage.append(session.root);
    this.select(session);
    void session.connect();
  }

  private select(session: TerminalSession): void {
    this.current = session;
    for (const each of this.sessions) each.setCurrent(each === session);
    session.shown();
  }

  private remove(session: TerminalSession): void {
    const index = this.sessions.indexOf(session);
    if (index === -1) return;
    this.sessions.splice(index, 1);
    session.tab.remove();
    session.root.remove();
    session.dispose();
    if (this.current === session) {
      this.current = null;
      const next = this.sessions[Math.min(index, this.sessions.length - 1)];
      if (next) this.select(next);
    }
  }
}

/** One terminal and its shell tunnel. */
class TerminalSession {
  readonly root = el('div', 'shell-session');
  readonly tab = el('button', 'terminal-tab');
  private readonly host = el('div', 'terminal-host');
  private readonly status = el('span', 'terminal-status', 'connecting…');
  private readonly closeButton = el('button', 'terminal-close', 'Close');
  private readonly term: Terminal;
  private readonly fit = new FitAddon();
  private readonly observer: ResizeObserver;
  private tunnel: Tunnel | null = null;
  private state: SessionState = 'connecting';
  /** Keystrokes go out one write after another, in the order they were typed. */
  private keys: Promise<void> = Promise.resolve();
  /** Output chunks handed to xterm.js and not yet drawn: the tunnel is paused while any are. */
  private drawing = 0;
  private fitFrame = 0;
  private disposed = false;

  constructor(
    private readonly hub: HubClient,
    private readonly device: string,
    label: string,
    private readonly onClose: () => void,
  ) {
    this.tab.type = 'button';
    this.tab.setAttribute('role', 'tab');
    this.tab.append(el('span', 'terminal-dot'), document.createTextNode(label));
    this.root.setAttribute('role', 'tabpanel');
    this.root.setAttribute('aria-label', label);
    this.closeButton.type = 'button';
    this.closeButton.title = 'end the shell and close this terminal';
    this.closeButton.addEventListener('click', () => void this.close());
    this.status.setAttribute('role', 'status');
    const line = el('div', 'terminal-statusline');
    line.append(this.status, this.closeButton);
    this.root.append(line, this.host);
    this.term = new Terminal({ fontFamily: TERMINAL_FONT, fontSize: 13, theme: TERMINAL_THEME, cursorBlink: true, scrollback: 5000 });
    this.term.loadAddon(this.fit);
    this.observer = new ResizeObserver(() => this.scheduleFit());
    this.setState('connecting', 'connecting…');
  }

  setCurrent(current: boolean): void {
    this.root.hidden = !current;
    this.tab.setAttribute('aria-selected', String(current));
    this.root.toggleAttribute('data-current', current);
  }

  /** On screen (again): fit to the box, which had no size while hidden, and take the keyboard. */
  shown(): void {
    this.refit();
    if (this.state === 'connected') this.term.focus();
  }

  async connect(): Promise<void> {
    // xterm.js measures its font once it is in the page: open it there, then fit, then ask for a PTY that size.
    this.term.open(this.host);
    this.observer.observe(this.host);
    this.refit();
    // A terminal opened with the page (a bookmarked #/devices/ID/terminal) waits for the hub.
    if (this.hub.state !== 'connected') {
      this.setState('connecting', 'waiting for the connection to the hub…');
      await this.hub.whenConnected();
      if (this.disposed) return;
      this.setState('connecting', 'connecting…');
    }
    let tunnel: Tunnel;
    try {
      tunnel = await this.hub.shell(this.device, this.term.cols, this.term.rows);
    } catch (error) {
      const code = error instanceof ClientError ? error.code : 'INTERNAL';
      this.setState('failed', `${code} ${error instanceof Error ? error.message : String(error)}`);
      return;
    }
    if (this.disposed) {
      void tunnel.close();
      return;
    }
    this.tunnel = tunnel;
    this.setState('connected', 'connected');
    tunnel.on('data', (bytes) => this.output(tunnel, bytes));
    tunnel.on('end', (end) => this.ended(end));
    this.term.onData((data) => this.send(data));
    // Some mouse reports are raw bytes, not text.
    this.term.onBinary((data) => this.send(Uint8Array.from(data, (c) => c.charCodeAt(0) & 0xff)));
    this.term.onResize(({ cols, rows }) => tunnel.resize(cols, rows));
    // The box may have changed while the shell was opening.
    if (tunnel.spec.cols !== this.term.cols || tunnel.spec.rows !== this.term.rows) tunnel.resize(this.term.cols, this.term.rows);
    if (!this.root.hidden) this.term.focus();
  }

  private output(tunnel: Tunnel, bytes: Uint8Array): void {
    if (this.disposed) return;
    // Paused before the listener returns, this chunk is acknowledged only once it is drawn.
    if (this.drawing++ === 0) tunnel.pause();
    this.term.write(bytes, () => {
      if (--this.drawing === 0) tunnel.resume();
    });
  }

  private send(data: string | Uint8Array): void {
    const tunnel = this.tunnel;
    if (!tunnel || this.state !== 'connected') return;
    this.keys = this.keys.then(() => tunnel.write(data)).catch(() => {});
  }

  private ended(end: TunnelEnd): void {
    this.term.options.disableStdin = true;
    this.term.options.cursorBlink = false;
    const how = endText(end);
    this.setState(end.reason === 'error' ? 'failed' : 'ended', how);
    this.term.write(`\r\n\x1b[2m[${how}]\x1b[0m\r\n`);
  }

  /** Ends the shell (if it runs) and takes the terminal away. */
  private async close(): Promise<void> {
    this.closeButton.disabled = true;
    this.disposed = true;
    if (this.tunnel?.active) await this.tunnel.close();
    this.onClose();
  }

  dispose(): void {
    this.disposed = true;
    this.observer.disconnect();
    if (this.fitFrame) cancelAnimationFrame(this.fitFrame);
    if (this.tunnel?.active) void this.tunnel.close();
    this.term.dispose();
  }

  private scheduleFit(): void {
    if (this.fitFrame) return;
    this.fitFrame = requestAnimationFrame(() => {
      this.fitFrame = 0;
      this.refit();
    });
  }

  /** Fits the terminal to its box; a hidden box has no size and is left alone. */
  private refit(): void {
    if (this.disposed || this.host.clientWidth === 0 || this.host.clientHeight === 0) return;
    const size = this.fit.proposeDimensions();
    if (!size || !Number.isFinite(size.cols) || !Number.isFinite(size.rows)) return;
    const cols = Math.max(2, Math.min(1000, size.cols));
    const rows = Math.max(1, Math.min(1000, size.rows));
    if (cols !== this.term.cols || rows !== this.term.rows) this.term.resize(cols, rows);
  }

  private setState(state: SessionState, text: string): void {
    this.state = state;
    this.status.textContent = text;
    this.root.dataset.state = state;
    this.tab.dataset.state = state;
    this.tab.title = text;
  }
}

/** How a shell ended, for its status line: "exited with 0", "killed by SIGHUP", "closed", or the error. */
export function endText(end: TunnelEnd): string {
  if (end.exit) {
    if (end.exit.signal) return `killed by ${end.exit.signal}`;
    if (end.exit.code !== null) return `exited with ${end.exit.code}`;
  }
  if (end.reason === 'error') return `${end.code ?? 'INTERNAL'} ${end.message ?? ''}`.trim();
  return end.message ? `closed (${end.message})` : 'closed';
}
