//! `/metrics`, `/healthz` and `/readyz` for the roles without an HTTP API (`worker`,
//! `projector`, `notifier`), on `CONVEYOR_METRICS_ADDR`.

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct Ops {
    render: producers::MetricsRender,
    bus: bus::Bus,
}

/// Binds `addr` and serves the endpoints until `shutdown`; returns the bound address.
pub async fn serve(
    addr: &str,
    render: producers::MetricsRender,
    bus: bus::Bus,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    std::net::SocketAddr,
    impl std::future::Future<Output = anyhow::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (CONVEYOR_METRICS_ADDR): set another address, or port 0 for any free one")
    })?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(Ops { render, bus });
    let served = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .context("metrics endpoint")
    };
    Ok((bound, served))
}

async fn metrics(State(ops): State<Ops>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        (ops.render)(),
    )
}

async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    if ops.bus.is_connected() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not connected to NATS")
    }
}
