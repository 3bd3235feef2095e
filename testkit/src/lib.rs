//! The end-to-end test harness of `tests/it`, `tests/chaos` and `tests/cluster`: a fresh
//! namespace and database per test, the real `conveyor` binary run as child processes against the
//! real NATS and Postgres, and a small HTTP client. A test that passes leaves no database or
//! stream behind; one that fails keeps them and prints where. [`services`] has the servers a test
//! owns so it can fail them.
//!
//! Services come from `CONVEYOR_NATS_URL` and `DATABASE_URL` (set by `scripts/test`). A test that
//! cannot reach them fails, naming the command that starts them. The binary under test is named
//! by the test crate, the one that Cargo tells where it is:
//!
//! ```text
//! const BUILD: testkit::Build = testkit::build!();
//! let env = testkit::Env::new(BUILD).await;
//! let (_api, api) = env.spawn_http("dev").await;
//! ```

pub mod services;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream;
use events::Tenant;
use serde_json::Value;
use sqlx::migrate::MigrateDatabase;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// What Cargo tells an integration test alone, at compile time: where this build's `conveyor`
/// binary is, and a scratch folder for logs and stores (`target/tmp`). Made by [`build!`].
#[derive(Debug, Clone, Copy)]
pub struct Build {
    /// The `conveyor` binary (`CARGO_BIN_EXE_conveyor`).
    pub bin: &'static str,
    /// The scratch folder (`CARGO_TARGET_TMPDIR`).
    pub tmp: &'static str,
}

/// The [`Build`] of the integration test this is expanded in.
#[macro_export]
macro_rules! build {
    () => {
        $crate::Build {
            bin: env!("CARGO_BIN_EXE_conveyor"),
            tmp: env!("CARGO_TARGET_TMPDIR"),
        }
    };
}

const SECRET: &str = "test-secret-of-the-end-to-end-suite-0123456789";
const START_SERVICES: &str = "run the tests with `scripts/test`, which starts NATS 2.10+ and Postgres (or start them with `scripts/up`)";

/// One test's world: a namespace and a database, both removed on drop unless the test failed
/// (see `impl Drop for Env`). The processes it started are killed when their `Proc`s drop.
#[derive(Debug)]
pub struct Env {
    build: Build,
    pub ns: String,
    pub nats_url: String,
    pub db_url: String,
    /// The database URL the roles use, when it differs from `db_url` (through a proxy).
    roles_db_url: Option<String>,
    extra_env: Vec<(String, String)>,
    logs: PathBuf,
}

/// A passing test leaves nothing behind: its database is dropped, and its namespace's streams,
/// key-value buckets and object stores are deleted. A failing one (the thread is panicking)
/// keeps them for a look, and says where they are.
impl Drop for Env {
    fn drop(&mut self) {
        let db = self
            .db_url
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        if std::thread::panicking() {
            eprintln!(
                "test failed: kept its database {db} (namespace {}, NATS {}; process logs: {}/{}-*.log)",
                self.ns,
                self.nats_url,
                self.logs.display(),
                self.ns
            );
            return;
        }
        let (db_url, nats_url, ns) = (self.db_url.clone(), self.nats_url.clone(), self.ns.clone());
        // `drop` is synchronous and may run on the test's runtime thread: the cleanup gets a
        // thread and a small runtime of its own, and the test waits for it (bounded).
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the cleanup");
            rt.block_on(async {
                let limit = Duration::from_secs(20);
                let (dropped, deleted) = tokio::join!(
                    tokio::time::timeout(limit, drop_database(&db_url)),
                    tokio::time::timeout(limit, delete_namespace(&nats_url, &ns)),
                );
                if let Err(e) = dropped.unwrap_or_else(|_| Err("timed out".into())) {
                    eprintln!("test database {db_url} not dropped: {e}");
                }
                if let Err(e) = deleted.unwrap_or_else(|_| Err("timed out".into())) {
                    eprintln!("namespace {ns} not deleted from NATS at {nats_url}: {e}");
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Drops the database of `db_url`, ending the sessions still on it (`WITH (FORCE)`, Postgres 13+:
/// the test's processes were killed, but their sessions, and pools the test opened, may linger).
async fn drop_database(db_url: &str) -> Result<(), String> {
    use sqlx::ConnectOptions as _;
    use sqlx::Connection as _;
    let options: sqlx::postgres::PgConnectOptions = db_url.parse().map_err(|e| format!("{e}"))?;
    let name = options
        .get_database()
        .ok_or("the URL names no database")?
        .to_owned();
    let mut conn = options
        .database("postgres")
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let sql = format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        name.replace('"', "\"\"")
    );
    // A process killed a moment ago may still be connecting: try again briefly.
    let mut tries = 0;
    let result = loop {
        match sqlx::query(&sql).execute(&mut conn).await {
            Ok(_) => break Ok(()),
            Err(_) if tries < 5 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => break Err(e.to_string()),
        }
    };
    let _ = conn.close().await;
    result
}

/// Deletes this namespace's streams from the NATS server at `nats_url`: its own (`<NS>_…`) and
/// those under its key-value buckets (`KV_<NS>_…`) and object stores (`OBJ_<NS>_…`).
async fn delete_namespace(nats_url: &str, ns: &str) -> Result<(), String> {
    use futures::TryStreamExt;
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(nats_url)
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::new(client);
    let upper = ns.to_uppercase();
    let prefixes = [
        format!("{upper}_"),
        format!("KV_{upper}_"),
        format!("OBJ_{upper}_"),
    ];
    let names: Vec<String> = js
        .stream_names()
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    for name in names
        .iter()
        .filter(|n| prefixes.iter().any(|p| n.starts_with(p.as_str())))
    {
        js.delete_stream(name)
            .await
            .map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

/// A running `conveyor` process; killed when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    /// Where its stderr (the logs) goes.
    pub log: PathBuf,
}

impl Proc {
    /// SIGKILL, and wait until it is gone.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then wait for the exit status.
    pub async fn terminate_and_wait(&mut self) -> std::process::ExitStatus {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("the process exits within 60 s of SIGTERM")
            .expect("wait for the process")
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("process is running")
    }

    /// Whether it has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Resident memory of the process, in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("process is running");
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("read /proc status")
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status")
    }
}

/// The NATS server the suite shares (`CONVEYOR_NATS_URL`, as `scripts/test` sets it).
fn suite_nats_url() -> String {
    std::env::var("CONVEYOR_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

impl Env {
    /// A fresh namespace and migrated database, on the suite's NATS server.
    pub async fn new(build: Build) -> Self {
        Self::on_nats(build, &suite_nats_url()).await
    }

    /// A fresh namespace on the suite's NATS server, and a migrated database on the Postgres
    /// server of `base` (a URL naming any database of it).
    pub async fn on_postgres(build: Build, base: &str) -> Self {
        Self::on_services(build, &suite_nats_url(), base).await
    }

    /// A fresh namespace and migrated database, on the NATS server at `nats_url`.
    pub async fn on_nats(build: Build, nats_url: &str) -> Self {
        let base = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/conveyor".into());
        Self::on_services(build, nats_url, &base).await
    }

    /// A fresh namespace on the NATS server at `nats_url`, and a migrated database on the
    /// Postgres server of `base` (a URL naming any database of it).
    pub async fn on_services(build: Build, nats_url: &str, base: &str) -> Self {
        let nats_url = nats_url.to_owned();
        let client = async_nats::connect(&nats_url).await.unwrap_or_else(|e| {
            panic!("NATS is not reachable at {nats_url} ({e}): {START_SERVICES}")
        });
        let version = client.server_info().version;
        let minor: u32 = version
            .split('.')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        assert!(
            version.starts_with("2.") && minor >= 10,
            "NATS at {nats_url} is {version}, conveyor needs 2.10+: {START_SERVICES}"
        );
        let id = uuid::Uuid::new_v4().simple().to_string();
        let ns = format!("t{}", &id[..15]);
        let db_url = format!(
            "{}/conveyor_test_{ns}",
            base.rsplit_once('/')
                .expect("DATABASE_URL has a database")
                .0
        );
        sqlx::Postgres::create_database(&db_url)
            .await
            .unwrap_or_else(|e| {
                panic!("Postgres is not reachable at {base} ({e}): {START_SERVICES}")
            });
        let pool = PgPool::connect(&db_url)
            .await
            .expect("connect to the test database");
        readmodel::MIGRATOR.run(&pool).await.expect("migrate");
        pool.close().await;
        let logs = PathBuf::from(build.tmp).join("logs");
        std::fs::create_dir_all(&logs).expect("log folder");
        Self {
            build,
            ns,
            nats_url,
            db_url,
            roles_db_url: None,
            extra_env: Vec::new(),
            logs,
        }
    }

    /// Where the processes' logs go.
    pub fn logs_dir(&self) -> &std::path::Path {
        &self.logs
    }

    /// Makes the roles started from now on reach Postgres through `proxy`.
    pub fn through(&mut self, proxy: &services::PgProxy) -> &mut Self {
        self.roles_db_url = Some(proxy.url(&self.db_url));
        self
    }

    /// Sets an environment variable for processes started from now on.
    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        self.extra_env.push((key.into(), value.into()));
        self
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.build.bin);
        c.args(args)
            .env("CONVEYOR_NATS_URL", &self.nats_url)
            .env(
                "DATABASE_URL",
                self.roles_db_url.as_deref().unwrap_or(&self.db_url),
            )
            .env("CONVEYOR_NAMESPACE", &self.ns)
            .env("CONVEYOR_JWT_SECRET", SECRET)
            .env("CONVEYOR_HTTP_ADDR", "127.0.0.1:0")
            .env("CONVEYOR_ACK_WAIT_MS", "2000")
            .env("CONVEYOR_RETRY_BASE_MS", "50")
            .env("CONVEYOR_RETRY_MAX_MS", "500")
            .env("CONVEYOR_SHUTDOWN_GRACE_MS", "2000")
            .env("CONVEYOR_ALLOW_PRIVATE_WEBHOOKS", "true")
            .env(
                "CONVEYOR_WEBHOOK_SECRET",
                "test-webhook-secret-of-the-end-to-end-suite",
            )
            .env("CONVEYOR_WEBHOOK_RETRY_BASE_MS", "50")
            .env("CONVEYOR_METRICS_ADDR", "127.0.0.1:0")
            .env(
                "CONVEYOR_LOG",
                std::env::var("TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .kill_on_drop(true);
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c
    }

    /// Runs a one-shot `conveyor` command to completion; panics on failure.
    pub async fn run(&self, args: &[&str]) -> std::process::Output {
        let out = self.run_raw(args, &[], &[]).await;
        assert!(
            out.status.success(),
            "conveyor {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Runs `conveyor` with `args`, the suite's variables named in `unset` removed and `vars`
    /// set, to its end (60 s at most), whatever its exit status.
    pub async fn run_raw(
        &self,
        args: &[&str],
        vars: &[(&str, &str)],
        unset: &[&str],
    ) -> std::process::Output {
        let mut c = self.command(args);
        for k in unset {
            c.env_remove(k);
        }
        c.envs(vars.iter().copied());
        let out = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output();
        tokio::time::timeout(Duration::from_secs(60), out)
            .await
            .unwrap_or_else(|_| panic!("conveyor {args:?} still running after 60 s"))
            .expect("run conveyor")
    }

    /// Waits until the live read models have applied every event in the stream; returns the
    /// stream's last sequence.
    pub async fn settle(&self) -> i64 {
        let db = self.db().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let last = self.stream_messages("EVENTS").await as i64;
            let cp: Option<i64> = sqlx::query_scalar(
                "SELECT min(last_seq) FROM projection_checkpoints
                 WHERE version = (SELECT version FROM read_model_versions WHERE state = 'live')",
            )
            .fetch_one(&db)
            .await
            .expect("read checkpoints");
            if cp == Some(last) {
                return last;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "projections did not catch up ({cp:?} of {last})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every row of a read-model table, as JSON, in a stable order.
    pub async fn table(&self, table: &str, order: &str) -> Vec<Value> {
        let db = self.db().await;
        let rows: Vec<sqlx::types::Json<Value>> = sqlx::query_scalar(&format!(
            "SELECT to_jsonb(t) FROM {table} t ORDER BY {order}"
        ))
        .fetch_all(&db)
        .await
        .expect("read table");
        rows.into_iter().map(|r| r.0).collect()
    }

    /// The three read models (`jobs`, `job_events`, `job_stats`), every row, in a stable order:
    /// what a rebuild must reproduce.
    pub async fn read_models(&self) -> Vec<Vec<Value>> {
        let mut out = Vec::new();
        for (table, order) in [
            ("jobs", "id"),
            ("job_events", "seq"),
            ("job_stats", "tenant, kind, status"),
        ] {
            out.push(self.table(table, order).await);
        }
        out
    }

    /// `job_stats` (rows with a count) and a recount of `jobs` by tenant, kind and status, in
    /// the same order: equal when the stats read model is right.
    pub async fn job_stats_and_recount(&self) -> (Vec<StatsRow>, Vec<StatsRow>) {
        let db = self.db().await;
        let stats = sqlx::query_as(
            "SELECT tenant, kind, status, count FROM job_stats WHERE count <> 0 ORDER BY 1, 2, 3",
        )
        .fetch_all(&db)
        .await
        .expect("read job_stats");
        let recount = sqlx::query_as(
            "SELECT tenant, kind, status, count(*) FROM jobs GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .fetch_all(&db)
        .await
        .expect("recount jobs");
        (stats, recount)
    }

    /// Starts `conveyor <role>` (words split on spaces); its stderr goes to `target/tmp/logs/<ns>-<role>-<n>.log`.
    pub async fn spawn(&self, role: &str) -> Proc {
        self.spawn_with(role, &[]).await
    }

    /// [`Env::spawn`] with extra environment variables for this process only.
    pub async fn spawn_with(&self, role: &str, vars: &[(&str, &str)]) -> Proc {
        let (path, log) = self.log_file(role);
        let args: Vec<&str> = role.split_whitespace().collect();
        let child = self
            .command(&args)
            .envs(vars.iter().copied())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start conveyor");
        Proc { child, log: path }
    }

    /// A new log file for a process of `role`: `<logs>/<ns>-<role>-<n>.log`.
    fn log_file(&self, role: &str) -> (PathBuf, std::fs::File) {
        let n = std::fs::read_dir(&self.logs)
            .map(|d| d.count())
            .unwrap_or(0);
        let name = role.replace(' ', "-");
        let path = self.logs.join(format!("{}-{name}-{n}.log", self.ns));
        let log = std::fs::File::create(&path).expect("log file");
        (path, log)
    }

    /// Starts `role` with these variables set and those unset, and returns its stdout lines as
    /// they come.
    pub fn spawn_lines(
        &self,
        role: &str,
        vars: &[(&str, &str)],
        unset: &[&str],
    ) -> (Proc, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let (path, log) = self.log_file(role);
        let mut c = self.command(&[role]);
        for k in unset {
            c.env_remove(k);
        }
        c.envs(vars.iter().copied());
        let mut child = c
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start conveyor");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        (Proc { child, log: path }, rx)
    }

    /// Starts a role that serves HTTP (`api` or `dev`) and returns a client of it.
    pub async fn spawn_http(&self, role: &str) -> (Proc, Api) {
        let (proc, url) = self
            .spawn_announcing(role, "conveyor api listening on ")
            .await;
        (
            proc,
            Api::new(
                &url,
                &self.token("acme", "jobs:write jobs:read events:read"),
            ),
        )
    }

    /// Starts a role without an API (`worker`, `projector`, `notifier`) and returns the base URL
    /// of its metrics and health endpoints.
    pub async fn spawn_ops(&self, role: &str) -> (Proc, String) {
        self.spawn_announcing(role, "conveyor metrics listening on ")
            .await
    }

    /// Starts a role and waits for the stdout line starting with `prefix`; returns what follows.
    async fn spawn_announcing(&self, role: &str, prefix: &str) -> (Proc, String) {
        let mut proc = self.spawn(role).await;
        let stdout = proc.child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(url) = line.strip_prefix(prefix) {
                    return url.to_owned();
                }
            }
            panic!(
                "conveyor {role} exited before listening; see {}",
                self.logs_dir().display()
            );
        })
        .await
        .expect("the process did not start within 60 s");
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        (proc, url)
    }

    /// A token of `tenant` with `scope`.
    pub fn token(&self, tenant: &str, scope: &str) -> String {
        producers::auth::mint(&jwt(), "test", &Tenant::parse(tenant).unwrap(), scope, 3600)
    }

    /// A pool on this test's database.
    pub async fn db(&self) -> PgPool {
        PgPool::connect(&self.db_url)
            .await
            .expect("connect to the test database")
    }

    /// Stores `ev` in EVENTS as the API would, without anything that follows it (what a crash
    /// right after the publish leaves).
    pub async fn publish_event(&self, ev: &events::Envelope<events::JobEvent>) {
        let ns = events::Namespace::parse(&self.ns).expect("namespace");
        self.js()
            .await
            .publish(ns.event_subject(ev), ev.to_json().into())
            .await
            .expect("publish")
            .await
            .expect("stored");
    }

    /// JetStream on the test server.
    pub async fn js(&self) -> jetstream::Context {
        jetstream::new(
            async_nats::connect(&self.nats_url)
                .await
                .expect("connect to NATS"),
        )
    }

    /// Messages stored in one of this namespace's streams (`EVENTS` or `COMMANDS`), 0 if absent.
    pub async fn stream_messages(&self, which: &str) -> u64 {
        let name = format!("{}_{which}", self.ns.to_uppercase());
        match self.js().await.get_stream(&name).await {
            Ok(mut s) => s.info().await.expect("stream info").state.messages,
            Err(_) => 0,
        }
    }
}

/// A `job_stats` row: tenant, kind, status, count.
pub type StatsRow = (String, String, String, i64);

/// The JWT settings the test processes use.
pub fn jwt() -> producers::JwtSettings {
    producers::JwtSettings::hs256(SECRET)
}

/// A client of a running API with one token.
#[derive(Debug, Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            base: base.into(),
            token: token.into(),
            http: reqwest::Client::new(),
        }
    }

    /// The same API with another token.
    pub fn with_token(&self, token: &str) -> Self {
        Self::new(&self.base, token)
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
    }

    /// `POST /v1/jobs`, expecting `202`; returns the body.
    pub async fn submit(&self, body: Value) -> Value {
        let res = self
            .request(reqwest::Method::POST, "/v1/jobs")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let json: Value = res.json().await.unwrap();
        assert_eq!(status, 202, "submit {body}: {json}");
        json
    }

    /// `POST /v1/jobs/batch` of `jobs`, expecting every one accepted (`202`); returns the answer.
    pub async fn submit_batch(&self, jobs: Vec<Value>) -> Value {
        let (status, body) = self
            .post("/v1/jobs/batch", &serde_json::json!({ "jobs": jobs }))
            .await;
        assert_eq!(status, 200, "batch: {body}");
        for item in body["items"].as_array().expect("items") {
            assert_eq!(item["status"], 202, "{item}");
        }
        body
    }

    /// `POST` of a JSON body to `path`, whatever the answer: status and JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let res = self
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// `GET` of a path: status and JSON body.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let res = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// `GET /v1/jobs/{id}`, expecting 200.
    pub async fn job(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "GET job {id}: {body}");
        body
    }

    /// The job's timeline event types (`submitted`, `started`, …).
    pub async fn timeline(&self, id: &str) -> Vec<String> {
        let (status, body) = self.get(&format!("/v1/jobs/{id}/events")).await;
        assert_eq!(status, 200, "{body}");
        body.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e["type"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("dev.conveyor.job.")
                    .to_owned()
            })
            .collect()
    }

    /// Polls the job until `done(job)` holds, failing after `secs`.
    pub async fn wait_for(&self, id: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let job = self.job(id).await;
            if done(&job) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} did not get there in {secs} s: {job}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until the job is in a terminal status.
    pub async fn wait_terminal(&self, id: &str) -> Value {
        self.wait_for(id, 60, |j| {
            matches!(
                j["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        })
        .await
    }
}

/// The id of a submitted job.
pub fn id_of(accepted: &Value) -> String {
    accepted["id"].as_str().expect("an id").to_owned()
}

/// Publishes the numbers `numbers` as events of one job, one by one, each acknowledged; a
/// publish that fails (a server restarting, a leader being elected) is retried for up to 60 s.
pub async fn publish_numbered(bus: &bus::Bus, numbers: std::ops::RangeInclusive<u32>) {
    let subject = format!("{}.events.acme.job.j.progress", bus.ns());
    for n in numbers {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let ack = match bus
                .js()
                .publish(subject.clone(), n.to_string().into())
                .await
            {
                Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match ack {
                Ok(()) => break,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "publish {n}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
