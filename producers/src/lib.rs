//! conveyor's HTTP API (the producer role).
//!
//! Validates requests, publishes commands and domain events to JetStream and answers `202` once
//! JetStream has acknowledged them; it never writes Postgres. Reads come from the read models the
//! projector maintains, with read-your-writes: a job that was accepted but not yet projected is
//! waited for (bounded) and, failing that, answered from the event log, never with a 404.
//!
//! ```no_run
//! # async fn run(state: producers::AppState) -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! producers::serve(listener, state, tokio_util::sync::CancellationToken::new()).await
//! # }
//! ```

pub mod auth;
pub mod error;
mod extract;
mod live;
mod openapi;
mod reads;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bus::Bus;
use events::JobKind;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use auth::JwtSettings;
pub use openapi::openapi_json;

/// CloudEvents `source` of events published by the API.
pub const SOURCE: &str = "/conveyor/api";

/// Settings of the API role.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Token verification.
    pub jwt: JwtSettings,
    /// Kinds accepted by `POST /v1/jobs` (the built-in ones plus any a deployment adds).
    pub kinds: Vec<JobKind>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// `max_attempts` when the request has none.
    pub default_max_attempts: u32,
    /// `timeout_ms` when the request has none.
    pub default_timeout_ms: u64,
    /// How long a read of a just-accepted job waits for the projector.
    pub read_your_writes_wait: Duration,
    /// Accept webhook URLs that resolve to loopback or private addresses (development, tests).
    pub allow_private_webhooks: bool,
    /// Master secret of webhook signatures (each tenant's secret derives from it).
    pub webhook_secret: String,
    /// Events buffered for the slowest live subscriber before it is told to resume.
    pub sse_buffer: usize,
}

impl ApiSettings {
    /// Defaults around a JWT configuration.
    pub fn new(jwt: JwtSettings) -> Self {
        Self {
            jwt,
            kinds: events::job::builtin_kinds(),
            max_body_bytes: 256 * 1024,
            default_max_attempts: 3,
            default_timeout_ms: 300_000,
            read_your_writes_wait: Duration::from_secs(5),
            allow_private_webhooks: false,
            webhook_secret: String::new(),
            sse_buffer: 4096,
        }
    }
}

/// Shared state of the API: cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
/// What [`AppState`] shares (its fields are internal).
pub struct Inner {
    pub(crate) bus: Bus,
    pub(crate) db: PgPool,
    pub(crate) settings: ApiSettings,
    /// The projector's last checkpoint, as announced by `NOTIFY` (see [`reads`]).
    pub(crate) checkpoint: watch::Sender<i64>,
    /// Live event fan-out to SSE and WebSocket subscribers.
    pub(crate) hub: live::Hub,
    /// Fires when the server shuts down: live streams end.
    pub(crate) shutdown: CancellationToken,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl AppState {
    /// Builds the state and provisions the streams and buckets the API publishes to.
    pub async fn new(bus: Bus, db: PgPool, settings: ApiSettings) -> Result<Self, bus::Error> {
        bus.provision_streams().await?;
        Ok(Self {
            inner: Arc::new(Inner {
                hub: live::Hub::new(settings.sse_buffer),
                bus,
                db,
                settings,
                checkpoint: watch::channel(0).0,
                shutdown: CancellationToken::new(),
            }),
        })
    }
}

/// The router with every route, for tests (`app(state).oneshot(request)`) and [`serve`].
pub fn app(state: AppState) -> Router {
    routes::router(state)
}

/// Serves the API on `listener` until `shutdown` fires, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listen = tokio::spawn(reads::checkpoint_listener(state.clone(), shutdown.clone()));
    // Before the first request: subscribers can then rely on the tail covering what follows.
    let start = live::Hub::start_position(&state.bus).await;
    let tail = tokio::spawn(
        state
            .hub
            .clone()
            .run_tail(state.bus.clone(), start, shutdown.clone()),
    );
    {
        // Live streams end with the server (axum waits for open connections to finish).
        let (token, streams) = (shutdown.clone(), state.shutdown.clone());
        tokio::spawn(async move {
            token.cancelled().await;
            streams.cancel();
        });
    }
    let token = shutdown.clone();
    // Small request/response pairs: Nagle's algorithm would hold them back waiting for ACKs.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let served = axum::serve(listener, app(state))
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await;
    shutdown.cancel();
    let _ = listen.await;
    let _ = tail.await;
    served
}
