//! `conveyor events`: the event log, followed through the API, or read, exported and imported
//! straight from JetStream (operators).

use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;

use crate::cli::client::{client, Target};
use crate::config::BusArgs;

#[derive(Debug, Subcommand)]
pub(super) enum EventsCommand {
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

pub(super) async fn events(command: EventsCommand) -> anyhow::Result<()> {
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
