/**
 * The HTTP layer shared by the client and the worker: the base URL, the bearer token, JSON
 * bodies, per-request timeouts, and problem+json answers turned into {@link ConveyorError}.
 */

import { ConveyorConnectionError, ConveyorError, parseRetryAfter, type Problem } from './errors.js';

/** A bearer token, or a function giving the current one (called before each request). */
export type TokenSource = string | (() => string | Promise<string>);

/** Options of the HTTP layer, shared by {@link Client} and {@link Worker}. */
export interface TransportOptions {
  /** The `fetch` to use (default: the global one). Handy to trace or stub requests. */
  fetch?: typeof fetch;
  /** Extra headers sent with every request. */
  headers?: Record<string, string>;
  /** How long a request (other than a live stream or a long poll) may take, in ms (default 30 s). */
  timeoutMs?: number;
}

/** One request. */
export interface RequestOptions {
  /** A JSON body. */
  body?: unknown;
  /** Query parameters; `undefined` ones are left out. */
  query?: Record<string, string | number | undefined>;
  /** Extra headers. */
  headers?: Record<string, string>;
  /** Aborts the request. */
  signal?: AbortSignal | undefined;
  /** This request's timeout in ms (default: the transport's). */
  timeoutMs?: number;
}

/** A decoded answer. */
export interface Answer<T> {
  status: number;
  headers: Headers;
  body: T;
}

const DEFAULT_TIMEOUT_MS = 30_000;

/** A signal aborted when any of `signals` is. */
export function anySignal(signals: Array<AbortSignal | undefined>): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const cleanups: Array<() => void> = [];
  for (const s of signals) {
    if (!s) continue;
    if (s.aborted) {
      controller.abort(s.reason);
      break;
    }
    const onAbort = (): void => controller.abort(s.reason);
    s.addEventListener('abort', onAbort, { once: true });
    cleanups.push(() => s.removeEventListener('abort', onAbort));
  }
  return { signal: controller.signal, dispose: () => cleanups.forEach((c) => c()) };
}

/** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, Math.max(0, ms));
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** The HTTP layer: one base URL and token. */
export class Transport {
  readonly baseUrl: string;
  private readonly token: TokenSource;
  private readonly fetchImpl: typeof fetch;
  private readonly headers: Record<string, string>;
  private readonly timeoutMs: number;

  constructor(baseUrl: string, token: TokenSource, options: TransportOptions = {}) {
    if (!baseUrl) throw new TypeError('conveyor: the API URL is required');
    if (!token) throw new TypeError('conveyor: a token is required');
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    this.token = token;
    this.fetchImpl = options.fetch ?? globalThis.fetch;
    this.headers = { ...(options.headers ?? {}) };
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  /** The absolute URL of `path` with `query`. */
  url(path: string, query?: Record<string, string | number | undefined>): string {
    let url = this.baseUrl + path;
    if (query) {
      const params = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) if (v !== undefined) params.set(k, String(v));
      const qs = params.toString();
      if (qs) url += `?${qs}`;
    }
    return url;
  }

  private async bearer(): Promise<string> {
    return typeof this.token === 'function' ? await this.token() : this.token;
  }

  /**
   * Sends a request and returns the raw response when its status is 2xx; throws
   * {@link ConveyorError} otherwise, {@link ConveyorConnectionError} when there is no answer.
   * `timeoutMs: 0` means no timeout (live streams): only `signal` ends it. Call `done()` once
   * the body is read (or abandoned): it detaches the request from `signal`.
   */
  async send(method: string, path: string, options: RequestOptions = {}): Promise<{ response: Response; done: () => void }> {
    const request = `${method} ${path}`;
    const headers: Record<string, string> = {
      Accept: 'application/json',
      ...this.headers,
      ...(options.headers ?? {}),
      Authorization: `Bearer ${await this.bearer()}`,
    };
    let body: string | undefined;
    if (options.body !== undefined) {
      body = JSON.stringify(options.body);
      headers['Content-Type'] = 'application/json';
    }
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const timeout = timeoutMs > 0 ? AbortSignal.timeout(timeoutMs) : undefined;
    const { signal, dispose } = anySignal([options.signal, timeout]);
    let res: Response;
    try {
      const init: RequestInit = { method, headers, signal };
      if (body !== undefined) init.body = body;
      res = await this.fetchImpl(this.url(path, options.query), init);
    } catch (e) {
      dispose();
      if (options.signal?.aborted) throw options.signal.reason;
      if (timeout?.aborted) {
        throw new ConveyorConnectionError(`conveyor: ${request} timed out after ${timeoutMs} ms`, { cause: e, request });
      }
      const detail = e instanceof Error ? (e.cause instanceof Error ? e.cause.message : e.message) : String(e);
      throw new ConveyorConnectionError(`conveyor: ${request} failed: ${detail}`, { cause: e, request });
    }
    if (!res.ok) {
      try {
        throw await errorOf(res, request);
      } finally {
        dispose();
      }
    }
    // The timeout keeps guarding the body until `done`.
    return { response: res, done: dispose };
  }

  /** Sends a request and decodes its JSON answer. */
  async request<T>(method: string, path: string, options: RequestOptions = {}): Promise<Answer<T>> {
    const request = `${method} ${path}`;
    const { response: res, done } = await this.send(method, path, options);
    let text: string;
    try {
      text = await res.text();
    } catch (e) {
      if (options.signal?.aborted) throw options.signal.reason;
      throw new ConveyorConnectionError(`conveyor: ${request}: the answer was cut off`, { cause: e, request });
    } finally {
      done();
    }
    let body: unknown = null;
    if (text) {
      try {
        body = JSON.parse(text);
      } catch (e) {
        throw new ConveyorConnectionError(`conveyor: ${request}: the answer is not JSON: ${text.slice(0, 200)}`, {
          cause: e,
          request,
        });
      }
    }
    return { status: res.status, headers: res.headers, body: body as T };
  }
}

/** The {@link ConveyorError} of an error answer (problem+json, or whatever else it says). */
export async function errorOf(res: Response, request: string): Promise<ConveyorError> {
  let text = '';
  try {
    text = await res.text();
  } catch {
    // The body is lost: the status alone says enough.
  }
  let problem: Problem | undefined;
  try {
    const parsed: unknown = text ? JSON.parse(text) : undefined;
    if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) {
      const p = parsed as Record<string, unknown>;
      problem = {
        ...p,
        type: typeof p['type'] === 'string' ? p['type'] : 'about:blank',
        title: typeof p['title'] === 'string' ? p['title'] : res.statusText || `HTTP ${res.status}`,
        status: typeof p['status'] === 'number' ? p['status'] : res.status,
        detail: typeof p['detail'] === 'string' ? p['detail'] : '',
      };
    }
  } catch {
    // Not JSON: below.
  }
  problem ??= {
    type: 'about:blank',
    title: res.statusText || `HTTP ${res.status}`,
    status: res.status,
    detail: text.slice(0, 500),
  };
  return new ConveyorError(problem, { retryAfter: parseRetryAfter(res.headers.get('retry-after')), request });
}
