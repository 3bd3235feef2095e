// The system under test for the examples: a real `conveyor dev` (API, worker, projector,
// notifier) on a fresh namespace and database, started the way tests/browser/conveyor.js does,
// against the NATS and Postgres that scripts/test (or scripts/services.sh) started; plus helpers
// to run the examples' own processes and to wait on conditions.

import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const EXAMPLES = join(dirname(fileURLToPath(import.meta.url)), '..');
export const ROOT = join(EXAMPLES, '..');
export const BIN = process.env.CONVEYOR_BIN ?? join(ROOT, 'target', 'debug', 'conveyor');
export const SHOTS = join(ROOT, 'target', 'screenshots');
const START = 'run examples/test with CONVEYOR_NATS_URL and DATABASE_URL set and the binary at CONVEYOR_BIN: scripts/test does all three (it starts NATS 2.10+ and Postgres and builds conveyor)';
const SECRET = `examples-test-secret-${randomBytes(16).toString('hex')}`; // 32+ bytes
export const WAIT = 60_000;

/** Polls `fn` until it returns something truthy (never a fixed sleep). */
export async function until(fn, what, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A child process whose output is kept (and echoed with TEST_LOG) for error messages. */
export class Proc {
  constructor(name, cmd, args, opts = {}) {
    this.name = name;
    this.output = '';
    this.child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve({ code, signal })));
    for (const s of [this.child.stdout, this.child.stderr]) {
      s.on('data', (d) => {
        this.output = (this.output + d).slice(-20_000);
        if (process.env.TEST_LOG) process.stderr.write(`[${name}] ${d}`);
      });
    }
  }

  /** Resolves with the first match of `re` in the output. */
  async waitFor(re, what = String(re), timeout = WAIT) {
    let exited = false;
    this.exited.then(() => (exited = true));
    return until(() => {
      const m = this.output.match(re);
      if (m) return m;
      if (exited) throw Object.assign(new Error(`${this.name} exited before ${what}:\n${this.output}`), { fatal: true });
      return null;
    }, `${this.name}: ${what}\n${this.output}`, timeout).catch((e) => {
      throw new Error(e.message);
    });
  }

  /** SIGTERM, then resolves with {code, signal} once it exited (SIGKILL after 20 s). */
  async stop(signal = 'SIGTERM') {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return this.exited;
    this.child.kill(signal);
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 20_000);
    const res = await this.exited;
    clearTimeout(timer);
    return res;
  }
}

export class Conveyor {
  static async start() {
    for (const name of ['CONVEYOR_NATS_URL', 'DATABASE_URL']) {
      if (!process.env[name]) throw new Error(`${name} is not set: ${START}`);
    }
    if (!existsSync(BIN)) throw new Error(`${BIN} does not exist: ${START}`);
    const id = randomBytes(6).toString('hex');
    const env = {
      ...process.env,
      CONVEYOR_NAMESPACE: `x${id}`,
      DATABASE_URL: `${process.env.DATABASE_URL.replace(/\/[^/]*$/, '')}/conveyor_test_x${id}`,
      CONVEYOR_HTTP_ADDR: '127.0.0.1:0',
      CONVEYOR_METRICS_ADDR: '127.0.0.1:0',
      CONVEYOR_JWT_SECRET: SECRET,
      CONVEYOR_ACK_WAIT_MS: '2000',
      CONVEYOR_RETRY_BASE_MS: '50',
      CONVEYOR_RETRY_MAX_MS: '500',
      CONVEYOR_SHUTDOWN_GRACE_MS: '2000',
      CONVEYOR_LOG: process.env.TEST_LOG ?? 'warn',
    };
    const proc = new Proc('conveyor', BIN, ['dev'], { env });
    const m = await proc.waitFor(/conveyor api listening on (http:\/\/\S+)/, 'the API listening');
    return new Conveyor(proc, m[1], env);
  }

  constructor(proc, url, env) {
    this.proc = proc;
    this.url = url;
    this.env = env;
    this.namespace = env.CONVEYOR_NAMESPACE;
  }

  /** A token from `conveyor token`, as a user mints one. */
  token(scope, { tenant = 'acme', kinds } = {}) {
    const args = ['token', '--tenant', tenant, '--scope', scope];
    if (kinds) args.push('--kinds', kinds);
    return execFileSync(BIN, args, { env: this.env }).toString().trim();
  }

  /** Calls the API; resolves with {status, body, headers}. */
  async call(token, path, { method = 'GET', body, headers = {} } = {}) {
    const res = await fetch(this.url + path, {
      method,
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json', ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let parsed = text;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      // not JSON: keep the text
    }
    return { status: res.status, body: parsed, headers: res.headers };
  }

  /** Waits until the job is in a terminal status in the read model; returns it. */
  async waitEnded(token, id) {
    return until(async () => {
      const r = await this.call(token, `/v1/jobs/${id}`);
      return ['succeeded', 'failed', 'cancelled'].includes(r.body?.status) ? r.body : null;
    }, `job ${id} to end`);
  }

  /**
   * Stops conveyor dev, then drops its database (best effort, with psql when installed; set
   * KEEP_TEST_DB=1 to keep it). The namespace's streams stay in NATS, as tests/browser leaves them.
   */
  async stop() {
    await this.proc.stop();
    if (process.env.KEEP_TEST_DB) return;
    const db = this.env.DATABASE_URL.replace(/^.*\//, '');
    try {
      execFileSync('psql', [process.env.DATABASE_URL.replace(/\/[^/]*$/, '/postgres'), '-qAtc', `DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`], { stdio: 'pipe' });
    } catch {
      // no psql, or not allowed: the database stays
    }
  }
}

export function shotsDir() {
  mkdirSync(SHOTS, { recursive: true });
  return SHOTS;
}
