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
    ApiArgs, BusArgs, DbArgs, JwtArgs, OpsArgs, ProjectorArgs, WebhookArgs, WorkerArgs,
    DEV_JWT_SECRET,
};
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
        jwt: JwtArgs,
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
    },
    /// Show a dead-lettered job and its timeline.
    Show {
        /// Job id.
        id: String,
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
    Failed,
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
            if api.jwt.jwt_secret == DEV_JWT_SECRET && api.jwt.jwks_url.is_none() {
                tracing::warn!("CONVEYOR_JWT_SECRET is not set: using the development secret");
            }
            let mut sup = Supervisor::new();
            let metrics = start_metrics(&mut sup);
            start_api(&mut sup, &bus, &db, &api, &webhooks, &metrics).await?;
            sup.run(Duration::from_secs(30)).await
        }
        Command::Notifier { bus, webhooks, ops } => {
            let mut sup = Supervisor::new();
            let metrics = start_metrics(&mut sup);
            let bus = start_notifier(&mut sup, &bus, &webhooks).await?;
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
                producers::auth::mint(&jwt.minting()?, &sub, &tenant, &scope, ttl)
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
    api: ApiArgs,
    worker: WorkerArgs,
    projector: ProjectorArgs,
    webhooks: WebhookArgs,
) -> anyhow::Result<()> {
    let mut sup = Supervisor::new();
    let metrics = start_metrics(&mut sup);
    // First: it migrates the database the other roles read.
    start_projector(&mut sup, &bus, &db, &projector).await?;
    start_worker(&mut sup, &bus, &db, &worker).await?;
    start_notifier(&mut sup, &bus, &webhooks).await?;
    let addr = start_api(&mut sup, &bus, &db, &api, &webhooks, &metrics).await?;
    let token = match api.jwt.minting() {
        Ok(jwt) => {
            let token = producers::auth::mint(
                &jwt,
                "developer",
                &Tenant::parse("dev").expect("valid tenant"),
                "jobs:write jobs:read events:read admin",
                7 * 86_400,
            );
            format!(
                "A development token (tenant `dev`, valid 7 days):\n\n  export CONVEYOR_URL=http://{addr}\n  export CONVEYOR_TOKEN={token}\n"
            )
        }
        Err(e) => format!("{e:#}\n\n  export CONVEYOR_URL=http://{addr}\n"),
    };
    println!(
        "\nconveyor dev is running: API and dashboard on http://{addr} (namespace {}, NATS {}, Postgres {})\n\
         {token}\n\
         Try: conveyor jobs submit sleep --payload '{{\"ms\": 2000, \"steps\": 4}}'\n",
        bus.namespace,
        bus.nats_url,
        crate::config::redact(&db.database_url)
    );
    sup.run(Duration::from_millis(worker.shutdown_grace_ms) + Duration::from_secs(5))
        .await
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
    webhooks: &WebhookArgs,
    metrics: &producers::MetricsRender,
) -> anyhow::Result<SocketAddr> {
    let mut settings = bus.settings("api")?;
    // The API answers 503 at once rather than hold requests while NATS is away or saturated.
    settings.fail_fast = true;
    settings.max_publishes_in_flight = api.limits.publish_inflight.max(1);
    let bus = BusArgs::connect_waiting(&settings, &sup.token()).await?;
    let state = producers::AppState::new(
        bus,
        db.lazy_pool()?,
        api.settings(webhooks)?,
        Some(metrics.clone()),
    )
    .await?;
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
    webhooks: &WebhookArgs,
) -> anyhow::Result<bus::Bus> {
    let bus = BusArgs::connect_waiting(&bus.settings("notifier")?, &sup.token()).await?;
    let n = consumers::notifiers::webhook::WebhookNotifier::new(bus.clone(), webhooks.settings());
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
        DlqCommand::List { kind, limit } => {
            let page = c
                .call(
                    Method::GET,
                    &format!("/v1/admin/dead-letters?limit={limit}{}", kind_q(&kind)),
                    None,
                    &[],
                )
                .await?;
            print(&page);
        }
        DlqCommand::Show { id } => {
            let job = c
                .call(Method::GET, &format!("/v1/jobs/{id}"), None, &[])
                .await?;
            let events = c
                .call(Method::GET, &format!("/v1/jobs/{id}/events"), None, &[])
                .await?;
            print(&json!({ "job": job, "events": events }));
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
        WebhooksCommand::Failed => {
            c.call(Method::GET, "/v1/admin/webhooks/failed", None, &[])
                .await?
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

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn jobs(target: Target, command: JobsCommand) -> anyhow::Result<()> {
    let c = client(&target)?;
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
