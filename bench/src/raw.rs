//! The limits of the machine's own services, measured the way conveyor uses them: JetStream
//! publishes each awaiting its ack, an ordered consumer reading a stream, and Postgres upserting
//! batches of rows. conveyor's figures are quoted as ratios to these.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull::OrderedConfig, consumer::DeliverPolicy, stream};
use futures::StreamExt;

/// A CloudEvent the size of conveyor's (a `job.succeeded` of a no-op job).
fn event_bytes() -> Vec<u8> {
    use events::job::{JobEvent, Succeeded};
    events::Envelope::new(
        "/conveyor/worker",
        events::JobId::new(),
        events::Tenant::parse("bench").expect("valid"),
        events::JobKind::parse("noop").expect("valid"),
        JobEvent::Succeeded(Succeeded {
            attempt: 1,
            result: None,
            result_ref: None,
            duration_ms: 0,
        }),
    )
    .with_trace(Some(events::TraceParent::generate()))
    .to_json()
}

/// A stream configured like conveyor's EVENTS (file storage, limits, 10-minute dedup window).
async fn scratch_stream(js: &jetstream::Context, name: &str) -> anyhow::Result<stream::Stream> {
    let _ = js.delete_stream(name).await;
    js.create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{}.>", name.to_lowercase())],
        storage: stream::StorageType::File,
        duplicate_window: events::streams::DUPLICATE_WINDOW,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .context("creating a scratch stream")
}

/// Messages per second published by `concurrency` publishers, each sending one message (with
/// a `Nats-Msg-Id`, as conveyor does) and waiting for its ack before the next.
pub(crate) async fn publish_per_message_ack(
    nats_url: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let js = jetstream::new(async_nats::connect(nats_url).await?);
    let name = format!("RAWPUB{}", std::process::id());
    scratch_stream(&js, &name).await?;
    let payload = bytes::Bytes::from(event_bytes());
    let count = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let subject = format!("{}.events", name.to_lowercase());
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (js, payload, count, subject) =
                (js.clone(), payload.clone(), count.clone(), subject.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", uuid::Uuid::now_v7().to_string().as_str());
                    js.publish_with_headers(subject.clone(), headers, payload.clone())
                        .await?
                        .await?;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let started = Instant::now();
    for t in tasks {
        t.await??;
    }
    let rate = count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let _ = js.delete_stream(&name).await;
    Ok(rate)
}

/// Messages per second an ordered consumer reads from the start of `stream` (which holds at
/// least `n` messages), counting `n` of them.
pub(crate) async fn ordered_read(nats_url: &str, stream_name: &str, n: u64) -> anyhow::Result<f64> {
    let js = jetstream::new(async_nats::connect(nats_url).await?);
    let stream = js.get_stream(stream_name).await?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let started = Instant::now();
    let mut messages = consumer.messages().await?;
    for _ in 0..n {
        messages.next().await.context("the stream ended")??;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Rows per second upserted into a table shaped like `jobs`, in transactions of `batch` rows
/// from one JSON document each (as the projector writes), half of them updates.
pub(crate) async fn pg_upsert(
    database_url: &str,
    batch: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let db = sqlx::PgPool::connect(database_url).await?;
    sqlx::query("DROP TABLE IF EXISTS bench_upsert")
        .execute(&db)
        .await?;
    sqlx::query(
        "CREATE TABLE bench_upsert (id uuid PRIMARY KEY, tenant text NOT NULL, kind text NOT NULL,
           status text NOT NULL, attempt int NOT NULL, payload jsonb NOT NULL, result jsonb,
           created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL, last_seq bigint NOT NULL)",
    )
    .execute(&db)
    .await?;
    let mut ids: Vec<uuid::Uuid> = Vec::new();
    let (mut rows, mut seq) = (0u64, 0i64);
    let started = Instant::now();
    while started.elapsed() < duration {
        // Half new rows, half updates of earlier ones.
        let mut doc = Vec::with_capacity(batch);
        for i in 0..batch {
            let id = if i % 2 == 1 && !ids.is_empty() {
                ids[(seq as usize * 7919) % ids.len()]
            } else {
                let id = uuid::Uuid::now_v7();
                ids.push(id);
                id
            };
            seq += 1;
            doc.push(serde_json::json!({
                "id": id, "tenant": "bench", "kind": "noop", "status": "succeeded",
                "attempt": 1, "payload": {}, "result": null,
                "created_at": chrono::Utc::now(), "updated_at": chrono::Utc::now(),
                "last_seq": seq,
            }));
        }
        // Rows of one statement must be distinct to be upserted.
        doc.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        doc.dedup_by(|a, b| a["id"] == b["id"]);
        let n = doc.len() as u64;
        sqlx::query(
            "INSERT INTO bench_upsert SELECT * FROM jsonb_populate_recordset(NULL::bench_upsert, $1)
             ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, attempt = EXCLUDED.attempt,
               result = EXCLUDED.result, updated_at = EXCLUDED.updated_at, last_seq = EXCLUDED.last_seq",
        )
        .bind(sqlx::types::Json(&doc))
        .execute(&db)
        .await?;
        rows += n;
    }
    let rate = rows as f64 / started.elapsed().as_secs_f64();
    sqlx::query("DROP TABLE bench_upsert").execute(&db).await?;
    Ok(rate)
}
