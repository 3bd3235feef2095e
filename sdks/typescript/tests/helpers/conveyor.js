// The system under test: a real `conveyor dev` (API, built-in worker, projector, notifier) on a
// fresh namespace and database per test module, against the NATS and Postgres that
// scripts/test starts (CONVEYOR_NATS_URL, DATABASE_URL). The binary is CONVEYOR_BIN or
// <repo>/target/debug/conveyor.

import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const SDK_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const ROOT = join(SDK_ROOT, '..', '..');
export const BIN = process.env.CONVEYOR_BIN ?? join(ROOT, 'target', 'debug', 'conveyor');
const HOW =
  'run the SDK tests through `scripts/test`, which starts NATS 2.10+ and Postgres and builds conveyor ' +
  '(or set CONVEYOR_NATS_URL, DATABASE_URL and CONVEYOR_BIN yourself)';
const JWT_SECRET = 'sdk-typescript-test-secret-0123456789abcdef';

/** Every scope a client test needs. */
export const CLIENT_SCOPES = 'jobs:write jobs:read events:read admin';

export class Conveyor {
  /** Starts `conveyor dev` with `extraEnv`; resolves once the API listens. */
  static async start(extraEnv = {}) {
    for (const name of ['CONVEYOR_NATS_URL', 'DATABASE_URL']) {
      if (!process.env[name]) throw new Error(`${name} is not set: ${HOW}`);
    }
    if (!existsSync(BIN)) throw new Error(`the conveyor binary ${BIN} does not exist: ${HOW}`);
    const id = `ts${randomBytes(5).toString('hex')}`;
    const database = `${process.env.DATABASE_URL.replace(/\/[^/]*$/, '')}/conveyor_test_${id}`;
    const env = {
      ...process.env,
      CONVEYOR_NAMESPACE: id,
      DATABASE_URL: database,
      CONVEYOR_HTTP_ADDR: '127.0.0.1:0',
      CONVEYOR_JWT_SECRET: JWT_SECRET,
      CONVEYOR_ACK_WAIT_MS: '2000',
      CONVEYOR_RETRY_BASE_MS: '50',
      CONVEYOR_RETRY_MAX_MS: '500',
      CONVEYOR_SHUTDOWN_GRACE_MS: '2000',
      CONVEYOR_LOG: process.env.TEST_LOG ?? 'warn',
      ...extraEnv,
    };
    const child = spawn(BIN, ['dev'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let logs = '';
    const keep = (d) => {
      logs = (logs + d).slice(-20_000);
      if (process.env.TEST_LOG) process.stderr.write(d);
    };
    child.stderr.on('data', keep);
    const url = await new Promise((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`conveyor dev did not start within 60 s:\n${logs}`)), 60_000);
      child.stdout.on('data', (d) => {
        keep(d);
        out += d;
        const m = out.match(/conveyor api listening on (http:\/\/\S+)/);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
      child.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`conveyor dev exited (${code}) before listening:\n${logs}\n(${HOW})`));
      });
    });
    return new Conveyor(child, url, env, id, () => logs);
  }

  constructor(child, url, env, id, logs) {
    this.child = child;
    this.url = url;
    this.env = env;
    this.id = id;
    this.logs = logs;
  }

  /** A token from `conveyor token`, as a user would mint one. */
  token(scope = CLIENT_SCOPES, { tenant = 'acme', kinds } = {}) {
    const args = ['token', '--tenant', tenant, '--scope', scope, '--sub', 'sdk-test'];
    if (kinds) args.push('--kinds', kinds.join(','));
    return execFileSync(BIN, args, { env: this.env }).toString().trim();
  }

  /** A worker token (scope `worker`). */
  workerToken(options = {}) {
    return this.token('worker', options);
  }

  /** Stops the server; drops its database when `clean` (the test module passed). */
  async stop({ clean = true } = {}) {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = new Promise((r) => this.child.once('exit', r));
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timer);
    }
    if (clean) {
      // Best effort, like the Rust harness: a passing module leaves no database behind.
      const admin = `${process.env.DATABASE_URL.replace(/\/[^/]*$/, '')}/postgres`;
      spawnSync('psql', [admin, '-qc', `DROP DATABASE IF EXISTS "conveyor_test_${this.id}"`], { stdio: 'ignore' });
    } else {
      process.stderr.write(`conveyor dev of this module kept: namespace ${this.id}, database conveyor_test_${this.id}\n`);
    }
  }
}

/** Polls `fn` until it returns something other than `undefined`/`false`/`null`; rejects after `timeoutMs`. */
export async function waitFor(fn, { timeoutMs = 30_000, intervalMs = 50, what = 'a condition' } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false && v !== null) return v;
      last = undefined;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.stack ?? last}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** A promise with its resolve function. */
export function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** The terminal events of a timeline. */
export function terminalEvents(timeline) {
  return timeline.filter((e) => /\.job\.(succeeded|dead_lettered|cancelled)$/.test(e.type));
}

/** The short types (`job.started`, …) of a timeline. */
export function types(timeline) {
  return timeline.map((e) => e.type.replace(/^.*\.(job\.[a-z_]+)$/, '$1'));
}

/**
 * The job's timeline once the read model has caught up with everything in the log so far: a
 * `noop` job submitted now and seen succeeded in the read model is a barrier, since the projector
 * applies the log in order. So a duplicate terminal event, had one been appended, would show.
 */
export async function settledTimeline(client, id) {
  const barrier = await client.submit('noop', { echo: 'barrier' });
  await waitFor(async () => (await client.get(barrier.id)).status === 'succeeded', { what: 'the barrier job' });
  return client.timeline(id);
}
