// The public API, as any client calls it: a bearer token on every request, RFC 9457 problems
// turned into errors whose message is the server's `detail`.

const KEY = 'conveyor.token';

export const token = () => sessionStorage.getItem(KEY);

export function signIn(value) {
  sessionStorage.setItem(KEY, value.trim());
}

/** Forgets the token; the app shows the sign-in form, with `reason` when there is one. */
export function signOut(reason) {
  sessionStorage.removeItem(KEY);
  window.dispatchEvent(new CustomEvent('conveyor:signed-out', { detail: reason }));
}

/** The token's claims, for display only (the server verifies it). */
export function claims() {
  try {
    const part = token().split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), '=')));
  } catch {
    return null;
  }
}

/** Scopes as the server reads them: `scope`, `scp` or `permissions`, a string or an array. */
export function scopes() {
  const c = claims() ?? {};
  return new Set(['scope', 'scp', 'permissions'].flatMap((k) => (Array.isArray(c[k]) ? c[k] : String(c[k] ?? '').split(/\s+/))).filter(Boolean));
}
// `admin` stands for every scope of its tenant, never for `operator` (platform-wide operations).
export const hasScope = (s) => scopes().has(s) || (s !== 'operator' && scopes().has('admin'));

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${token()}`, ...extra };
}

/** Turns a non-2xx response into an ApiError carrying the problem's `detail`. */
export async function failure(res) {
  let detail = `${res.status} ${res.statusText}`;
  try {
    const body = await res.json();
    if (body && body.detail) detail = body.detail;
  } catch {
    // Not problem+json (a proxy's page, say): keep the status line.
  }
  if (res.status === 401) signOut(detail);
  return new ApiError(res.status, detail);
}

/** Calls the API; resolves with the JSON body, rejects with an ApiError. */
export async function api(path, { method = 'GET', body, signal } = {}) {
  const headers = authHeaders(body === undefined ? {} : { 'Content-Type': 'application/json' });
  let res;
  try {
    res = await fetch(path, { method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'the server is unreachable');
  }
  if (!res.ok) throw await failure(res);
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}
