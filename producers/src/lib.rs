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
mod kinds;
pub mod limits;
mod live;
mod middleware;
mod openapi;
mod reads;
mod routes;
mod server;
mod submission;
mod webhook_targets;
mod workers;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bus::Bus;
use events::JobKind;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use auth::JwtSettings;
pub use limits::Limits;
pub use routes::batch::MAX_BATCH;
pub use server::ConnectionLimits;
pub use workers::LeaseSettings;

/// CloudEvents `source` of events published by the API.
pub const SOURCE: &str = "/conveyor/api";

/// Renders this process's metrics in the Prometheus text format (served at `/metrics`).
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// Settings of the API role.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Token verification.
    pub jwt: JwtSettings,
    /// Kinds accepted by `POST /v1/jobs` besides the built-in ones and those workers register
    /// (a deployment's own kinds, accepted before their workers start).
    pub kinds: Vec<JobKind>,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// `max_attempts` when the request has none.
    pub default_max_attempts: u32,
    /// `timeout_ms` when the request has none.
    pub default_timeout_ms: u64,
    /// How long a read of a just-accepted job waits for the projector.
    pub read_your_writes_wait: Duration,
    /// Which webhook targets are accepted, and how their names are resolved.
    pub webhook_targets: events::webhooks::url::TargetSettings,
    /// Webhook host lookups in flight per tenant (see `webhook_targets`).
    pub webhook_lookups_per_tenant: usize,
    /// Master secret of webhook signatures (each tenant's secret derives from it).
    pub webhook_secret: String,
    /// Events buffered for the slowest live subscriber before it is told to resume.
    pub sse_buffer: usize,
    /// Per-tenant rate limits and quotas, and the process's load bounds.
    pub limits: Limits,
    /// Bounds on open connections and on slow clients.
    pub connections: ConnectionLimits,
    /// How attempts of workers of the worker protocol run (leases, retries, large results).
    pub leases: LeaseSettings,
}

impl ApiSettings {
    /// Defaults around a JWT configuration.
    pub fn new(jwt: JwtSettings) -> Self {
        Self {
            jwt,
            kinds: Vec::new(),
            max_body_bytes: 256 * 1024,
            default_max_attempts: 3,
            default_timeout_ms: 300_000,
            read_your_writes_wait: Duration::from_secs(5),
            webhook_targets: Default::default(),
            webhook_lookups_per_tenant: 8,
            webhook_secret: String::new(),
            sse_buffer: 4096,
            limits: Limits::default(),
            connections: ConnectionLimits::default(),
            leases: LeaseSettings::default(),
        }
    }
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// JetStream provisioning failed.
    #[error(transparent)]
    Bus(#[from] bus::Error),
    /// A setting cannot work.
    #[error("{0}")]
    Config(String),
}

/// Shared state of the API: cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

/// What [`AppState`] shares (its fields are internal).
pub struct Inner {
    pub(crate) bus: Bus,
    pub(crate) db: PgPool,
    pub(crate) settings: ApiSettings,
    pub(crate) verifier: auth::Verifier,
    pub(crate) kinds: kinds::Catalog,
    pub(crate) limits: limits::Guard,
    pub(crate) webhooks: webhook_targets::WebhookTargets,
    /// The worker protocol.
    pub(crate) workers: workers::Workers,
    pub(crate) metrics: Option<MetricsRender>,
    /// The projector's last checkpoint, as announced by `NOTIFY` (see [`reads`]).
    pub(crate) checkpoint: watch::Sender<i64>,
    /// Live event fan-out to SSE and WebSocket subscribers.
    pub(crate) hub: live::Hub,
    /// Fires when the server shuts down: live streams end (with a resume hint).
    pub(crate) shutdown: CancellationToken,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("namespace", self.bus.ns())
            .field("kinds", &self.kinds)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl AppState {
    /// Builds the state and provisions the streams and buckets the API publishes to. `metrics`
    /// renders what `/metrics` serves (none: `/metrics` answers 404).
    pub async fn new(
        bus: Bus,
        db: PgPool,
        settings: ApiSettings,
        metrics: Option<MetricsRender>,
    ) -> Result<Self, StartError> {
        let verifier = auth::Verifier::new(settings.jwt.clone()).map_err(StartError::Config)?;
        let webhooks = webhook_targets::WebhookTargets::new(
            &settings.webhook_targets,
            settings.webhook_lookups_per_tenant,
        )
        .map_err(|e| StartError::Config(e.to_string()))?;
        bus.provision_streams().await?;
        Ok(Self {
            inner: Arc::new(Inner {
                webhooks,
                workers: workers::Workers::new(&settings.webhook_secret, settings.leases.clone()),
                hub: live::Hub::new(settings.sse_buffer),
                kinds: kinds::Catalog::new(&settings.kinds),
                limits: limits::Guard::new(settings.limits.clone()),
                verifier,
                metrics,
                bus,
                db,
                settings,
                checkpoint: watch::channel(0).0,
                shutdown: CancellationToken::new(),
            }),
        })
    }
}

/// The OpenAPI document the API serves at `/openapi.json`, as pretty JSON.
pub fn openapi_document() -> String {
    routes::document()
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
    let kinds = tokio::spawn(
        state
            .kinds
            .clone()
            .follow(state.bus.clone(), shutdown.clone()),
    );
    let housekeeping = {
        let (state, shutdown) = (state.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(30)) => state.limits.housekeeping(),
                    _ = shutdown.cancelled() => return,
                }
            }
        })
    };
    let tail = tokio::spawn(
        state
            .hub
            .clone()
            .run_tail(state.bus.clone(), shutdown.clone()),
    );
    {
        // Live streams end with the server (axum waits for open connections to finish).
        let (token, streams) = (shutdown.clone(), state.shutdown.clone());
        tokio::spawn(async move {
            token.cancelled().await;
            streams.cancel();
        });
    }
    let limits = state.settings.connections.clone();
    let served = server::serve(listener, app(state), limits, shutdown.clone()).await;
    shutdown.cancel();
    let _ = tokio::join!(listen, tail, kinds, housekeeping);
    served
}
