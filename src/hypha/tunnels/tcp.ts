/**
 * `tcp` tunnels: a connection from the device to host:port (a port forward), with half-close
 * both ways (`eof`) and the socket paused whenever the hub's window is full.
 */
import { connect, type Socket } from 'node:net';
import { TunnelError, type Channel } from './channel.js';
import type { TunnelContext, TunnelHandler } from './handler.js';
import type { TcpOpenRequest } from './schemas.js';

/** How long a connect may take before CONNECT_FAILED. */
const CONNECT_TIMEOUT_MS = 10_000;

export async function openTcp(open: TcpOpenRequest, channel: Channel, context: TunnelContext): Promise<TunnelHandler> {
  const socket = await new Promise<Socket>((resolve, reject) => {
    // allowHalfOpen: the far end's FIN becomes our `eof`, and our side stays writable until the hub's `eof`.
    const socket = connect({ host: open.host, port: open.port, allowHalfOpen: true, timeout: CONNECT_TIMEOUT_MS });
    const failed = (message: string) => {
      socket.destroy();
      reject(new TunnelError('CONNECT_FAILED', `could not connect to ${open.host}:${open.port}: ${message}`));
    };
    socket.once('error', (err) => failed(err.message));
    socket.once('timeout', () => failed(`no answer within ${CONNECT_TIMEOUT_MS / 1000} s`));
    socket.once('connect', () => {
      socket.removeAllListeners('error');
      socket.removeAllListeners('timeout');
      socket.setTimeout(0);
      resolve(socket);
    });
  });
  channel.control({ t: 'opened' });
  return new TcpTunnel(socket, channel, context);
}

class TcpTunnel implements TunnelHandler {
  /** The hub said `eof`: nothing more to write. */
  private inboundEnded = false;
  /** The socket said FIN, and our `eof` went out. */
  private outboundEnded = false;
  private paused = false;

  constructor(
    private readonly socket: Socket,
    private readonly channel: Channel,
    private readonly context: TunnelContext,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.output(chunk));
    socket.on('end', () => void this.socketEnded());
    socket.on('error', (err) => {
      this.context.log.info('tcp tunnel socket failed', { tunnel: channel.id, error: err });
      channel.fail('IO_ERROR', `the connection failed: ${err.message}`);
    });
    socket.on('close', () => void this.socketClosed());
  }

  data(bytes: Buffer): void {
    if (this.inboundEnded) return this.channel.fail('BAD_REQUEST', 'DATA after eof');
    // Acknowledged once the kernel has taken it, so a slow far end slows the hub down.
    this.socket.write(bytes, () => this.channel.consumed(bytes.byteLength));
  }

  eof(): void {
    if (this.inboundEnded) return;
    this.inboundEnded = true;
    this.socket.end();
  }

  dispose(): void {
    this.socket.destroy();
  }

  private output(bytes: Buffer): void {
    if (this.channel.send(bytes) || this.paused) return;
    this.paused = true;
    this.socket.pause();
    void this.channel.drained().then(() => {
      this.paused = false;
      this.socket.resume();
    });
  }

  private async socketEnded(): Promise<void> {
    await this.channel.drained();
    this.outboundEnded = true;
    this.channel.control({ t: 'eof' });
  }

  private async socketClosed(): Promise<void> {
    await this.channel.drained();
    if (!this.outboundEnded) this.channel.control({ t: 'eof' });
    this.channel.close();
  }
}
