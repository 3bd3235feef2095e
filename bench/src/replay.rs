//! The replay benchmark: raw ordered-consumer read rate against a full rebuild, same stream.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bus::async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use bus::{Bus, BusSettings};
use chrono::Utc;
use consumers::projector::{self, Projector, ProjectorSettings, RebuildOutcome};
use events::job::{Started, Submitted, Succeeded};
use events::{Envelope, JobEvent, JobId, JobKind, Namespace, Tenant};
use futures::stream::FuturesUnordered;
use futures::StreamExt;

pub(crate) async fn run(
    events: u64,
    nats_url: &str,
    namespace: &str,
    database_url: &str,
    batch: usize,
) -> anyhow::Result<()> {
    let mut settings = BusSettings::new(nats_url, Namespace::parse(namespace)?, "conveyor-bench");
    settings.request_timeout = Duration::from_secs(10);
    let bus = Bus::connect(&settings).await?;
    bus.provision_streams().await?;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(database_url)
        .await
        .context("connect to Postgres")?;
    consumers::MIGRATOR.run(&db).await?;

    // Fill: jobs of three events each, publishes pipelined.
    let started = Instant::now();
    let (tenant, kind) = (Tenant::parse("bench")?, JobKind::parse("noop")?);
    let mut in_flight = FuturesUnordered::new();
    let mut published = 0u64;
    while published < events {
        let job = JobId::new();
        let payloads = [
            JobEvent::Submitted(Submitted {
                payload: serde_json::json!({}),
                max_attempts: 3,
                timeout_ms: 60_000,
                run_at: None,
                webhook: None,
            }),
            JobEvent::Started(Started {
                attempt: 1,
                worker: "bench".into(),
            }),
            JobEvent::Succeeded(Succeeded {
                attempt: 1,
                result: None,
                result_ref: None,
                duration_ms: 1,
            }),
        ];
        for payload in payloads.into_iter().take((events - published) as usize) {
            let ev = Envelope::new(
                "/conveyor/bench",
                job,
                tenant.clone(),
                kind.clone(),
                payload,
            );
            let ack = bus
                .send(
                    bus.ns().event_subject(&ev),
                    ev.to_json(),
                    &ev.id.to_string(),
                )
                .await?;
            in_flight.push(std::future::IntoFuture::into_future(ack));
            published += 1;
            while in_flight.len() >= 4096 {
                in_flight.next().await.expect("non-empty")?;
            }
        }
    }
    while let Some(ack) = in_flight.next().await {
        ack?;
    }
    let fill = started.elapsed();
    println!(
        "filled EVENTS with {events} events in {:.1} s ({:.0}/s)",
        fill.as_secs_f64(),
        events as f64 / fill.as_secs_f64()
    );

    // Raw read: an ordered consumer over the whole stream, counting messages.
    let stream = bus.events_stream().await?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            filter_subject: bus.ns().all_events(),
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut messages = consumer.messages().await?;
    let mut read = 0u64;
    while read < events {
        messages.next().await.context("the stream ended")??;
        read += 1;
    }
    let raw = events as f64 / started.elapsed().as_secs_f64();
    drop(messages);

    // Rebuild: the whole log into a new version of the read models.
    let (version, _) = projector::request_rebuild(&db, 1).await?;
    let p = Projector::new(bus, db.clone(), ProjectorSettings { batch_size: batch });
    let started = Instant::now();
    let outcome = p
        .rebuild(version, &tokio_util::sync::CancellationToken::new(), |_| {})
        .await?;
    let took = started.elapsed();
    anyhow::ensure!(
        matches!(outcome, Some(RebuildOutcome::Switched { .. })),
        "the rebuild did not finish: {outcome:?}"
    );
    let rebuilt = events as f64 / took.as_secs_f64();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM job_events")
        .fetch_one(&db)
        .await?;
    anyhow::ensure!(
        rows as u64 == events,
        "rebuilt {rows} timeline rows, expected {events}"
    );
    println!("raw ordered-consumer read: {raw:.0} events/s");
    println!(
        "read-model rebuild (jobs, job_events, job_stats; {batch} events per transaction): {rebuilt:.0} events/s in {:.1} s = {:.0}% of the raw read rate ({})",
        took.as_secs_f64(),
        100.0 * rebuilt / raw,
        Utc::now().format("%Y-%m-%d")
    );
    Ok(())
}
