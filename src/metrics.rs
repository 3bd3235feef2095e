//! Prometheus metrics: one recorder per process, fed by every role through the `metrics`
//! facade, rendered at `/metrics` (on the API's port, or on `CONVEYOR_METRICS_ADDR` for the
//! other roles). The names and their meaning are listed here, once.

use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// Histogram buckets for every duration, in seconds: from half a millisecond to five minutes.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// Installs the process's recorder and returns what renders it. Idempotent: a second call
/// (tests) gets a recorder that is not the global one, which is harmless.
pub fn install() -> producers::MetricsRender {
    let handle = PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .expect("the bucket list is not empty")
        .install_recorder()
        .unwrap_or_else(|_| {
            PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder()
                .handle()
        });
    describe();
    let render: producers::MetricsRender = std::sync::Arc::new(move || render(&handle));
    render
}

/// Drains histogram data periodically, as the exporter requires, until `shutdown`.
pub async fn upkeep(render: producers::MetricsRender, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => { let _ = render(); }
            _ = shutdown.cancelled() => return,
        }
    }
}

fn render(handle: &PrometheusHandle) -> String {
    handle.run_upkeep();
    let mut out = handle.render();
    if let Some(rss) = resident_bytes() {
        out.push_str(&format!(
            "# HELP process_resident_memory_bytes Resident memory of this process.\n\
             # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}\n"
        ));
    }
    out
}

/// Resident memory of this process (Linux; `None` elsewhere).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn describe() {
    describe_counter!(
        "conveyor_http_requests_total",
        "HTTP requests by method, route and status."
    );
    describe_histogram!(
        "conveyor_http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request handling time by method and route (for live streams: until the stream starts)."
    );
    describe_counter!(
        "conveyor_rejected_requests_total",
        "Requests refused by a limit: rate_limit, active_jobs, streams, inflight, publishes_in_flight."
    );
    describe_histogram!(
        "conveyor_publish_duration_seconds",
        Unit::Seconds,
        "Time from publishing to JetStream's acknowledgement, by stream."
    );
    describe_counter!(
        "conveyor_jobs_submitted_total",
        "Jobs accepted by the API, by kind."
    );
    describe_gauge!(
        "conveyor_live_subscribers",
        "Open SSE and WebSocket streams, by transport."
    );
    describe_counter!(
        "conveyor_job_attempts_total",
        "Attempts run by workers, by kind and outcome (succeeded, failed, timed_out, cancelled, handed_back)."
    );
    describe_histogram!(
        "conveyor_job_duration_seconds",
        Unit::Seconds,
        "Run time of an attempt, by kind."
    );
    describe_gauge!(
        "conveyor_jobs_running",
        "Attempts running in this worker, by kind."
    );
    describe_counter!(
        "conveyor_jobs_finished_total",
        "Jobs that reached a terminal status in the read model, by kind and status."
    );
    describe_histogram!(
        "conveyor_job_latency_seconds",
        Unit::Seconds,
        "From submission to terminal status in the read model, by kind."
    );
    describe_gauge!(
        "conveyor_consumer_pending",
        "Messages not yet delivered to a durable consumer, by stream and consumer."
    );
    describe_gauge!(
        "conveyor_consumer_ack_pending",
        "Messages delivered and not yet acknowledged, by stream and consumer."
    );
    describe_gauge!(
        "conveyor_consumer_redelivered",
        "Messages delivered more than once and not yet acknowledged, by stream and consumer."
    );
    describe_gauge!(
        "conveyor_projection_checkpoint",
        "Last EVENTS sequence applied to the live read models, by projection."
    );
    describe_gauge!(
        "conveyor_projection_lag_events",
        "Events in the log not yet applied to the live read models, by projection."
    );
    describe_gauge!(
        "conveyor_projection_lag_seconds",
        Unit::Seconds,
        "Age of the oldest event not yet applied to the live read models, by projection."
    );
    describe_histogram!(
        "conveyor_projector_batch_events",
        "Events applied per projector transaction."
    );
    describe_histogram!(
        "conveyor_projector_batch_seconds",
        Unit::Seconds,
        "Time to apply and commit one projector batch."
    );
    describe_counter!(
        "conveyor_webhook_deliveries_total",
        "Webhook delivery attempts by outcome (delivered, retried, failed, refused, gone)."
    );
    describe_histogram!(
        "conveyor_webhook_delivery_seconds",
        Unit::Seconds,
        "Time of one webhook delivery attempt."
    );
}
