//! The command line: the arguments, and the dispatch to one module per concern.
//!
//! - `roles`: the long-running roles (`dev`, `api`, `worker`, `projector`, `notifier`);
//! - `replay`: rebuilding the read models from the log;
//! - `log`: the event log (`events tail|export|import`);
//! - `client`: the commands that work through the HTTP API (`jobs`, `dlq`, `webhooks`).

mod client;
mod log;
mod replay;
mod roles;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use events::Tenant;

use crate::config::{
    ApiArgs, AttemptArgs, BusArgs, DbArgs, MintArgs, OpsArgs, ProjectorArgs, WebhookArgs,
    WorkerArgs,
};

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
    /// The HTTP API (with SSE and WebSocket event streams, and the worker protocol).
    Api {
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        attempts: AttemptArgs,
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
    /// A worker: runs jobs of the built-in kinds, and delivers the push kinds' jobs.
    Worker {
        #[command(flatten)]
        bus: BusArgs,
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        worker: WorkerArgs,
        #[command(flatten)]
        webhooks: WebhookArgs,
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
    /// Prints the API's OpenAPI document (what `/openapi.json` serves) on stdout.
    Openapi,
    /// Prints a development token (HS256) on stdout.
    Token {
        /// Tenant of the token.
        #[arg(long, default_value = "dev")]
        tenant: String,
        /// Space-separated scopes (`worker` for a worker of the token's tenant,
        /// `worker:any-tenant` for one serving every tenant).
        #[arg(long, default_value = "jobs:write jobs:read events:read")]
        scope: String,
        /// Limits a worker token to these job kinds (comma-separated; default: any kind).
        #[arg(long, value_delimiter = ',')]
        kinds: Vec<String>,
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
        target: client::Target,
        #[command(subcommand)]
        command: client::JobsCommand,
    },
    /// The event log: follow it through the API, or export and import it (operators).
    Events {
        #[command(subcommand)]
        command: log::EventsCommand,
    },
    /// Dead-lettered jobs: list, show and re-drive them through the API (admin scope).
    Dlq {
        #[command(flatten)]
        target: client::Target,
        #[command(subcommand)]
        command: client::DlqCommand,
    },
    /// Job kinds: list them, register a push kind (through the API).
    Kinds {
        #[command(flatten)]
        target: client::Target,
        #[command(subcommand)]
        command: client::KindsCommand,
    },
    /// Batches: jobs submitted together, with a callback once all have ended (through the API).
    Batches {
        #[command(flatten)]
        target: client::Target,
        #[command(subcommand)]
        command: client::BatchesCommand,
    },
    /// Cron and interval schedules: each tick submits a job, once (through the API).
    Schedules {
        #[command(flatten)]
        target: client::Target,
        #[command(subcommand)]
        command: client::SchedulesCommand,
    },
    /// Tenants' shares of the workers (operator, through the API).
    Tenants {
        #[command(flatten)]
        target: client::Target,
        #[command(subcommand)]
        command: client::TenantsCommand,
    },
    /// Webhook signing secret and failed deliveries, through the API.
    Webhooks {
        #[command(flatten)]
        target: client::Target,
        #[command(subcommand)]
        command: client::WebhooksCommand,
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
        } => roles::dev(bus, db, api, worker, projector, webhooks).await,
        Command::Api {
            bus,
            db,
            api,
            attempts,
            webhooks,
        } => roles::api(bus, db, api, attempts, webhooks).await,
        Command::Notifier { bus, webhooks, ops } => {
            // Settings that cannot work stop it before anything starts.
            let webhooks = webhooks.settings(false)?;
            roles::background(roles::Background::Notifier(bus, webhooks), ops).await
        }
        Command::Worker {
            bus,
            db,
            worker,
            webhooks,
            ops,
        } => roles::background(roles::Background::Worker(bus, db, worker, webhooks), ops).await,
        Command::Projector {
            bus,
            db,
            projector,
            ops,
        } => roles::background(roles::Background::Projector(bus, db, projector), ops).await,
        Command::Replay {
            projection,
            from_seq,
            since,
            dry_run,
            bus,
            db,
            projector,
        } => replay::replay(projection, from_seq, since, dry_run, bus, db, projector).await,
        Command::Migrate { db } => {
            db.migrate().await?;
            println!(
                "migrations applied to {}",
                crate::config::redact(&db.database_url)
            );
            Ok(())
        }
        Command::Openapi => {
            println!("{}", producers::openapi_document());
            Ok(())
        }
        Command::Token {
            tenant,
            scope,
            kinds,
            sub,
            ttl,
            jwt,
        } => {
            let tenant = Tenant::parse(&tenant).context("--tenant")?;
            for kind in &kinds {
                events::JobKind::parse(kind).context("--kinds")?;
            }
            let jwt = jwt.minting();
            println!(
                "{}",
                producers::auth::mint_for_kinds(&jwt, &sub, &tenant, &scope, &kinds, ttl)
            );
            Ok(())
        }
        Command::Jobs { target, command } => client::jobs(target, command).await,
        Command::Events { command } => log::events(command).await,
        Command::Kinds { target, command } => client::kinds(target, command).await,
        Command::Batches { target, command } => client::batches(target, command).await,
        Command::Schedules { target, command } => client::schedules(target, command).await,
        Command::Tenants { target, command } => client::tenants(target, command).await,
        Command::Webhooks { target, command } => client::webhooks(target, command).await,
        Command::Dlq { target, command } => client::dlq(target, command).await,
    }
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
        let doc = include_str!("../../docs/configuration.md");
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
