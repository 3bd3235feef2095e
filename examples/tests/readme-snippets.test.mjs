// README.md's section "Your jobs, in your language": its TypeScript and Python worker snippets,
// extracted from README.md at test time and run exactly as written against a real
// `conveyor dev`, with CONVEYOR_URL and CONVEYOR_WORKER_TOKEN set as the README says. Each must
// run report.monthly {"month": "2026-10"} to {"url": "/reports/2026-10.csv"} with 10
// job.progressed events, and exit 0 on SIGTERM. Run by examples/test.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { Conveyor, Proc, ROOT, until } from './conveyor.mjs';

const SDK = join(ROOT, 'sdks', 'typescript');
const TSC = join(SDK, 'node_modules', 'typescript', 'bin', 'tsc');
const PYTHON = process.env.EXAMPLES_PYTHON ?? join(ROOT, '.cache', 'examples-venv', 'bin', 'python');
const SECTION = '## Your jobs, in your language';

/** The ```lang blocks of README.md's section, as written. */
function snippets(lang) {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const start = readme.indexOf(`\n${SECTION}\n`);
  assert.ok(start >= 0, `README.md has no section "${SECTION}"`);
  const rest = readme.slice(start + SECTION.length + 2);
  const end = rest.search(/^## /m);
  const section = end < 0 ? rest : rest.slice(0, end);
  return [...section.matchAll(/^```(\w+)\n([\s\S]*?)^```$/gm)].filter((m) => m[1] === lang).map((m) => m[2]);
}

function one(lang) {
  const found = snippets(lang);
  assert.equal(found.length, 1, `README.md's section "${SECTION}" should have one \`\`\`${lang} block, has ${found.length}`);
  return found[0];
}

let conveyor;
let clientToken;
let workerToken;
const temps = [];

before(async () => {
  conveyor = await Conveyor.start();
  // As the README says: conveyor token --tenant dev --scope worker --kinds report.monthly
  workerToken = conveyor.token('worker', { tenant: 'dev', kinds: 'report.monthly' });
  clientToken = conveyor.token('jobs:write jobs:read', { tenant: 'dev' });
});

after(async () => {
  await conveyor?.stop();
  for (const dir of temps) rmSync(dir, { recursive: true, force: true });
});

function tempDir(name) {
  const dir = mkdtempSync(join(tmpdir(), `conveyor-readme-${name}-`));
  temps.push(dir);
  return dir;
}

/**
 * Starts the snippet's worker, submits report.monthly {"month": "2026-10"} (again until the API
 * knows the kind, which the worker registers at start), and checks the outcome, the timeline and
 * a clean exit on SIGTERM.
 */
async function runsReportMonthly(name, cmd, args, cwd) {
  const worker = new Proc(name, cmd, args, {
    cwd,
    env: { ...process.env, CONVEYOR_URL: conveyor.url, CONVEYOR_WORKER_TOKEN: workerToken },
  });
  try {
    let exited = false;
    worker.exited.then(() => (exited = true));
    const submitted = await until(async () => {
      if (exited) throw new Error(`the ${name} worker exited:\n${worker.output}`);
      const r = await conveyor.call(clientToken, '/v1/jobs', { method: 'POST', body: { kind: 'report.monthly', payload: { month: '2026-10' } } });
      if (r.status === 422 && /kind/i.test(JSON.stringify(r.body))) return null; // not registered yet
      assert.equal(r.status, 202, JSON.stringify(r.body));
      return r.body;
    }, `the API to accept report.monthly (the ${name} worker registers it)\n${worker.output}`);
    const job = await conveyor.waitEnded(clientToken, submitted.id);
    assert.equal(job.status, 'succeeded', `${JSON.stringify(job)}\n${worker.output}`);
    assert.deepEqual(job.result, { url: '/reports/2026-10.csv' });
    const events = await conveyor.call(clientToken, `/v1/jobs/${submitted.id}/events`);
    assert.equal(events.status, 200);
    const progressed = events.body.filter((e) => e.type.endsWith('.job.progressed'));
    assert.equal(progressed.length, 10, events.body.map((e) => e.type).join(', '));
    assert.deepEqual(progressed.map((e) => [e.data.current, e.data.total, e.data.message]),
      Array.from({ length: 10 }, (_, i) => [i + 1, 10, `${i + 1} of 10 accounts`]));
    const { code, signal } = await worker.stop('SIGTERM');
    assert.deepEqual({ code, signal }, { code: 0, signal: null }, `the ${name} worker on SIGTERM:\n${worker.output}`);
  } finally {
    await worker.stop('SIGKILL');
  }
}

test('the TypeScript snippet, compiled with the SDK\'s tsc (NodeNext, ES2022), runs report.monthly', async () => {
  const code = one('ts');
  const dir = tempDir('ts');
  writeFileSync(join(dir, 'package.json'), JSON.stringify({
    name: 'readme-snippet-ts', private: true, type: 'module',
    dependencies: { '@conveyor/sdk': `file:${SDK}` },
  }, null, 2));
  writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({
    compilerOptions: {
      module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022', strict: true,
      typeRoots: [join(SDK, 'node_modules', '@types')], types: ['node'], outDir: 'dist', rootDir: 'src',
    },
    include: ['src'],
  }, null, 2));
  execFileSync('mkdir', ['-p', join(dir, 'src')]);
  writeFileSync(join(dir, 'src', 'worker.mts'), code);
  // As the README says: npm install ./sdks/typescript (a link; the SDK has no runtime dependencies).
  execFileSync('npm', ['install', '--no-audit', '--no-fund', '--loglevel=error', '--offline', '--ignore-scripts', SDK], { cwd: dir, stdio: 'pipe' });
  try {
    execFileSync(process.execPath, [TSC, '-p', 'tsconfig.json'], { cwd: dir, stdio: 'pipe' });
  } catch (e) {
    assert.fail(`the README's TypeScript snippet does not compile:\n${e.stdout}${e.stderr}`);
  }
  await runsReportMonthly('ts-snippet', process.execPath, [join(dir, 'dist', 'worker.mjs')], dir);
});

test('the Python snippet, with the SDK installed from sdks/python, runs report.monthly', async () => {
  const code = one('python');
  const dir = tempDir('py');
  writeFileSync(join(dir, 'worker.py'), code);
  await runsReportMonthly('python-snippet', PYTHON, [join(dir, 'worker.py')], dir);
});
