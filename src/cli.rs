//! The command line.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use consumers::projector::Projector;
use consumers::worker::Worker;
use consumers::Registry;
use events::Tenant;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;
use crate::config::{ApiArgs, BusArgs, DbArgs, JwtArgs, ProjectorArgs, WorkerArgs, DEV_JWT_SECRET};
use crate::supervisor::Supervisor;

/// conveyor: submit long-running jobs over HTTP; workers, projectors and notifiers do the rest
/// over NATS JetStream and PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "conveyor", version, about)]
pub struct Cli {
    /// Log filter (e.g. `info`, `conveyor=debug`).
    #[arg(long, env = "CONVEYOR_LOG", default_value = "info", global = true)]
    pub log: String,
    /// Log format: `text` or `json`.
    #[arg(
        long,
        env = "CONVEYOR_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything in one process: API, worker and projector (migrates first).
    Dev {
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        worker: WorkerArgs,
        #[command(flatten)]
        projector: ProjectorArgs,
    },
    /// The HTTP API.
    Api {
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A worker: runs jobs of the built-in kinds.
    Worker {
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        worker: WorkerArgs,
    },
    /// The projector: builds the read models in Postgres from the event log.
    Projector {
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        projector: ProjectorArgs,
    },
    /// Creates the database if missing and applies the migrations.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Prints a development token (HS256) on stdout.
    Token {
        /// Tenant of the token.
        #[arg(long, default_value = "dev")]
        tenant: String,
        /// Space-separated scopes.
        #[arg(long, default_value = "jobs:write jobs:read events:read")]
        scope: String,
        /// Subject.
        #[arg(long, default_value = "developer")]
        sub: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        #[command(flatten)]
        jwt: JwtArgs,
    },
    /// Submit, read, list and cancel jobs through the API.
    Jobs {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: JobsCommand,
    },
}

#[derive(Debug, clap::Args)]
struct Target {
    /// API base URL.
    #[arg(
        long,
        env = "CONVEYOR_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// Bearer token (`conveyor token` prints one).
    #[arg(
        long,
        env = "CONVEYOR_TOKEN",
        default_value = "",
        hide_default_value = true,
        global = true
    )]
    token: String,
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Submit a job.
    Submit {
        /// Job kind (`noop`, `sleep`, `flaky`, `fail`, `report.job_stats`, …).
        kind: String,
        /// Payload as JSON, e.g. '{"ms": 500}'.
        #[arg(long)]
        payload: Option<String>,
        /// Attempts before dead-lettering.
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Per-attempt time limit (ms).
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Not before this time (RFC 3339).
        #[arg(long)]
        run_at: Option<String>,
        /// Completion webhook URL.
        #[arg(long)]
        webhook: Option<String>,
        /// Idempotency key: retrying with the same key never makes a second job.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Show a job.
    Get {
        /// Job id.
        id: String,
    },
    /// List jobs, newest first.
    List {
        /// Only this status.
        #[arg(long)]
        status: Option<String>,
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Page size (1 to 500).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Request cancellation of a job.
    Cancel {
        /// Job id.
        id: String,
    },
    /// Show a job's timeline of events.
    Events {
        /// Job id.
        id: String,
    },
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev {
            bus,
            db,
            api,
            worker,
            projector,
        } => dev(bus, db, api, worker, projector).await,
        Command::Api { bus, db, api } => {
            if api.jwt.jwt_secret == DEV_JWT_SECRET {
                tracing::warn!("CONVEYOR_JWT_SECRET is not set: using the development secret");
            }
            let mut sup = Supervisor::new();
            start_api(&mut sup, &bus, &db, &api).await?;
            sup.run(Duration::from_secs(30)).await
        }
        Command::Worker { bus, db, worker } => {
            let mut sup = Supervisor::new();
            start_worker(&mut sup, &bus, &db, &worker).await?;
            sup.run(Duration::from_millis(worker.shutdown_grace_ms) + Duration::from_secs(5))
                .await
        }
        Command::Projector { bus, db, projector } => {
            let mut sup = Supervisor::new();
            start_projector(&mut sup, &bus, &db, &projector).await?;
            sup.run(Duration::from_secs(30)).await
        }
        Command::Migrate { db } => {
            db.migrate().await?;
            println!(
                "migrations applied to {}",
                crate::config::redact(&db.database_url)
            );
            Ok(())
        }
        Command::Token {
            tenant,
            scope,
            sub,
            ttl,
            jwt,
        } => {
            let tenant = Tenant::parse(&tenant).context("--tenant")?;
            println!(
                "{}",
                producers::auth::mint(&jwt.settings(), &sub, &tenant, &scope, ttl)
            );
            Ok(())
        }
        Command::Jobs { target, command } => jobs(target, command).await,
    }
}

async fn dev(
    bus: BusArgs,
    db: DbArgs,
    api: ApiArgs,
    worker: WorkerArgs,
    projector: ProjectorArgs,
) -> anyhow::Result<()> {
    db.migrate().await?;
    let mut sup = Supervisor::new();
    start_projector(&mut sup, &bus, &db, &projector).await?;
    start_worker(&mut sup, &bus, &db, &worker).await?;
    let addr = start_api(&mut sup, &bus, &db, &api).await?;
    let token = producers::auth::mint(
        &api.jwt.settings(),
        "developer",
        &Tenant::parse("dev").expect("valid tenant"),
        "jobs:write jobs:read events:read admin",
        7 * 86_400,
    );
    println!(
        "\nconveyor dev is running: API on http://{addr} (namespace {}, NATS {}, Postgres {})\n\
         A development token (tenant `dev`, valid 7 days):\n\n  export CONVEYOR_URL=http://{addr}\n  export CONVEYOR_TOKEN={token}\n\n\
         Try: conveyor jobs submit sleep --payload '{{\"ms\": 2000, \"steps\": 4}}'\n",
        bus.namespace,
        bus.nats_url,
        crate::config::redact(&db.database_url)
    );
    sup.run(Duration::from_millis(worker.shutdown_grace_ms) + Duration::from_secs(5))
        .await
}

async fn start_api(
    sup: &mut Supervisor,
    bus: &BusArgs,
    db: &DbArgs,
    api: &ApiArgs,
) -> anyhow::Result<SocketAddr> {
    let bus = bus.connect("api").await?;
    let state = producers::AppState::new(bus, db.lazy_pool()?, api.settings()?).await?;
    let listener = tokio::net::TcpListener::bind(&api.http_addr)
        .await
        .with_context(|| format!("cannot listen on {} (CONVEYOR_HTTP_ADDR)", api.http_addr))?;
    let addr = listener.local_addr()?;
    // Machine-readable, for scripts and tests that start the API on port 0.
    println!("conveyor api listening on http://{addr}");
    tracing::info!(%addr, "API listening");
    let token = sup.token();
    sup.spawn("api", async move {
        producers::serve(listener, state, token).await?;
        Ok(())
    });
    Ok(addr)
}

async fn start_worker(
    sup: &mut Supervisor,
    bus: &BusArgs,
    db: &DbArgs,
    worker: &WorkerArgs,
) -> anyhow::Result<()> {
    let bus = bus.connect("worker").await?;
    let w = Worker::new(
        bus,
        Registry::builtin(),
        worker.settings(),
        Some(db.lazy_pool()?),
    );
    let token = sup.token();
    sup.spawn("worker", async move { Ok(w.run(token).await?) });
    Ok(())
}

async fn start_projector(
    sup: &mut Supervisor,
    bus: &BusArgs,
    db: &DbArgs,
    projector: &ProjectorArgs,
) -> anyhow::Result<()> {
    let pool = db.migrate().await?;
    let bus = bus.connect("projector").await?;
    let p = Projector::new(bus, pool, projector.settings());
    let token = sup.token();
    sup.spawn("projector", async move { Ok(p.run(token).await?) });
    Ok(())
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn jobs(target: Target, command: JobsCommand) -> anyhow::Result<()> {
    if target.token.is_empty() {
        anyhow::bail!("no token: set CONVEYOR_TOKEN (`conveyor token` prints one) or pass --token");
    }
    let c = Client::new(&target.url, &target.token);
    let out = match command {
        JobsCommand::Submit {
            kind,
            payload,
            max_attempts,
            timeout_ms,
            run_at,
            webhook,
            idempotency_key,
        } => {
            let mut body = json!({ "kind": kind });
            if let Some(p) = payload {
                body["payload"] = serde_json::from_str(&p)
                    .context("--payload is not valid JSON (e.g. '{\"ms\": 500}')")?;
            }
            if let Some(m) = max_attempts {
                body["max_attempts"] = json!(m);
            }
            if let Some(t) = timeout_ms {
                body["timeout_ms"] = json!(t);
            }
            if let Some(r) = run_at {
                body["run_at"] = json!(r);
            }
            if let Some(w) = webhook {
                body["webhook"] = json!({ "url": w });
            }
            let headers: Vec<(&str, &str)> = idempotency_key
                .as_deref()
                .map(|k| vec![("Idempotency-Key", k)])
                .unwrap_or_default();
            c.call(Method::POST, "/v1/jobs", Some(&body), &headers)
                .await?
        }
        JobsCommand::Get { id } => {
            c.call(Method::GET, &format!("/v1/jobs/{id}"), None, &[])
                .await?
        }
        JobsCommand::List {
            status,
            kind,
            limit,
            cursor,
        } => {
            let mut q = vec![format!("limit={limit}")];
            q.extend(status.map(|s| format!("status={s}")));
            q.extend(kind.map(|k| format!("kind={k}")));
            q.extend(cursor.map(|c| format!("cursor={c}")));
            c.call(Method::GET, &format!("/v1/jobs?{}", q.join("&")), None, &[])
                .await?
        }
        JobsCommand::Cancel { id } => {
            c.call(Method::POST, &format!("/v1/jobs/{id}/cancel"), None, &[])
                .await?
        }
        JobsCommand::Events { id } => {
            c.call(Method::GET, &format!("/v1/jobs/{id}/events"), None, &[])
                .await?
        }
    };
    print(&out);
    Ok(())
}
