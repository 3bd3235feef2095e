// The peer benchmark: graphile-worker's own throughput workload (its perfTest), on the
// Postgres of DATABASE_URL: the schema, a bulk `add_jobs` of JOBS no-op jobs, then PROCESSES
// worker processes with its recommended performance settings (graphile.config.js) running with
// `--once` until the queue is drained. Prints one JSON line.
//
// Run from a folder where graphile-worker is installed (scripts/bench does this).
const { execFileSync, execFile } = require("node:child_process");
const { promisify } = require("node:util");
const { Pool } = require("pg");

const JOBS = Number(process.env.JOBS || 200000);
const PROCESSES = Number(process.env.PROCESSES || 4);
const path = require("node:path");
const installed = path.join(process.cwd(), "node_modules", "graphile-worker");
const cli = path.join(installed, "dist", "cli.js");
const env = { ...process.env, NO_LOG_SUCCESS: "1", GRAPHILE_LOGGER_DEBUG: "" };
const opts = { env, stdio: ["ignore", "ignore", "inherit"] };

async function timed(f) {
  const start = process.hrtime.bigint();
  await f();
  return Number(process.hrtime.bigint() - start) / 1e9;
}

async function main() {
  const pool = new Pool({ connectionString: process.env.DATABASE_URL });
  execFileSync("node", [cli, "--schema-only"], opts);
  // Start-up and shut-down of one worker on an empty queue, taken off the run's time as in
  // graphile-worker's own benchmark.
  const startup = await timed(() => promisify(execFile)("node", [cli, "--once"], { env }));
  const jobs = [];
  for (let i = 0; i < JOBS; i++) jobs.push({ identifier: "noop", payload: { id: i } });
  const enqueue = await timed(() =>
    pool.query(
      "select 1 from graphile_worker.add_jobs(array(select json_populate_recordset(null::graphile_worker.job_spec, $1::json)))",
      [JSON.stringify(jobs)],
    ),
  );
  const run = await timed(() =>
    Promise.all(
      Array.from({ length: PROCESSES }, () => promisify(execFile)("node", [cli, "--once"], { env })),
    ),
  );
  const { rows } = await pool.query("select count(*)::int as left from graphile_worker._private_jobs");
  await pool.end();
  if (rows[0].left !== 0) throw new Error(`${rows[0].left} jobs were left in the queue`);
  const { version } = JSON.parse(
    require("node:fs").readFileSync(path.join(installed, "package.json"), "utf8"),
  );
  console.log(
    JSON.stringify({
      version,
      jobs: JOBS,
      processes: PROCESSES,
      seconds: run - startup,
      jobs_per_sec: JOBS / (run - startup),
      enqueue_per_sec: JOBS / enqueue,
    }),
  );
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
