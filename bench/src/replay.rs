//! The replay figure: a full rebuild of the read models from the event log, against the raw
//! ordered-consumer read rate of the same stream.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use bus::{Bus, BusSettings};
use consumers::projector::{Projector, ProjectorSettings, RebuildOutcome};
use events::job::{Started, Submitted, Succeeded};
use events::{Envelope, JobEvent, JobId, JobKind, Namespace, Tenant};
use futures::stream::FuturesUnordered;
use futures::StreamExt;

/// Connects to `namespace` and creates its streams.
pub(crate) async fn bus(nats_url: &str, namespace: &str) -> anyhow::Result<Bus> {
    let mut settings = BusSettings::new(nats_url, Namespace::parse(namespace)?, "conveyor-bench");
    settings.request_timeout = Duration::from_secs(10);
    let bus = Bus::connect(&settings).await?;
    bus.provision_streams().await?;
    Ok(bus)
}

/// Fills EVENTS with `events` events, three per job (submitted, started, succeeded), publishes
/// pipelined; returns events per second.
pub(crate) async fn fill(bus: &Bus, events: u64) -> anyhow::Result<f64> {
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
                scheduling: Default::default(),
                schedule: None,
                workflow: Default::default(),
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
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

/// Rebuilds the read models of a fresh, migrated database from the whole log (`events`
/// events), `batch` events per transaction; returns events per second.
pub(crate) async fn rebuild(
    bus: Bus,
    database_url: &str,
    events: u64,
    batch: usize,
) -> anyhow::Result<f64> {
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(database_url)
        .await
        .context("connect to Postgres")?;
    readmodel::MIGRATOR.run(&db).await?;
    let (version, _) = readmodel::versions::request_rebuild(&db, 1).await?;
    let p = Projector::new(
        bus,
        db.clone(),
        ProjectorSettings {
            batch_size: batch,
            rebuild_batch_size: batch,
        },
    );
    let started = Instant::now();
    let outcome = p
        .rebuild(version, &tokio_util::sync::CancellationToken::new(), |_| {})
        .await?;
    let took = started.elapsed();
    anyhow::ensure!(
        matches!(outcome, Some(RebuildOutcome::Switched { .. })),
        "the rebuild did not finish: {outcome:?}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM job_events")
        .fetch_one(&db)
        .await?;
    anyhow::ensure!(
        rows as u64 == events,
        "rebuilt {rows} timeline rows, expected {events}"
    );
    db.close().await;
    Ok(events as f64 / took.as_secs_f64())
}
