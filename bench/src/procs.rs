//! The processes a benchmark run owns: a nats-server with a chosen fsync policy, and conveyor's
//! roles, each a separate process in a fresh namespace and database.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::migrate::MigrateDatabase as _;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How JetStream makes acknowledged writes durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sync {
    /// nats-server's default: written to the OS before the ack, fsynced every 2 minutes.
    Default,
    /// `sync_interval: always`: fsynced before the ack, as Postgres commits are.
    Always,
}

impl Sync {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Default => "default sync (2 min)",
            Self::Always => "sync_interval: always",
        }
    }
}

/// A running process, killed when dropped.
pub(crate) struct Proc {
    pub(crate) child: Child,
}

impl Proc {
    /// Resident memory in bytes (Linux).
    pub(crate) fn rss(&self) -> u64 {
        self.child
            .id()
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map_or(0, |kib| kib * 1024)
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A nats-server of the run's own.
pub(crate) struct Nats {
    _proc: Proc,
    pub(crate) url: String,
    pub(crate) version: String,
}

impl Nats {
    /// Starts `bin` with JetStream in `dir` and the given fsync policy.
    pub(crate) async fn start(bin: &Path, dir: &Path, sync: Sync) -> anyhow::Result<Self> {
        let port = free_port()?;
        let store = dir.join(format!("nats-{port}"));
        std::fs::create_dir_all(&store)?;
        let conf = store.join("nats.conf");
        let sync_line = match sync {
            Sync::Default => "",
            Sync::Always => "sync_interval: always",
        };
        std::fs::write(
            &conf,
            format!(
                "max_payload: 2MB\njetstream {{\n  store_dir: {:?}\n  {sync_line}\n}}\n",
                store.join("js")
            ),
        )?;
        let log = std::fs::File::create(store.join("server.log"))?;
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let url = format!("nats://127.0.0.1:{port}");
        for _ in 0..100 {
            if let Ok(client) = async_nats::connect(&url).await {
                let version = client.server_info().version;
                if async_nats::jetstream::new(client)
                    .query_account()
                    .await
                    .is_ok()
                {
                    return Ok(Self {
                        _proc: Proc { child },
                        url,
                        version,
                    });
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("nats-server did not start; see {}", store.display())
    }
}

/// What the roles of a run share.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub(crate) conveyor: PathBuf,
    pub(crate) nats_url: String,
    pub(crate) namespace: String,
    pub(crate) database_url: String,
    pub(crate) logs: PathBuf,
}

/// Databases made by this run, dropped at its end.
static CREATED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Drops the databases this run made.
pub(crate) async fn drop_databases() {
    let urls = std::mem::take(&mut *CREATED.lock().expect("list"));
    for url in urls {
        if let Err(e) = sqlx::Postgres::force_drop_database(&url).await {
            eprintln!("could not drop {url}: {e}");
        }
    }
}

/// A fresh database named after `name` on the server of `base_url`.
pub(crate) async fn fresh_database(base_url: &str, name: &str) -> anyhow::Result<String> {
    let url = format!(
        "{}/{name}",
        base_url
            .rsplit_once('/')
            .context("DATABASE_URL has a database")?
            .0
    );
    if sqlx::Postgres::database_exists(&url).await? {
        sqlx::Postgres::drop_database(&url).await?;
    }
    sqlx::Postgres::create_database(&url)
        .await
        .with_context(|| {
            format!("creating {name}: is Postgres running? (scripts/bench starts it)")
        })?;
    CREATED.lock().expect("list").push(url.clone());
    Ok(url)
}

impl Setup {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.conveyor);
        c.args(args)
            .env("CONVEYOR_NATS_URL", &self.nats_url)
            .env("CONVEYOR_NAMESPACE", &self.namespace)
            .env("DATABASE_URL", &self.database_url)
            .env("CONVEYOR_JWT_SECRET", crate::SECRET)
            .env("CONVEYOR_WEBHOOK_SECRET", crate::SECRET)
            .env("CONVEYOR_HTTP_ADDR", "127.0.0.1:0")
            .env("CONVEYOR_METRICS_ADDR", "127.0.0.1:0")
            .env("CONVEYOR_LOG", "warn")
            // Measure the machinery, not the limits meant for noisy tenants.
            .env("CONVEYOR_RATE_LIMIT", "0")
            .env("CONVEYOR_TENANT_MAX_ACTIVE", "0")
            .env("CONVEYOR_TENANT_MAX_STREAMS", "0")
            .env("CONVEYOR_MAX_STREAMS", "0")
            .env("CONVEYOR_MAX_INFLIGHT", "0")
            .env("CONVEYOR_MAX_CONNECTIONS_PER_ADDRESS", "0")
            .env("CONVEYOR_PUBLISH_INFLIGHT", "20000")
            .kill_on_drop(true);
        c
    }

    /// Runs `conveyor <args>` to completion.
    pub(crate) async fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = self.command(args).output().await?;
        anyhow::ensure!(
            out.status.success(),
            "conveyor {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Starts `conveyor <role>` and waits for the line announcing its address (`api`, `dev`) or
    /// its metrics endpoint (the other roles).
    pub(crate) async fn spawn(
        &self,
        role: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<(Proc, String)> {
        let log = std::fs::File::create(self.logs.join(format!("{}-{role}.log", self.namespace)))?;
        let mut cmd = self.command(&[role]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(log).spawn()?;
        let prefix = if matches!(role, "api" | "dev") {
            "conveyor api listening on "
        } else {
            "conveyor metrics listening on "
        };
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let url = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix(prefix) {
                    return Ok(url.to_owned());
                }
            }
            anyhow::bail!("conveyor {role} exited; see {}", self.logs.display())
        })
        .await
        .context("a role did not start within 60 s")??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok((Proc { child }, url))
    }
}

/// The four roles, as separate processes.
pub(crate) struct Roles {
    pub(crate) api: Proc,
    pub(crate) projector: Proc,
    worker: Option<Proc>,
    notifier: Option<Proc>,
    pub(crate) url: String,
}

impl Roles {
    /// Migrates the database and starts api, worker, projector and notifier.
    pub(crate) async fn start(setup: &Setup) -> anyhow::Result<Self> {
        let mut roles = Self::start_front(setup).await?;
        roles.start_back(setup).await?;
        Ok(roles)
    }

    /// Migrates the database and starts the projector and the API: jobs are accepted and
    /// projected, not run.
    pub(crate) async fn start_front(setup: &Setup) -> anyhow::Result<Self> {
        setup.run(&["migrate"]).await?;
        let (projector, _) = setup.spawn("projector", &[]).await?;
        let (api, url) = setup.spawn("api", &[]).await?;
        Ok(Self {
            api,
            projector,
            worker: None,
            notifier: None,
            url,
        })
    }

    /// Starts the worker and the notifier.
    pub(crate) async fn start_back(&mut self, setup: &Setup) -> anyhow::Result<()> {
        self.start_worker(setup, 256).await?;
        let (notifier, _) = setup.spawn("notifier", &[]).await?;
        self.notifier = Some(notifier);
        Ok(())
    }

    /// Starts a worker with `concurrency` slots.
    pub(crate) async fn start_worker(
        &mut self,
        setup: &Setup,
        concurrency: usize,
    ) -> anyhow::Result<()> {
        let slots = concurrency.to_string();
        let (worker, _) = setup
            .spawn("worker", &[("CONVEYOR_WORKER_CONCURRENCY", &slots)])
            .await?;
        self.worker = Some(worker);
        Ok(())
    }

    /// RSS of each role: api, worker, projector, notifier (0 for one not running).
    pub(crate) fn rss(&self) -> [u64; 4] {
        [
            self.api.rss(),
            self.worker.as_ref().map_or(0, Proc::rss),
            self.projector.rss(),
            self.notifier.as_ref().map_or(0, Proc::rss),
        ]
    }
}

/// Starts an SDK worker (`program script`, from the repository's root) against the API at
/// `url`; it stops when the handle is dropped.
pub(crate) fn spawn_sdk_worker(
    setup: &Setup,
    url: &str,
    token: &str,
    program: PathBuf,
    script: &str,
) -> anyhow::Result<Proc> {
    let log = std::fs::File::create(
        setup
            .logs
            .join(format!("{}-sdk-worker.log", setup.namespace)),
    )?;
    let child = Command::new(&program)
        .arg(script)
        .env("CONVEYOR_URL", url)
        .env("CONVEYOR_WORKER_TOKEN", token)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} {script}", program.display()))?;
    Ok(Proc { child })
}
