//! Settings: every one a flag and an environment variable, with defaults that work against the
//! local services (`scripts/up`) and `compose.yaml`.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use events::{JobKind, Namespace, RetryPolicy};
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// The development secret `conveyor dev` uses when none is configured. It is public: every other
/// role refuses it.
pub const DEV_JWT_SECRET: &str = "conveyor-development-secret-do-not-use-in-production";

/// The fewest bytes a signing secret may have outside `conveyor dev` (HS256 keys should be at
/// least as long as the hash, RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;

/// A configured signing secret, checked for a role that is not `conveyor dev`: set, not one of
/// the public development secrets, and long enough. The error names the variable and the fix.
fn production_secret(value: Option<&str>, var: &str, dev_value: &str) -> anyhow::Result<String> {
    let fix = format!(
        "set {var} to a random secret of at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`); only `conveyor dev` runs on development secrets"
    );
    match value {
        None | Some("") => anyhow::bail!("{var} is not set: {fix}"),
        Some(v) if v == dev_value => anyhow::bail!("{var} is the public development secret: {fix}"),
        Some(v) if v.len() < MIN_SECRET_BYTES => {
            anyhow::bail!("{var} is shorter than {MIN_SECRET_BYTES} bytes: {fix}")
        }
        Some(v) => Ok(v.to_owned()),
    }
}

/// Connection to NATS and the namespace.
#[derive(Debug, Clone, Args)]
pub struct BusArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        env = "CONVEYOR_NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        hide_env_values = true
    )]
    pub nats_url: String,
    /// Prefix of every stream, subject and consumer.
    #[arg(long, env = "CONVEYOR_NAMESPACE", default_value = "conveyor")]
    pub namespace: String,
    /// Replicas of streams and buckets (3 on a JetStream cluster).
    #[arg(long, env = "CONVEYOR_REPLICAS", default_value_t = 1)]
    pub replicas: usize,
}

impl BusArgs {
    /// Connects, checking the server version. Publishers wait for capacity (workers, tools).
    pub async fn connect(&self, role: &str) -> anyhow::Result<bus::Bus> {
        Ok(bus::Bus::connect(&self.settings(role)?).await?)
    }

    /// Connects for a long-running role: while the server cannot be reached, keeps trying (with
    /// backoff, logging each failure) until it can or `shutdown` fires. Other failures (a server
    /// too old, no JetStream) are final.
    pub async fn connect_waiting(
        settings: &bus::BusSettings,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<bus::Bus> {
        let mut backoff = events::retry::SERVICE_RETRY.backoff();
        loop {
            match bus::Bus::connect(settings).await {
                Err(e @ bus::Error::Connect { .. }) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "NATS unreachable; waiting for it");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => anyhow::bail!("stopped while waiting for NATS"),
                    }
                }
                other => return Ok(other?),
            }
        }
    }

    /// The connection settings of `role`.
    pub fn settings(&self, role: &str) -> anyhow::Result<bus::BusSettings> {
        let namespace = Namespace::parse(&self.namespace).context("CONVEYOR_NAMESPACE")?;
        let mut s = bus::BusSettings::new(&self.nats_url, namespace, &format!("conveyor-{role}"));
        s.replicas = self.replicas;
        Ok(s)
    }
}

/// Connection to Postgres.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Postgres URL of the read models (the database is created if missing by `migrate` and `dev`).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/conveyor",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Connections in the pool.
    #[arg(long, env = "CONVEYOR_DB_POOL", default_value_t = 10)]
    pub db_pool: u32,
}

impl DbArgs {
    fn options(&self) -> anyhow::Result<PgConnectOptions> {
        let options: PgConnectOptions = self
            .database_url
            .parse()
            .context("DATABASE_URL is not a valid Postgres URL")?;
        // Plan each statement for the tables as they are now. The read models start empty and
        // grow fast; a cached generic plan made while a table was small (a sequential scan) would
        // otherwise serve a connection's lifetime unless statistics are refreshed, which only
        // autovacuum does. Planning costs microseconds; a stale plan cost the projector 30x.
        Ok(options.options([("plan_cache_mode", "force_custom_plan")]))
    }

    fn pool_options(&self) -> PgPoolOptions {
        // A short acquire timeout: when Postgres is down, reads answer 503 quickly.
        PgPoolOptions::new()
            .max_connections(self.db_pool)
            .acquire_timeout(Duration::from_secs(3))
    }

    /// A pool that connects on first use (roles start even while Postgres is down).
    pub fn lazy_pool(&self) -> anyhow::Result<PgPool> {
        Ok(self.pool_options().connect_lazy_with(self.options()?))
    }

    /// [`DbArgs::migrate`] for a long-running role: while Postgres cannot be reached, keeps
    /// trying (with backoff, logging each failure) until it can or `shutdown` fires.
    pub async fn migrate_waiting(
        &self,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<PgPool> {
        let mut backoff = events::retry::SERVICE_RETRY.backoff();
        loop {
            match self.migrate().await {
                Ok(pool) => return Ok(pool),
                Err(e) if is_unreachable(&e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?delay, "Postgres unreachable; waiting for it");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => anyhow::bail!("stopped while waiting for Postgres"),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Creates the database if missing and applies the migrations.
    pub async fn migrate(&self) -> anyhow::Result<PgPool> {
        let exists = sqlx::Postgres::database_exists(&self.database_url)
            .await
            .with_context(|| {
                format!(
                    "cannot reach Postgres at {}: start it with `scripts/up` or set DATABASE_URL",
                    redact(&self.database_url)
                )
            })?;
        if !exists {
            sqlx::Postgres::create_database(&self.database_url)
                .await
                .context("cannot create the database")?;
        }
        let pool = self
            .pool_options()
            .connect_with(self.options()?)
            .await
            .context("cannot connect to Postgres")?;
        readmodel::MIGRATOR
            .run(&pool)
            .await
            .context("applying migrations")?;
        Ok(pool)
    }
}

/// Whether an error is Postgres being out of reach (worth waiting for), not a refusal.
fn is_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
        )
    })
}

/// Hides the password of a database URL in messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Token verification.
#[derive(Debug, Clone, Args)]
pub struct JwtArgs {
    /// The one accepted signing algorithm: `HS256` (shared secret), `RS256` or `ES256` (keys from
    /// CONVEYOR_JWKS_URL).
    #[arg(long, env = "CONVEYOR_JWT_ALGORITHM", default_value = "HS256")]
    pub jwt_algorithm: String,
    /// HS256 secret that signs and verifies tokens (at least 32 bytes; required with HS256 by
    /// every role but `dev`, which uses a development secret when it is not set).
    #[arg(long, env = "CONVEYOR_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// The identity provider's JWKS URL (RS256/ES256), e.g.
    /// `https://idp.example.com/realms/acme/protocol/openid-connect/certs`.
    #[arg(long, env = "CONVEYOR_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// Required token issuer (`iss`).
    #[arg(long, env = "CONVEYOR_JWT_ISSUER", default_value = "conveyor")]
    pub jwt_issuer: String,
    /// Required token audience (`aud`).
    #[arg(long, env = "CONVEYOR_JWT_AUDIENCE", default_value = "conveyor")]
    pub jwt_audience: String,
    /// The claim naming the caller's tenant.
    #[arg(long, env = "CONVEYOR_JWT_TENANT_CLAIM", default_value = "tenant")]
    pub jwt_tenant_claim: String,
    /// Clock skew allowed on `exp` and `nbf` (seconds).
    #[arg(long, env = "CONVEYOR_JWT_LEEWAY_SECS", default_value_t = 60)]
    pub jwt_leeway_secs: u64,
    /// Fewest milliseconds between two JWKS fetches caused by tokens with unknown key ids.
    #[arg(long, env = "CONVEYOR_JWKS_REFRESH_MIN_MS", default_value_t = 30_000)]
    pub jwks_refresh_min_ms: u64,
    /// The JWKS is fetched again once it is this old (seconds), in the background: the cached
    /// keys keep answering meanwhile.
    #[arg(long, env = "CONVEYOR_JWKS_MAX_AGE_SECS", default_value_t = 600)]
    pub jwks_max_age_secs: u64,
    /// Longest a JWKS fetch may take (ms), and so the longest a request waits for one.
    #[arg(long, env = "CONVEYOR_JWKS_FETCH_TIMEOUT_MS", default_value_t = 5_000)]
    pub jwks_fetch_timeout_ms: u64,
    /// Accept a plain `http://` JWKS URL outside loopback (only on a network you trust: anyone
    /// on the path could swap the keys).
    #[arg(long, env = "CONVEYOR_JWKS_ALLOW_HTTP", default_value_t = false)]
    pub jwks_allow_http: bool,
}

impl JwtArgs {
    /// For `conveyor dev`: the development secret unless one is configured.
    pub fn or_dev_secret(&mut self) {
        if self.jwt_secret.as_deref().is_none_or(str::is_empty) {
            self.jwt_secret = Some(DEV_JWT_SECRET.to_owned());
        }
    }

    /// As the API's settings. With HS256 the secret must be set, not the development one, and at
    /// least [`MIN_SECRET_BYTES`] long (`conveyor dev` calls [`JwtArgs::or_dev_secret`] first,
    /// and is the only role that may run on it).
    pub fn settings(&self) -> anyhow::Result<producers::JwtSettings> {
        let s = self.unchecked_settings()?;
        if s.algorithm == producers::auth::Algorithm::HS256 {
            production_secret(
                self.jwt_secret.as_deref(),
                "CONVEYOR_JWT_SECRET",
                DEV_JWT_SECRET,
            )?;
        }
        Ok(s)
    }

    /// [`JwtArgs::settings`] for `conveyor dev`, which may run on the development secret.
    pub fn dev_settings(&self) -> anyhow::Result<producers::JwtSettings> {
        self.unchecked_settings()
    }

    fn unchecked_settings(&self) -> anyhow::Result<producers::JwtSettings> {
        use producers::auth::Algorithm;
        let algorithm = match self.jwt_algorithm.to_ascii_uppercase().as_str() {
            "HS256" => Algorithm::HS256,
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            other => anyhow::bail!(
                "CONVEYOR_JWT_ALGORITHM={other} is not supported: use HS256, RS256 or ES256"
            ),
        };
        Ok(producers::JwtSettings {
            algorithm,
            secret: self.jwt_secret.clone().unwrap_or_default(),
            jwks_url: self.jwks_url.clone().filter(|u| !u.is_empty()),
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            tenant_claim: self.jwt_tenant_claim.clone(),
            leeway_secs: self.jwt_leeway_secs,
            jwks_refresh_min: Duration::from_millis(self.jwks_refresh_min_ms),
            jwks_max_age: Duration::from_secs(self.jwks_max_age_secs),
            jwks_fetch_timeout: Duration::from_millis(self.jwks_fetch_timeout_ms.max(1)),
            jwks_allow_http: self.jwks_allow_http,
        })
    }
}

/// What `conveyor token` signs with: the API's HS256 secret, issuer and audience.
#[derive(Debug, Clone, Args)]
pub struct MintArgs {
    /// HS256 secret of the API the token is for (without it, the development secret, whose
    /// tokens only `conveyor dev` accepts).
    #[arg(long, env = "CONVEYOR_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Token issuer (`iss`).
    #[arg(long, env = "CONVEYOR_JWT_ISSUER", default_value = "conveyor")]
    pub jwt_issuer: String,
    /// Token audience (`aud`).
    #[arg(long, env = "CONVEYOR_JWT_AUDIENCE", default_value = "conveyor")]
    pub jwt_audience: String,
}

impl MintArgs {
    /// Settings for minting (HS256).
    pub fn minting(&self) -> producers::JwtSettings {
        let secret = self
            .jwt_secret
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEV_JWT_SECRET.to_owned());
        let mut s = producers::JwtSettings::hs256(&secret);
        s.issuer = self.jwt_issuer.clone();
        s.audience = self.jwt_audience.clone();
        s
    }
}

/// Per-tenant limits and the API process's load bounds (0 turns one off).
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Job submissions per second per tenant, per API process.
    #[arg(long, env = "CONVEYOR_RATE_LIMIT", default_value_t = 500)]
    pub rate_limit: u32,
    /// Submissions a tenant may make in a burst above its rate.
    #[arg(long, env = "CONVEYOR_RATE_BURST", default_value_t = 1000)]
    pub rate_burst: u32,
    /// Queued, running and retry-scheduled jobs a tenant may have.
    #[arg(long, env = "CONVEYOR_TENANT_MAX_ACTIVE", default_value_t = 100_000)]
    pub tenant_max_active: u64,
    /// Open SSE/WebSocket streams per tenant, per API process.
    #[arg(long, env = "CONVEYOR_TENANT_MAX_STREAMS", default_value_t = 256)]
    pub tenant_max_streams: usize,
    /// Open SSE/WebSocket streams per API process.
    #[arg(long, env = "CONVEYOR_MAX_STREAMS", default_value_t = 10_000)]
    pub max_streams: usize,
    /// Requests handled at once per API process; more get 503 with Retry-After.
    #[arg(long, env = "CONVEYOR_MAX_INFLIGHT", default_value_t = 2048)]
    pub max_inflight: usize,
    /// Publishes awaiting JetStream's ack per API process; more get 503 with Retry-After.
    #[arg(long, env = "CONVEYOR_PUBLISH_INFLIGHT", default_value_t = 4096)]
    pub publish_inflight: usize,
    /// Time a client has to send a request's headers, and the longest an HTTP/1 keep-alive
    /// connection may sit idle (ms); streams are not cut by it.
    #[arg(long, env = "CONVEYOR_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// Open connections per API process; more are answered 503 and closed. Keep it below the
    /// process's open-file limit.
    #[arg(long, env = "CONVEYOR_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Open connections from one client address per API process (0 behind a proxy that connects
    /// from few addresses: cap there instead).
    #[arg(
        long,
        env = "CONVEYOR_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 1_024
    )]
    pub max_connections_per_address: usize,
}

impl LimitArgs {
    fn limits(&self) -> producers::Limits {
        producers::Limits {
            submit_rate: self.rate_limit,
            submit_burst: self.rate_burst,
            max_active_jobs: self.tenant_max_active,
            max_streams_per_tenant: self.tenant_max_streams,
            max_streams: self.max_streams,
            max_inflight: self.max_inflight,
        }
    }

    fn connections(&self) -> producers::ConnectionLimits {
        producers::ConnectionLimits {
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            max_connections: self.max_connections,
            max_per_address: self.max_connections_per_address,
        }
    }
}

/// Where a role without an HTTP API serves `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Args)]
pub struct OpsArgs {
    /// Listen address of the metrics and health endpoints (`worker`, `projector`, `notifier`);
    /// port 0 picks a free one (printed). The API and `dev` serve them on the API's address.
    #[arg(long, env = "CONVEYOR_METRICS_ADDR", default_value = "127.0.0.1:9090")]
    pub metrics_addr: String,
}

/// The API role.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Listen address; port 0 picks a free one (the bound address is printed).
    #[arg(long, env = "CONVEYOR_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// Extra job kinds to accept, comma-separated (served by your own workers).
    #[arg(long, env = "CONVEYOR_KINDS", value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// Largest request body in bytes.
    #[arg(long, env = "CONVEYOR_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,
    /// Events buffered for the slowest SSE/WebSocket subscriber before it is told to resume.
    #[arg(long, env = "CONVEYOR_SSE_BUFFER", default_value_t = 4096)]
    pub sse_buffer: usize,
    /// How long a read of a just-accepted job waits for the projector (ms) before answering
    /// from the event log.
    #[arg(long, env = "CONVEYOR_READ_YOUR_WRITES_MS", default_value_t = 5_000)]
    pub read_your_writes_ms: u64,
    #[command(flatten)]
    pub jwt: JwtArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
}

impl ApiArgs {
    /// As the API's settings; `dev` allows the development secrets.
    pub fn settings(
        &self,
        webhooks: &WebhookArgs,
        attempts: &AttemptArgs,
        dev: bool,
    ) -> anyhow::Result<producers::ApiSettings> {
        let jwt = if dev {
            self.jwt.dev_settings()?
        } else {
            self.jwt.settings()?
        };
        let mut s = producers::ApiSettings::new(jwt);
        s.limits = self.limits.limits();
        s.connections = self.limits.connections();
        s.webhook_targets = webhooks.targets();
        s.webhook_lookups_per_tenant = webhooks.webhook_lookups_per_tenant.max(1);
        s.webhook_secret = webhooks.master_secret(dev)?;
        for k in self.kinds.iter().filter(|k| !k.is_empty()) {
            s.kinds.push(JobKind::parse(k).context("CONVEYOR_KINDS")?);
        }
        s.max_body_bytes = self.max_body_bytes;
        s.read_your_writes_wait = Duration::from_millis(self.read_your_writes_ms);
        s.sse_buffer = self.sse_buffer;
        s.leases = attempts.leases();
        Ok(s)
    }
}

/// How attempts run: shared by the worker role and by the API, which runs the attempts of workers
/// in other languages (the worker protocol) with the same lease, retries and result limit.
#[derive(Debug, Clone, Args)]
pub struct AttemptArgs {
    /// Redelivery after this long without an ack or heartbeat (ms): the consumers' ack wait,
    /// and the lease of a job leased over HTTP.
    #[arg(long, env = "CONVEYOR_ACK_WAIT_MS", default_value_t = 30_000)]
    pub ack_wait_ms: u64,
    /// First retry delay (ms); doubles per attempt, with jitter.
    #[arg(long, env = "CONVEYOR_RETRY_BASE_MS", default_value_t = 1_000)]
    pub retry_base_ms: u64,
    /// Longest retry delay (ms).
    #[arg(long, env = "CONVEYOR_RETRY_MAX_MS", default_value_t = 600_000)]
    pub retry_max_ms: u64,
    /// Results larger than this many bytes go to the object store.
    #[arg(long, env = "CONVEYOR_RESULT_INLINE_BYTES", default_value_t = 16 * 1024)]
    pub result_inline_bytes: usize,
}

impl AttemptArgs {
    fn ack_wait(&self) -> Duration {
        Duration::from_millis(self.ack_wait_ms)
    }

    fn retry(&self) -> RetryPolicy {
        RetryPolicy::new(
            Duration::from_millis(self.retry_base_ms),
            Duration::from_millis(self.retry_max_ms),
        )
    }

    /// As the API's settings for the worker protocol.
    pub fn leases(&self) -> producers::LeaseSettings {
        producers::LeaseSettings {
            ack_wait: self.ack_wait(),
            retry: self.retry(),
            inline_result_limit: self.result_inline_bytes,
        }
    }
}

/// The worker role.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Jobs run at once by this process.
    #[arg(long, env = "CONVEYOR_WORKER_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    #[command(flatten)]
    pub attempts: AttemptArgs,
    /// How long shutdown waits for running jobs before handing them back (ms).
    #[arg(long, env = "CONVEYOR_SHUTDOWN_GRACE_MS", default_value_t = 25_000)]
    pub shutdown_grace_ms: u64,
    /// Per kind, how many jobs the scheduler hands to the workers ahead of their taking them:
    /// more keeps fast workers busier, fewer lets later high-priority jobs overtake more.
    #[arg(long, env = "CONVEYOR_SCHEDULER_WINDOW", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub scheduler_window: u64,
}

impl WorkerArgs {
    /// As the worker's settings; push kinds are delivered to the endpoints `webhooks` allows.
    pub fn settings(&self, webhooks: &WebhookArgs) -> consumers::worker::WorkerSettings {
        consumers::worker::WorkerSettings {
            concurrency: self.concurrency,
            ack_wait: self.attempts.ack_wait(),
            retry: self.attempts.retry(),
            inline_result_limit: self.attempts.result_inline_bytes,
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
            worker_id: format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into()),
                std::process::id()
            ),
            push: Some(consumers::worker::PushSettings {
                targets: webhooks.targets(),
                per_host: webhooks.webhook_per_host,
            }),
            scheduler: Some(consumers::scheduler::SchedulerSettings {
                window: self.scheduler_window,
            }),
        }
    }
}

/// The projector role.
#[derive(Debug, Clone, Args)]
pub struct ProjectorArgs {
    /// Most events applied in one transaction.
    #[arg(long, env = "CONVEYOR_PROJECTOR_BATCH", default_value_t = 1000)]
    pub projector_batch: usize,
    /// Most events applied in one transaction of a rebuild.
    #[arg(long, env = "CONVEYOR_REBUILD_BATCH", default_value_t = 5000)]
    pub rebuild_batch: usize,
}

impl ProjectorArgs {
    /// As the projector's settings.
    pub fn settings(&self) -> consumers::projector::ProjectorSettings {
        consumers::projector::ProjectorSettings {
            batch_size: self.projector_batch.max(1),
            rebuild_batch_size: self.rebuild_batch.max(1),
        }
    }
}

/// The development webhook master secret used when none is configured.
pub const DEV_WEBHOOK_SECRET: &str = "conveyor-development-webhook-secret";

/// Webhooks: signing, targets and delivery.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Master secret; each tenant's signing secret derives from it (`GET /v1/webhooks/secret`).
    /// At least 32 bytes; required by `api` and `notifier` (`dev` uses a development secret when
    /// it is not set).
    #[arg(long, env = "CONVEYOR_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Accept and deliver to webhook URLs on loopback or private networks (development and tests).
    #[arg(long, env = "CONVEYOR_ALLOW_PRIVATE_WEBHOOKS", default_value_t = false)]
    pub allow_private_webhooks: bool,
    /// Networks webhook targets may be on although not public, comma-separated CIDRs (an
    /// address alone is that host), e.g. an internal receiver network `10.20.0.0/16`.
    #[arg(long, env = "CONVEYOR_WEBHOOK_ALLOW_CIDRS", value_delimiter = ',', value_parser = parse_cidr)]
    pub webhook_allow_cidrs: Vec<events::webhooks::url::IpNet>,
    /// Name server (`ip:port`) resolving webhook hosts in the API and the notifier; default: the
    /// system's (`/etc/resolv.conf`).
    #[arg(long, env = "CONVEYOR_DNS_SERVER")]
    pub dns_server: Option<std::net::SocketAddr>,
    /// Webhook host lookups in flight per tenant in one API process; more wait, within the
    /// request's deadline.
    #[arg(long, env = "CONVEYOR_WEBHOOK_LOOKUPS_PER_TENANT", default_value_t = 8)]
    pub webhook_lookups_per_tenant: usize,
    /// Attempts before a delivery is recorded as failed.
    #[arg(long, env = "CONVEYOR_WEBHOOK_MAX_ATTEMPTS", default_value_t = 8)]
    pub webhook_max_attempts: u32,
    /// Time limit of one delivery (ms).
    #[arg(long, env = "CONVEYOR_WEBHOOK_TIMEOUT_MS", default_value_t = 10_000)]
    pub webhook_timeout_ms: u64,
    /// Deliveries in flight per notifier process.
    #[arg(long, env = "CONVEYOR_WEBHOOK_CONCURRENCY", default_value_t = 128)]
    pub webhook_concurrency: usize,
    /// Deliveries in flight per target host and port.
    #[arg(long, env = "CONVEYOR_WEBHOOK_PER_HOST", default_value_t = 16)]
    pub webhook_per_host: usize,
    /// First retry delay (ms); doubles per attempt, with jitter, up to 10 minutes.
    #[arg(long, env = "CONVEYOR_WEBHOOK_RETRY_BASE_MS", default_value_t = 1_000)]
    pub webhook_retry_base_ms: u64,
}

impl WebhookArgs {
    /// The master secret: the configured one, checked, or for `dev` the development one if none
    /// is set.
    pub fn master_secret(&self, dev: bool) -> anyhow::Result<String> {
        match self.webhook_secret.as_deref() {
            None | Some("") if dev => Ok(DEV_WEBHOOK_SECRET.to_owned()),
            Some(s) if dev => Ok(s.to_owned()),
            s => production_secret(s, "CONVEYOR_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET),
        }
    }

    /// As the notifier's settings; `dev` allows the development secret.
    pub fn settings(
        &self,
        dev: bool,
    ) -> anyhow::Result<consumers::notifiers::webhook::WebhookSettings> {
        Ok(consumers::notifiers::webhook::WebhookSettings {
            master_secret: self.master_secret(dev)?,
            max_attempts: self.webhook_max_attempts.max(1),
            timeout: Duration::from_millis(self.webhook_timeout_ms),
            concurrency: self.webhook_concurrency,
            per_host: self.webhook_per_host,
            retry: events::RetryPolicy::new(
                Duration::from_millis(self.webhook_retry_base_ms),
                Duration::from_secs(600),
            ),
            targets: self.targets(),
        })
    }

    /// Which webhook targets are allowed, and how their names are resolved.
    pub fn targets(&self) -> events::webhooks::url::TargetSettings {
        events::webhooks::url::TargetSettings {
            allow_private: self.allow_private_webhooks,
            allow: self.webhook_allow_cidrs.clone(),
            dns_server: self.dns_server,
        }
    }
}

/// A network in CIDR notation; an address alone is that one host.
fn parse_cidr(s: &str) -> Result<events::webhooks::url::IpNet, String> {
    let s = s.trim();
    s.parse()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(Into::into))
        .map_err(|_| format!("{s:?} is not a network such as 10.20.0.0/16"))
}
