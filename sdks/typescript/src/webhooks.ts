/**
 * Standard Webhooks (https://www.standardwebhooks.com/) verification of conveyor's deliveries:
 * `webhook-signature` holds `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` entries
 * (space-separated), keyed with the tenant's secret `whsec_<base64 key>`.
 */

import { createHmac, timingSafeEqual } from 'node:crypto';

import { WebhookVerificationError } from './errors.js';

/** Request headers: a fetch `Headers`, or a plain object such as Node's `req.headers`. */
export type WebhookHeaders = Headers | Record<string, string | string[] | undefined>;

/** Options of {@link verifyWebhook}. */
export interface VerifyWebhookOptions {
  /** How far `webhook-timestamp` may be from now, in seconds (default 300: five minutes). */
  toleranceSecs?: number;
  /** The current time (default: the clock), as a `Date` or Unix seconds. */
  now?: Date | number;
}

/** The default timestamp tolerance, in seconds. */
export const WEBHOOK_TOLERANCE_SECS = 300;

function key(secret: string): Buffer {
  const raw = secret.startsWith('whsec_') ? secret.slice('whsec_'.length) : secret;
  const bytes = Buffer.from(raw, 'base64');
  if (bytes.length === 0) throw new WebhookVerificationError('the webhook secret is empty or not base64');
  return bytes;
}

function bytesOf(body: string | Uint8Array): Buffer {
  return typeof body === 'string' ? Buffer.from(body, 'utf8') : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
}

function header(headers: WebhookHeaders, name: string): string | undefined {
  // A fetch `Headers` (or a look-alike); a plain object's values are never functions.
  if (typeof (headers as { get?: unknown }).get === 'function') return (headers as Headers).get(name) ?? undefined;
  const record = headers as Record<string, string | string[] | undefined>;
  let value = record[name];
  if (value === undefined) {
    const found = Object.keys(record).find((k) => k.toLowerCase() === name);
    if (found !== undefined) value = record[found];
  }
  return Array.isArray(value) ? value.join(' ') : value;
}

function mac(secret: string, id: string, timestamp: number | string, body: string | Uint8Array): Buffer {
  return createHmac('sha256', key(secret)).update(`${id}.${timestamp}.`).update(bytesOf(body)).digest();
}

/**
 * The `webhook-signature` value of a delivery (`v1,<base64>`): what conveyor sends, handy to
 * test a receiver.
 */
export function signWebhook(secret: string, id: string, timestamp: number, body: string | Uint8Array): string {
  return `v1,${mac(secret, id, timestamp, body).toString('base64')}`;
}

/**
 * Verifies a webhook delivery from its headers and its raw body (exactly the bytes received:
 * verify before parsing) and returns the parsed body, the terminal CloudEvent. Throws
 * {@link WebhookVerificationError} when a header is missing, the timestamp is more than
 * `toleranceSecs` away from now, or no `v1` signature matches. Deduplicate on `webhook-id`:
 * delivery is at least once.
 */
export function verifyWebhook<T = unknown>(
  secret: string,
  headers: WebhookHeaders,
  body: string | Uint8Array,
  options: VerifyWebhookOptions = {},
): T {
  const id = header(headers, 'webhook-id');
  const timestamp = header(headers, 'webhook-timestamp');
  const signatures = header(headers, 'webhook-signature');
  if (!id || !timestamp || !signatures) {
    throw new WebhookVerificationError('missing webhook-id, webhook-timestamp or webhook-signature header');
  }
  if (!/^\d+$/.test(timestamp.trim())) throw new WebhookVerificationError('invalid webhook-timestamp');
  const ts = Number(timestamp.trim());
  const now =
    options.now === undefined
      ? Math.floor(Date.now() / 1000)
      : options.now instanceof Date
        ? Math.floor(options.now.getTime() / 1000)
        : Math.floor(options.now);
  const tolerance = options.toleranceSecs ?? WEBHOOK_TOLERANCE_SECS;
  if (now - ts > tolerance) throw new WebhookVerificationError('the webhook timestamp is too old');
  if (ts - now > tolerance) throw new WebhookVerificationError('the webhook timestamp is too new');
  const expected = mac(secret, id, ts, body);
  let valid = false;
  for (const entry of signatures.split(' ')) {
    const [version, b64] = entry.split(',', 2);
    if (version !== 'v1' || !b64) continue;
    const given = Buffer.from(b64, 'base64');
    if (given.length === expected.length && timingSafeEqual(given, expected)) valid = true;
  }
  if (!valid) throw new WebhookVerificationError('no matching webhook signature');
  const text = bytesOf(body).toString('utf8');
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new WebhookVerificationError('the webhook body is not JSON');
  }
}
