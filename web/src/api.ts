/**
 * The hub's REST API as the console calls it. Errors come back as the hub's own codes
 * (BAD_REQUEST, FORBIDDEN, UNKNOWN_DEVICE, …) so every view can show them the same way.
 */

/** Thrown by getJson() when the browser has no session: the page goes to /login. */
export const LOGIN_NEEDED = 'login needed';

export interface ApiProblem {
  code: string;
  message: string;
}

export type ApiResult<T> = { ok: true; value: T } | ({ ok: false } & ApiProblem);

/** Leaves for the login page, which comes back to the same view after logging in. */
export function goToLogin(): void {
  const next = location.hash.startsWith('#/') ? `?next=${encodeURIComponent(location.hash)}` : '';
  location.href = `/login${next}`;
}

export async function getJson<T>(path: string): Promise<T> {
  const res = await fetch(path, { headers: { accept: 'application/json' } });
  if (res.status === 401) throw new Error(LOGIN_NEEDED);
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return (await res.json()) as T;
}

/**
 * Calls the API and never throws: a refusal or a network failure becomes `{ ok: false,
 * code, message }`. A lost session (401) sends the page to /login.
 */
export async function callApi<T>(method: 'GET' | 'POST' | 'PATCH' | 'DELETE', path: string, body?: unknown): Promise<ApiResult<T>> {
  let res: Response;
  try {
    res = await fetch(path, {
      method,
      headers: body === undefined ? { accept: 'application/json' } : { accept: 'application/json', 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    return { ok: false, code: 'NOT_CONNECTED', message: 'cannot reach the hub' };
  }
  if (res.status === 401) {
    goToLogin();
    return { ok: false, code: 'FORBIDDEN', message: 'the session has ended: log in again' };
  }
  const parsed = (await res.json().catch(() => null)) as unknown;
  if (res.ok) return { ok: true, value: parsed as T };
  return { ok: false, ...problemOf(parsed, res.status) };
}

/** GETs a text resource (a recording); a refusal becomes `{ ok: false, code, message }` like callApi's. */
export async function getText(path: string): Promise<ApiResult<string>> {
  let res: Response;
  try {
    res = await fetch(path);
  } catch {
    return { ok: false, code: 'NOT_CONNECTED', message: 'cannot reach the hub' };
  }
  if (res.status === 401) {
    goToLogin();
    return { ok: false, code: 'FORBIDDEN', message: 'the session has ended: log in again' };
  }
  if (res.ok) return { ok: true, value: await res.text() };
  return { ok: false, ...problemOf(await res.json().catch(() => null), res.status) };
}

function problemOf(body: unknown, status: number): ApiProblem {
  const { code, message } = (body ?? {}) as Partial<ApiProblem>;
  return {
    code: typeof code === 'string' ? code : `HTTP ${status}`,
    message: typeof message === 'string' ? message : `the hub answered HTTP ${status}`,
  };
}
