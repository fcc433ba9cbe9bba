/** REST calls with the global `fetch` (Node 20+, browsers): `Authorization: Bearer` and the hub's error bodies. */
import { ClientError, codeOf } from './errors.js';

/** The HTTP base URL of a hub reached over MQTT over WebSocket: ws://H:P/mqtt → http://H:P. Null for mqtt:// and mqtts://. */
export function httpUrlFromMqttUrl(url: string): string | null {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return null;
  }
  if (parsed.protocol !== 'ws:' && parsed.protocol !== 'wss:') return null;
  return `${parsed.protocol === 'wss:' ? 'https:' : 'http:'}//${parsed.host}`;
}

export class Rest {
  constructor(
    private readonly baseUrl: string | null,
    private token: string | undefined,
  ) {}

  setToken(token: string): void {
    this.token = token;
  }

  /**
   * One call. `body` is sent as JSON, or as it is with `raw` (bytes, a Blob, or a stream of
   * bytes: an upload never held whole in memory).
   */
  async call<T>(method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE', path: string, body?: unknown, raw?: { contentType: string }): Promise<T> {
    if (!this.baseUrl) {
      throw new ClientError('BAD_REQUEST', 'this needs the hub\'s REST API: pass httpUrl to connect() (it is derived only from ws:// and wss:// URLs)');
    }
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers['content-type'] = raw ? raw.contentType : 'application/json';
    const payload = body === undefined ? undefined : raw ? (body as RequestInit['body']) : JSON.stringify(body);
    // A stream body needs half-duplex in Node's fetch.
    const streaming = typeof ReadableStream !== 'undefined' && payload instanceof ReadableStream;
    let res: globalThis.Response;
    try {
      res = await fetch(`${this.baseUrl.replace(/\/+$/, '')}${path}`, { method, headers, body: payload, ...(streaming ? { duplex: 'half' } : {}) } as RequestInit);
    } catch (error) {
      throw new ClientError('NOT_CONNECTED', `cannot reach ${this.baseUrl}: ${(error as Error)?.cause instanceof Error ? ((error as Error).cause as Error).message : (error as Error)?.message}`, { cause: error });
    }
    const text = await res.text();
    let parsed: unknown;
    try {
      parsed = text.length > 0 ? JSON.parse(text) : undefined;
    } catch {
      parsed = undefined;
    }
    if (!res.ok) {
      const err = (parsed ?? {}) as { code?: unknown; message?: unknown };
      const message = typeof err.message === 'string' ? err.message : `HTTP ${res.status} from ${method} ${path}`;
      throw new ClientError(err.code !== undefined ? codeOf(err.code) : res.status === 401 || res.status === 403 ? 'FORBIDDEN' : 'INTERNAL', message);
    }
    if (parsed === undefined) throw new ClientError('INTERNAL', `${method} ${path} answered something that is not JSON`);
    return parsed as T;
  }
}
