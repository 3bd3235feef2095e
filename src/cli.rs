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
use crate::config::{
    ApiArgs, BusArgs, DbArgs, MintArgs, OpsArgs, ProjectorArgs, WebhookArgs, WorkerArgs,
};
use crate::output::{OutputArgs, View};
use crate::supervisor::Supervisor;

/// conveyor: submit long-running jobs over HTTP; workers, projectors and notifiers do the rest
/// over NATS JetStream and PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "conveyor", version, about)]
pub struct Cli {
    /// Log filter (e.g. `info`, `conveyor=debug`); default `info` for the roles, `warn` for client
    /// and operator commands.
    #[arg(long, env = "CONVEYOR_LOG", global = true)]
    pub log: Option<String>,
    /// Log format: `text` or `json`.
    #[arg(
        long,
        env = "CONVEYOR_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: String,
    /// Export traces over OTLP/HTTP to this collector (e.g. `http://127.0.0.1:4318`).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// The role this command runs, naming the process in traces (`api`, `worker`, …).
    pub fn role(&self) -> &'static str {
        match &self.command {
            Command::Dev { .. } => "dev",
            Command::Api { .. } => "api",
            Command::Worker { .. } => "worker",
            Command::Projector { .. } => "projector",
            Command::Notifier { .. } => "notifier",
            Command::Replay { .. } => "replay",
            _ => "cli",
        }
    }

    /// The log filter: the configured one, else `info` for a long-running role and `warn` for a
    /// command a person runs, whose output is its answer.
    pub fn log_filter(&self) -> String {
        match (&self.log, self.role()) {
            (Some(filter), _) => filter.clone(),
            (None, "dev" | "api" | "worker" | "projector" | "notifier") => "info".into(),
            (None, _) => "warn".into(),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything in one process: API, worker, projector and notifier (migrates first).
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
        #[command(flatten)]
        webhooks: WebhookArgs,
    },
    /// The HTTP API (with SSE and WebSocket event streams).
    Api {
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        webhooks: WebhookArgs,
    },
    /// The notifier: delivers signed webhooks when jobs end.
    Notifier {
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        webhooks: WebhookArgs,
        #[command(flatten)]
        ops: OpsArgs,
    },
    /// A worker: runs jobs of the built-in kinds.
    Worker {
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        worker: WorkerArgs,
        #[command(flatten)]
        ops: OpsArgs,
    },
    /// The projector: builds the read models in Postgres from the event log.
    Projector {
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        projector: ProjectorArgs,
        #[command(flatten)]
        ops: OpsArgs,
    },
    /// Rebuilds the read models from the event log into a new version beside the live one,
    /// then switches reads to it and drops the old one. The live version keeps serving and
    /// updating meanwhile; an interrupted rebuild (Ctrl-C, crash) resumes when run again.
    Replay {
        /// `jobs`, `job_events` or `job_stats` (the three are rebuilt together: `job_stats`
        /// derives from `jobs`).
        projection: String,
        /// Start from this stream sequence (default: the first event).
        #[arg(long, conflicts_with = "since")]
        from_seq: Option<u64>,
        /// Start from the first event at or after this time (`10m`, `2h`, `7d` ago, or RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only say what would be rebuilt and how many events that is.
        #[arg(long)]
        dry_run: bool,
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
        jwt: MintArgs,
    },
    /// Submit, read, list, watch and cancel jobs through the API.
    Jobs {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// The event log: follow it through the API, or export and import it (operators).
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Dead-lettered jobs: list, show and re-drive them through the API (admin scope).
    Dlq {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Webhook signing secret and failed deliveries, through the API.
    Webhooks {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        command: WebhooksCommand,
    },
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Print events, one CloudEvent JSON per line: the token's tenant through the API, or, with
    /// `--direct`, any tenant's straight from JetStream (operators).
    Tail {
        #[command(flatten)]
        target: Target,
        /// Read JetStream directly instead of the API (uses CONVEYOR_NATS_URL and
        /// CONVEYOR_NAMESPACE).
        #[arg(long)]
        direct: bool,
        #[command(flatten)]
        bus: BusArgs,
        /// With --direct: only this tenant.
        #[arg(long, requires = "direct")]
        tenant: Option<String>,
        /// With --direct: from this time (`10m`, `2h`, `7d` ago, or RFC 3339).
        #[arg(long, requires = "direct", conflicts_with = "from_seq")]
        since: Option<String>,
        /// With --direct: from this stream sequence.
        #[arg(long, requires = "direct")]
        from_seq: Option<u64>,
        /// Keep following live events (otherwise stop once caught up with the past).
        #[arg(long)]
        follow: bool,
        /// Only these types, comma-separated (`job.succeeded,job.failed`).
        #[arg(long = "type")]
        types: Option<String>,
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only this job.
        #[arg(long)]
        job: Option<String>,
        /// Start after this stream sequence (default: from the beginning; with --follow and no
        /// --after, only new events).
        #[arg(long)]
        after: Option<u64>,
    },
    /// Write the event log as CloudEvents JSON Lines to stdout (reads JetStream directly).
    Export {
        #[command(flatten)]
        bus: BusArgs,
        /// From this time: `10m`, `2h`, `7d` ago, or RFC 3339.
        #[arg(long, conflicts_with = "from_seq")]
        since: Option<String>,
        /// Up to this time: `10m` ago, or RFC 3339 (default: the end of the log now).
        #[arg(long)]
        until: Option<String>,
        /// From this stream sequence.
        #[arg(long)]
        from_seq: Option<u64>,
    },
    /// Append a CloudEvents JSON Lines file to this namespace's event log. Each event's id is
    /// its message id, so importing a file twice (within the stream's 10-minute duplicate
    /// window) adds nothing.
    Import {
        #[command(flatten)]
        bus: BusArgs,
        /// The file (`-` for stdin).
        file: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List dead-lettered jobs, newest first.
    List {
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Page size (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show a dead-lettered job and its timeline.
    Show {
        /// Job id.
        id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Run dead-lettered jobs again with a fresh budget of attempts.
    Redrive {
        /// Job id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every dead-lettered job (of `--kind`, if given).
        #[arg(long)]
        all: bool,
        /// With --all: only this kind.
        #[arg(long, requires = "all")]
        kind: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum WebhooksCommand {
    /// Print the tenant's webhook signing secret.
    Secret,
    /// List deliveries that exhausted their attempts (admin).
    Failed {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Queue a failed delivery again (admin).
    Redrive {
        /// Job id.
        job: String,
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
        hide_env_values = true,
        global = true
    )]
    token: String,
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Submit a job, or (with `--file`) many, in batches of 1,000.
    Submit {
        /// Job kind (`noop`, `sleep`, `flaky`, `fail`, `report.job_stats`, …).
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        kind: Option<String>,
        /// Submit the jobs of a JSON Lines file (`-` for stdin): one `POST /v1/jobs` body per
        /// line, each with an optional `idempotency_key`.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
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
        #[command(flatten)]
        output: OutputArgs,
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
        #[command(flatten)]
        output: OutputArgs,
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
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Follow a job live until it ends, printing its progress.
    Watch {
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
            webhooks,
        } => dev(bus, db, api, worker, projector, webhooks).await,
        Command::Api {
            bus,
            db,
            api,
            webhooks,
        } => {
            // Secrets are checked before anything starts: a role refuses to run on none.
            let settings = api.settings(&webhooks, false)?;
            let mut sup = Supervisor::new();
            let metrics = start_metrics(&mut sup);
            start_api(&mut sup, &bus, &db, &api, settings, &metrics).await?;
            sup.run(Duration::from_secs(30)).await
        }
        Command::Notifier { bus, webhooks, ops } => {
            let settings = webhooks.settings(false)?;
            let mut sup = Supervisor::new();
            let metrics = start_metrics(&mut sup);
            let bus = start_notifier(&mut sup, &bus, settings).await?;
            start_ops(&mut sup, &ops, metrics, bus).await?;
            sup.run(Duration::from_secs(30)).await
        }
        Command::Worker {
            bus,
            db,
            worker,
            ops,
        } => {
            let mut sup = Supervisor::new();
            let metrics = start_metrics(&mut sup);
            let bus = start_worker(&mut sup, &bus, &db, &worker).await?;
            start_ops(&mut sup, &ops, metrics, bus).await?;
            sup.run(Duration::from_millis(worker.shutdown_grace_ms) + Duration::from_secs(5))
                .await
        }
        Command::Projector {
            bus,
            db,
            projector,
            ops,
        } => {
            let mut sup = Supervisor::new();
            let metrics = start_metrics(&mut sup);
            let bus = start_projector(&mut sup, &bus, &db, &projector).await?;
            start_ops(&mut sup, &ops, metrics, bus).await?;
            sup.run(Duration::from_secs(30)).await
        }
        Command::Replay {
            projection,
            from_seq,
            since,
            dry_run,
            bus,
            db,
            projector,
        } => replay(projection, from_seq, since, dry_run, bus, db, projector).await,
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
                producers::auth::mint(&jwt.minting(), &sub, &tenant, &scope, ttl)
            );
            Ok(())
        }
        Command::Jobs { target, command } => jobs(target, command).await,
        Command::Events { command } => events(command).await,
        Command::Webhooks { target, command } => webhooks(target, command).await,
        Command::Dlq { target, command } => dlq(target, command).await,
    }
}

async fn dev(
    bus: BusArgs,
    db: DbArgs,
    mut api: ApiArgs,
    worker: WorkerArgs,
    projector: ProjectorArgs,
    webhooks: WebhookArgs,
) -> anyhow::Result<()> {
    // The one role that may run on the public development secrets, and only where no one else
    // can reach it: with them, anyone could mint tokens for every tenant.
    let dev_secret = api.jwt.jwt_secret.as_deref().is_none_or(str::is_empty)
        && api.jwt.jwt_algorithm.eq_ignore_ascii_case("HS256");
    if dev_secret && !on_loopback(&api.http_addr) {
        anyhow::bail!(
            "conveyor dev would listen on {} with the public development secret, so anyone who reaches it could mint tokens for every tenant: listen on 127.0.0.1 (CONVEYOR_HTTP_ADDR), or set CONVEYOR_JWT_SECRET and CONVEYOR_WEBHOOK_SECRET",
            api.http_addr
        );
    }
    api.jwt.or_dev_secret();
    let api_settings = api.settings(&webhooks, true)?;
    let webhook_settings = webhooks.settings(true)?;
    let mut sup = Supervisor::new();
    let metrics = start_metrics(&mut sup);
    // First: it migrates the database the other roles read.
    start_projector(&mut sup, &bus, &db, &projector).await?;
    start_worker(&mut sup, &bus, &db, &worker).await?;
    start_notifier(&mut sup, &bus, webhook_settings).await?;
    let addr = start_api(&mut sup, &bus, &db, &api, api_settings, &metrics).await?;
    // Everything the CLI needs in another shell, client and operator commands alike, as lines
    // to paste.
    let mut exports = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Into::into))
    {
        let dir: std::path::PathBuf = dir;
        exports.push(format!(
            "export PATH={}:\"$PATH\"",
            shell_quote(&dir.to_string_lossy())
        ));
    }
    exports.push(format!("export CONVEYOR_URL=http://{addr}"));
    let token_note = match api.jwt.minting() {
        Ok(jwt) => {
            let token = producers::auth::mint(
                &jwt,
                "developer",
                &Tenant::parse("dev").expect("valid tenant"),
                "jobs:write jobs:read events:read admin operator",
                7 * 86_400,
            );
            exports.push(format!("export CONVEYOR_TOKEN={token}"));
            "tenant `dev`, every scope, the token valid 7 days".to_owned()
        }
        Err(e) => format!("{e:#}"),
    };
    // Passwords in the URLs are not printed: whoever set them has them.
    let (nats_url, db_url) = (
        crate::config::redact(&bus.nats_url),
        crate::config::redact(&db.database_url),
    );
    let hidden = if nats_url != bus.nats_url || db_url != db.database_url {
        "   # passwords hidden: put yours in"
    } else {
        ""
    };
    exports.push(format!(
        "export CONVEYOR_NATS_URL={} CONVEYOR_NAMESPACE={} DATABASE_URL={}{hidden}",
        shell_quote(&nats_url),
        shell_quote(&bus.namespace),
        shell_quote(&db_url)
    ));
    println!(
        "\nconveyor dev is running: API and dashboard on http://{addr} (namespace {}, NATS {}, Postgres {})\n\n\
         For the CLI in another shell ({token_note}):\n\n  {}\n\n\
         Try: conveyor jobs submit sleep --payload '{{\"ms\": 2000, \"steps\": 4}}'\n",
        bus.namespace,
        nats_url,
        db_url,
        exports.join("\n  ")
    );
    sup.run(Duration::from_millis(worker.shutdown_grace_ms) + Duration::from_secs(5))
        .await
}

/// Whether a listen address is on loopback only (`127.0.0.1:8080`, `[::1]:8080`,
/// `localhost:8080`).
fn on_loopback(addr: &str) -> bool {
    match addr.parse::<SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => addr
            .rsplit_once(':')
            .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost")),
    }
}

/// `s` as one shell word: as it is when it is plain, else in single quotes.
fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/:@._-,+=%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Installs the metrics recorder and keeps its histograms drained.
fn start_metrics(sup: &mut Supervisor) -> producers::MetricsRender {
    let render = crate::metrics::install();
    let (r, token) = (render.clone(), sup.token());
    sup.spawn("metrics", async move {
        crate::metrics::upkeep(r, token).await;
        Ok(())
    });
    render
}

async fn start_ops(
    sup: &mut Supervisor,
    ops: &OpsArgs,
    metrics: producers::MetricsRender,
    bus: bus::Bus,
) -> anyhow::Result<()> {
    let (addr, served) = crate::ops::serve(&ops.metrics_addr, metrics, bus, sup.token()).await?;
    // Machine-readable, like the API's line, for scripts that start roles on port 0.
    println!("conveyor metrics listening on http://{addr}");
    tracing::info!(%addr, "metrics and health endpoints listening");
    sup.spawn("metrics endpoint", served);
    Ok(())
}

async fn start_api(
    sup: &mut Supervisor,
    bus: &BusArgs,
    db: &DbArgs,
    api: &ApiArgs,
    api_settings: producers::ApiSettings,
    metrics: &producers::MetricsRender,
) -> anyhow::Result<SocketAddr> {
    let mut settings = bus.settings("api")?;
    // The API answers 503 at once rather than hold requests while NATS is away or saturated.
    settings.fail_fast = true;
    settings.max_publishes_in_flight = api.limits.publish_inflight.max(1);
    let bus = BusArgs::connect_waiting(&settings, &sup.token()).await?;
    let state =
        producers::AppState::new(bus, db.lazy_pool()?, api_settings, Some(metrics.clone())).await?;
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
) -> anyhow::Result<bus::Bus> {
    let bus = BusArgs::connect_waiting(&bus.settings("worker")?, &sup.token()).await?;
    let w = Worker::new(
        bus.clone(),
        Registry::builtin(),
        worker.settings(),
        Some(db.lazy_pool()?),
    );
    let token = sup.token();
    sup.spawn("worker", async move { Ok(w.run(token).await?) });
    Ok(bus)
}

async fn start_projector(
    sup: &mut Supervisor,
    bus: &BusArgs,
    db: &DbArgs,
    projector: &ProjectorArgs,
) -> anyhow::Result<bus::Bus> {
    let pool = db.migrate_waiting(&sup.token()).await?;
    let bus = BusArgs::connect_waiting(&bus.settings("projector")?, &sup.token()).await?;
    let p = Projector::new(bus.clone(), pool, projector.settings());
    let token = sup.token();
    sup.spawn("projector", async move { Ok(p.run(token).await?) });
    Ok(bus)
}

async fn start_notifier(
    sup: &mut Supervisor,
    bus: &BusArgs,
    webhooks: consumers::notifiers::webhook::WebhookSettings,
) -> anyhow::Result<bus::Bus> {
    let bus = BusArgs::connect_waiting(&bus.settings("notifier")?, &sup.token()).await?;
    let n = consumers::notifiers::webhook::WebhookNotifier::new(bus.clone(), webhooks);
    let token = sup.token();
    sup.spawn("notifier", async move { Ok(n.run(token).await?) });
    Ok(bus)
}

async fn replay(
    projection: String,
    from_seq: Option<u64>,
    since: Option<String>,
    dry_run: bool,
    bus: BusArgs,
    db: DbArgs,
    settings: ProjectorArgs,
) -> anyhow::Result<()> {
    use consumers::projector::{self, RebuildOutcome};
    if !projector::PROJECTIONS.contains(&projection.as_str()) {
        anyhow::bail!(
            "no projection `{projection}`: use one of {}",
            projector::PROJECTIONS.join(", ")
        );
    }
    let pool = db.migrate().await?;
    let bus = bus.connect("replay").await?;
    let from = match (from_seq, since) {
        (Some(seq), _) => seq,
        (None, Some(t)) => {
            crate::log_tools::first_seq_since(&bus, crate::log_tools::parse_time(&t)?).await?
        }
        (None, None) => 1,
    };
    let mut stream = bus.events_stream().await?;
    let last = stream.info().await?.state.last_sequence;
    let live: i32 =
        sqlx::query_scalar("SELECT version FROM read_model_versions WHERE state = 'live'")
            .fetch_one(&pool)
            .await?;
    let building = projector::building_version(&pool).await?;
    let events = (last + 1).saturating_sub(from);
    if dry_run {
        println!(
            "would rebuild jobs, job_events and job_stats into version {} beside live version {live}: \
             {events} events (sequences {from} to {last}){}",
            building.unwrap_or(live + 1),
            if building.is_some() { ", resuming the rebuild already under way" } else { "" },
        );
        return Ok(());
    }
    let (version, new) = projector::request_rebuild(&pool, from).await?;
    eprintln!(
        "{} version {version} of jobs, job_events and job_stats from sequence {from} ({events} events); live version {live} keeps serving",
        if new { "rebuilding" } else { "resuming the rebuild of" }
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    {
        let token = shutdown.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("stopping; run the same command again to resume");
            token.cancel();
        });
    }
    let p = projector::Projector::new(bus, pool.clone(), settings.settings());
    let started = std::time::Instant::now();
    let mut bar = crate::progress::Progress::new(events, "events");
    let outcome = p
        .rebuild(version, &shutdown, |pr| {
            bar.set(
                pr.checkpoint.saturating_sub(from - 1),
                pr.stream_last.saturating_sub(from - 1),
            )
        })
        .await?;
    bar.finish();
    match outcome {
        Some(RebuildOutcome::Switched { version }) => {
            println!(
                "version {version} is live ({events} events in {:.1} s); version {live} dropped",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Some(RebuildOutcome::Interrupted) => {
            anyhow::bail!("rebuild of version {version} interrupted; live version {live} is untouched; run again to resume")
        }
        None => {
            println!("version {version} is being rebuilt by another process (a projector); it switches when it has caught up");
            Ok(())
        }
    }
}

fn client(target: &Target) -> anyhow::Result<Client> {
    if target.token.is_empty() {
        anyhow::bail!("no token: set CONVEYOR_TOKEN (`conveyor token` prints one) or pass --token");
    }
    Ok(Client::new(&target.url, &target.token))
}

async fn events(command: EventsCommand) -> anyhow::Result<()> {
    let (target, follow, types, kind, job, after) = match command {
        EventsCommand::Tail {
            direct: true,
            bus,
            tenant,
            since,
            from_seq,
            follow,
            types,
            kind,
            job,
            ..
        } => {
            let bus = bus.connect("tail").await?;
            let start = match (from_seq, since) {
                (Some(seq), _) => Some(crate::log_tools::Start::Seq(seq)),
                (None, Some(t)) => Some(crate::log_tools::Start::Time(
                    crate::log_tools::parse_time(&t)?,
                )),
                (None, None) => None,
            };
            let filter = crate::log_tools::TailFilter {
                tenant: tenant
                    .map(|t| events::Tenant::parse(&t))
                    .transpose()
                    .context("--tenant")?,
                types: match types {
                    Some(t) => t
                        .split(',')
                        .map(|t| {
                            t.trim()
                                .trim_start_matches("dev.conveyor.")
                                .trim_start_matches("job.")
                                .to_owned()
                        })
                        .collect(),
                    None => Vec::new(),
                },
                kind,
                job,
            };
            let mut out = std::io::stdout().lock();
            crate::log_tools::tail(&bus, start, follow, &filter, &mut out).await?;
            return Ok(());
        }
        EventsCommand::Tail {
            target,
            follow,
            types,
            kind,
            job,
            after,
            ..
        } => (target, follow, types, kind, job, after),
        EventsCommand::Export {
            bus,
            since,
            until,
            from_seq,
        } => {
            let bus = bus.connect("export").await?;
            let start = match (from_seq, since) {
                (Some(seq), _) => crate::log_tools::Start::Seq(seq),
                (None, Some(t)) => crate::log_tools::Start::Time(crate::log_tools::parse_time(&t)?),
                (None, None) => crate::log_tools::Start::All,
            };
            let until = until
                .as_deref()
                .map(crate::log_tools::parse_time)
                .transpose()?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let n = crate::log_tools::export(&bus, start, until, &mut out).await?;
            eprintln!("exported {n} events");
            return Ok(());
        }
        EventsCommand::Import { bus, file } => {
            let bus = bus.connect("import").await?;
            bus.provision_streams().await?;
            let input: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                Box::new(std::io::BufReader::new(
                    std::fs::File::open(&file)
                        .with_context(|| format!("cannot open {}", file.display()))?,
                ))
            };
            let r = crate::log_tools::import(&bus, input).await?;
            println!(
                "imported {} events into namespace {} ({} new, {} already there)",
                r.stored + r.duplicates,
                bus.ns(),
                r.stored,
                r.duplicates
            );
            return Ok(());
        }
    };
    let c = client(&target)?;
    let mut q = Vec::new();
    q.extend(types.map(|t| format!("type={t}")));
    q.extend(kind.map(|k| format!("kind={k}")));
    q.extend(job.map(|j| format!("job={j}")));
    // Without --follow: the past, until the stream goes quiet. With it: live, from --after or now.
    let after = after.or((!follow).then_some(0));
    let path = format!("/v1/events?{}", q.join("&"));
    let idle = (!follow).then(|| Duration::from_secs(1));
    let mut last_id = after.map(|a| a.to_string());
    loop {
        let mut resume = false;
        let mut seen = None;
        c.follow(&path, last_id.as_deref(), idle, |ev| {
            if ev.event == "resume" {
                resume = true;
                return false;
            }
            println!("{}", ev.data);
            seen = ev.id;
            true
        })
        .await?;
        last_id = seen.or(last_id);
        // Fell behind: the server asked us to reconnect from the last event printed.
        if !resume {
            return Ok(());
        }
    }
}

async fn dlq(target: Target, command: DlqCommand) -> anyhow::Result<()> {
    let c = client(&target)?;
    let kind_q = |kind: &Option<String>| {
        kind.as_ref()
            .map(|k| format!("&kind={k}"))
            .unwrap_or_default()
    };
    match command {
        DlqCommand::List {
            kind,
            limit,
            cursor,
            output,
        } => {
            let cursor_q = cursor.map(|c| format!("&cursor={c}")).unwrap_or_default();
            let page = c
                .call(
                    Method::GET,
                    &format!(
                        "/v1/admin/dead-letters?limit={limit}{}{cursor_q}",
                        kind_q(&kind)
                    ),
                    None,
                    &[],
                )
                .await?;
            output.print(&page, View::DeadLetters)?;
        }
        DlqCommand::Show { id, output } => {
            let job = c
                .call(Method::GET, &format!("/v1/jobs/{id}"), None, &[])
                .await?;
            let events = c
                .call(Method::GET, &format!("/v1/jobs/{id}/events"), None, &[])
                .await?;
            output.print(&json!({ "job": job, "events": events }), View::DeadLetter)?;
        }
        DlqCommand::Redrive { id: Some(id), .. } => {
            let out = c
                .call(
                    Method::POST,
                    &format!("/v1/admin/dead-letters/{id}/redrive"),
                    None,
                    &[],
                )
                .await?;
            print(&out);
        }
        DlqCommand::Redrive { id: None, kind, .. } => {
            // Collect first (re-driven jobs leave the list as they are projected), then re-drive.
            let mut ids = Vec::new();
            let mut cursor = String::new();
            loop {
                let page = c
                    .call(
                        Method::GET,
                        &format!("/v1/admin/dead-letters?limit=500{}{cursor}", kind_q(&kind)),
                        None,
                        &[],
                    )
                    .await?;
                ids.extend(
                    page["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|j| j["id"].as_str().map(str::to_owned)),
                );
                match page["next_cursor"].as_str() {
                    Some(next) => cursor = format!("&cursor={next}"),
                    None => break,
                }
            }
            let mut redriven = 0;
            for id in &ids {
                match c
                    .call(
                        Method::POST,
                        &format!("/v1/admin/dead-letters/{id}/redrive"),
                        None,
                        &[],
                    )
                    .await
                {
                    Ok(_) => redriven += 1,
                    Err(e) => eprintln!("not re-driven {id}: {e:#}"),
                }
            }
            println!("{redriven} of {} dead-lettered jobs re-driven", ids.len());
        }
    }
    Ok(())
}

async fn webhooks(target: Target, command: WebhooksCommand) -> anyhow::Result<()> {
    let c = client(&target)?;
    let out = match command {
        WebhooksCommand::Secret => {
            c.call(Method::GET, "/v1/webhooks/secret", None, &[])
                .await?
        }
        WebhooksCommand::Failed { output } => {
            let failed = c
                .call(Method::GET, "/v1/admin/webhooks/failed", None, &[])
                .await?;
            return Ok(output.print(&failed, View::FailedWebhooks)?);
        }
        WebhooksCommand::Redrive { job } => {
            c.call(
                Method::POST,
                &format!("/v1/admin/webhooks/failed/{job}/redrive"),
                None,
                &[],
            )
            .await?
        }
    };
    print(&out);
    Ok(())
}

/// Follows a job until its terminal event, printing a line per event.
async fn watch(c: &Client, id: &str) -> anyhow::Result<()> {
    let mut outcome = None;
    c.follow(&format!("/v1/jobs/{id}/events"), None, None, |ev| {
        let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
        let d = &data["data"];
        let line = match ev.event.as_str() {
            "job.progressed" => {
                let (cur, total) = (d["current"].as_u64().unwrap_or(0), d["total"].as_u64());
                let bar = total.filter(|t| *t > 0).map(|t| {
                    let filled = (cur.min(t) * 20 / t) as usize;
                    format!("[{}{}] ", "#".repeat(filled), ".".repeat(20 - filled))
                });
                format!(
                    "progress {}{cur}{} {}",
                    bar.unwrap_or_default(),
                    total.map(|t| format!("/{t}")).unwrap_or_default(),
                    d["message"].as_str().unwrap_or_default()
                )
            }
            "job.started" => format!("started (attempt {})", d["attempt"]),
            "job.failed" => format!("attempt {} failed: {}", d["attempt"], d["error"]["message"]),
            "job.retry_scheduled" => format!("retry scheduled at {}", d["run_at"]),
            "job.succeeded" => format!("succeeded: {}", d["result"]),
            "job.dead_lettered" => format!("failed for good: {}", d["reason"]),
            other => other.trim_start_matches("job.").to_owned(),
        };
        println!("{} {line}", data["time"].as_str().unwrap_or_default());
        if matches!(
            ev.event.as_str(),
            "job.succeeded" | "job.dead_lettered" | "job.cancelled"
        ) {
            outcome = Some(ev.event);
        }
        true
    })
    .await?;
    match outcome.as_deref() {
        Some("job.succeeded") => Ok(()),
        Some(other) => anyhow::bail!("job {id} ended: {}", other.trim_start_matches("job.")),
        None => anyhow::bail!(
            "the event stream ended before job {id} did; run the command again to resume"
        ),
    }
}

/// Submits a JSON Lines file of jobs in batches, as fast as the tenant's rate allows: a `429` or
/// `503` is waited out (`Retry-After`, said on stderr) and the batch sent again, a batch larger
/// than the tenant may send at once is split. A line without an `idempotency_key` gets one made
/// from its number and content, so running the same file again (within the 24 h the keys are
/// kept) adds only what did not get in. Refused lines are reported on stderr; a summary ends the
/// run, also when it stops early.
async fn submit_file(c: &Client, file: &std::path::Path) -> anyhow::Result<()> {
    use std::io::BufRead as _;
    let input: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
        ))
    };
    let mut jobs = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut job: Value = serde_json::from_str(&line)
            .with_context(|| format!("line {}: not JSON (one job object per line)", n + 1))?;
        if let Some(fields) = job.as_object_mut() {
            if !fields.contains_key("idempotency_key") {
                let digest =
                    <sha2::Sha256 as sha2::Digest>::digest(format!("{}:{line}", n + 1).as_bytes());
                fields.insert(
                    "idempotency_key".into(),
                    json!(format!("line-{}-{}", n + 1, &hex::encode(digest)[..32])),
                );
            }
        }
        jobs.push((n + 1, job));
    }
    let total = jobs.len();
    let mut tally = Tally::default();
    let mut bar = crate::progress::Progress::new(total as u64, "jobs");
    let mut size = producers::MAX_BATCH;
    let mut next = 0;
    let mut waits = 0;
    while next < total {
        let chunk = &jobs[next..(next + size).min(total)];
        let body = json!({ "jobs": chunk.iter().map(|(_, j)| j).collect::<Vec<_>>() });
        let out = match c
            .call(Method::POST, "/v1/jobs/batch", Some(&body), &[])
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let failure = e.downcast_ref::<crate::client::ApiFailure>().cloned();
                match failure {
                    // Larger than the tenant may submit at once: smaller batches.
                    Some(f) if f.status == 429 && f.detail.contains("at once") && size > 1 => {
                        size = (size / 2).max(1);
                        continue;
                    }
                    // Over the rate, or the server busy: wait as told, then the same batch again.
                    Some(f) if matches!(f.status, 429 | 503) && waits < 60 => {
                        let wait = f.retry_after.unwrap_or(Duration::from_secs(1));
                        bar.suspend(|| {
                            eprintln!(
                                "{} {}: waiting {} s as the server asks (Retry-After)",
                                f.status,
                                f.detail,
                                wait.as_secs()
                            )
                        });
                        tokio::time::sleep(wait).await;
                        waits += 1;
                        continue;
                    }
                    _ => {
                        bar.finish();
                        tally.print(total, Some(chunk[0].0));
                        return Err(e.context(format!(
                            "stopped at line {}; run the same command again to submit the rest",
                            chunk[0].0
                        )));
                    }
                }
            }
        };
        waits = 0;
        for ((line, _), item) in chunk
            .iter()
            .zip(out["items"].as_array().into_iter().flatten())
        {
            match item["status"].as_u64() {
                Some(202) => tally.accepted += 1,
                Some(200) => tally.repeated += 1,
                status => {
                    tally.refused += 1;
                    bar.suspend(|| {
                        eprintln!(
                            "line {line}: {} {}",
                            status.unwrap_or(0),
                            item["problem"]["detail"].as_str().unwrap_or_default()
                        )
                    });
                }
            }
        }
        next += chunk.len();
        bar.set(next as u64, total as u64);
    }
    bar.finish();
    tally.print(total, None);
    if tally.refused > 0 {
        anyhow::bail!("{} of {total} jobs were refused (see above)", tally.refused);
    }
    Ok(())
}

/// What became of a file's jobs.
#[derive(Debug, Default)]
struct Tally {
    accepted: usize,
    repeated: usize,
    refused: usize,
}

impl Tally {
    /// The summary line; `stopped_at`: the first line not sent.
    fn print(&self, total: usize, stopped_at: Option<usize>) {
        let sent = self.accepted + self.repeated + self.refused;
        let end = match stopped_at {
            Some(line) => format!("; stopped at line {line}, {} not sent", total - sent),
            None => String::new(),
        };
        println!(
            "{} accepted, {} already submitted, {} refused, of {total} jobs{end}",
            self.accepted, self.repeated, self.refused
        );
    }
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn jobs(target: Target, command: JobsCommand) -> anyhow::Result<()> {
    let c = client(&target)?;
    let out = match command {
        JobsCommand::Submit {
            file: Some(file), ..
        } => return submit_file(&c, &file).await,
        JobsCommand::Submit {
            kind: Some(kind),
            payload,
            max_attempts,
            timeout_ms,
            run_at,
            webhook,
            idempotency_key,
            file: None,
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
        JobsCommand::Submit { kind: None, .. } => {
            anyhow::bail!("name a kind to submit, or --file with jobs")
        }
        JobsCommand::Get { id, output } => {
            let job = c
                .call(Method::GET, &format!("/v1/jobs/{id}"), None, &[])
                .await?;
            return Ok(output.print(&job, View::Job)?);
        }
        JobsCommand::List {
            status,
            kind,
            limit,
            cursor,
            output,
        } => {
            let mut q = vec![format!("limit={limit}")];
            q.extend(status.map(|s| format!("status={s}")));
            q.extend(kind.map(|k| format!("kind={k}")));
            q.extend(cursor.map(|c| format!("cursor={c}")));
            let page = c
                .call(Method::GET, &format!("/v1/jobs?{}", q.join("&")), None, &[])
                .await?;
            return Ok(output.print(&page, View::Jobs)?);
        }
        JobsCommand::Cancel { id } => {
            c.call(Method::POST, &format!("/v1/jobs/{id}/cancel"), None, &[])
                .await?
        }
        JobsCommand::Events { id, output } => {
            let events = c
                .call(Method::GET, &format!("/v1/jobs/{id}/events"), None, &[])
                .await?;
            return Ok(output.print(&events, View::Events)?);
        }
        JobsCommand::Watch { id } => return watch(&c, &id).await,
    };
    print(&out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every environment variable a command reads, with the commands that read it.
    fn variables(cmd: &clap::Command, out: &mut std::collections::BTreeSet<String>) {
        for arg in cmd.get_arguments() {
            if let Some(env) = arg.get_env() {
                out.insert(env.to_string_lossy().into_owned());
            }
        }
        for sub in cmd.get_subcommands() {
            variables(sub, out);
        }
    }

    #[test]
    fn the_configuration_reference_lists_every_variable() {
        let mut all = Default::default();
        variables(&super::Cli::command(), &mut all);
        let doc = include_str!("../docs/configuration.md");
        let missing: Vec<_> = all
            .iter()
            .filter(|v| !doc.contains(&format!("`{v}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "not in docs/configuration.md: {missing:?}"
        );
        assert!(all.len() > 40, "{all:?}");
    }
}
