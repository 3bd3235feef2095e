// The system under test: a real `conveyor dev` (API, worker, projector, notifier) on a fresh
// namespace and database, against the NATS and Postgres that scripts/test started.

import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = process.env.CONVEYOR_BIN ?? join(ROOT, 'target', 'debug', 'conveyor');
const START = 'run the browser tests through `scripts/test`, which builds conveyor and starts NATS 2.10+ and Postgres';
const SECRET = 'browser-test-secret';

export class Conveyor {
  static async start() {
    for (const name of ['CONVEYOR_NATS_URL', 'DATABASE_URL']) {
      if (!process.env[name]) throw new Error(`${name} is not set: ${START}`);
    }
    if (!existsSync(BIN)) throw new Error(`${BIN} does not exist: ${START}`);
    const id = randomBytes(6).toString('hex');
    const env = {
      ...process.env,
      CONVEYOR_NAMESPACE: `b${id}`,
      DATABASE_URL: `${process.env.DATABASE_URL.replace(/\/[^/]*$/, '')}/conveyor_test_b${id}`,
      CONVEYOR_HTTP_ADDR: '127.0.0.1:0',
      CONVEYOR_JWT_SECRET: SECRET,
      CONVEYOR_ACK_WAIT_MS: '2000',
      CONVEYOR_RETRY_BASE_MS: '50',
      CONVEYOR_RETRY_MAX_MS: '500',
      CONVEYOR_SHUTDOWN_GRACE_MS: '2000',
      CONVEYOR_LOG: process.env.TEST_LOG ?? 'warn',
    };
    const child = spawn(BIN, ['dev'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d) => {
      stderr = (stderr + d).slice(-8000);
      if (process.env.TEST_LOG) process.stderr.write(d);
    });
    const url = await new Promise((resolve, reject) => {
      let out = '';
      const timer = setTimeout(() => reject(new Error(`conveyor dev did not start within 60 s: ${stderr}`)), 60_000);
      child.stdout.on('data', (d) => {
        out += d;
        const m = out.match(/conveyor api listening on (http:\/\/\S+)/);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
      child.on('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`conveyor dev exited (${code}) before listening: ${stderr}\n(${START})`));
      });
    });
    return new Conveyor(child, url, env);
  }

  constructor(child, url, env) {
    this.child = child;
    this.url = url;
    this.env = env;
  }

  /** A token from `conveyor token`, as a user would mint one. */
  token(scope = 'jobs:write jobs:read events:read admin operator', tenant = 'acme') {
    return execFileSync(BIN, ['token', '--tenant', tenant, '--scope', scope, '--sub', 'browser-test'], { env: this.env }).toString().trim();
  }

  /** Calls the API with `token`; resolves with {status, body}. */
  async call(token, path, { method = 'GET', body } = {}) {
    const res = await fetch(this.url + path, {
      method,
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null, headers: res.headers };
  }

  async stop() {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(timer);
  }
}
