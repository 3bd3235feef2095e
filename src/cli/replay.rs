//! `conveyor replay`: rebuilds the read models from the event log into a new version beside the
//! live one, then switches reads to it.

use crate::config::{BusArgs, DbArgs, ProjectorArgs};

pub(super) async fn replay(
    projection: String,
    from_seq: Option<u64>,
    since: Option<String>,
    dry_run: bool,
    bus: BusArgs,
    db: DbArgs,
    settings: ProjectorArgs,
) -> anyhow::Result<()> {
    use consumers::projector::{Projector, RebuildOutcome};
    use readmodel::{versions, Projection};
    if Projection::parse(&projection).is_none() {
        anyhow::bail!(
            "no projection `{projection}`: use one of {}",
            Projection::names()
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
    let live = versions::live(&pool).await?;
    let building = versions::building(&pool).await?;
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
    let (version, new) = versions::request_rebuild(&pool, from).await?;
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
    let p = Projector::new(bus, pool.clone(), settings.settings());
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
