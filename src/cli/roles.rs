//! The long-running roles: `dev` (all in one process), `api`, and the roles without an HTTP API
//! (`worker`, `projector`, `notifier`), which serve metrics and health on their own address.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use consumers::projector::Projector;
use consumers::worker::Worker;
use consumers::Registry;
use events::Tenant;

use crate::config::{
    ApiArgs, AttemptArgs, BusArgs, DbArgs, OpsArgs, ProjectorArgs, WebhookArgs, WorkerArgs,
};
use crate::supervisor::Supervisor;

/// `conveyor api`. Its settings are checked before anything starts: it refuses to run without
/// secrets, or with a JWKS URL it may not fetch from.
pub(super) async fn api(
    bus: BusArgs,
    db: DbArgs,
    api: ApiArgs,
    attempts: AttemptArgs,
    webhooks: WebhookArgs,
) -> anyhow::Result<()> {
    let settings = api.settings(&webhooks, &attempts, false)?;
    // The token settings too (a JWKS URL it must refuse), before connecting to anything.
    producers::auth::Verifier::new(settings.jwt.clone()).map_err(anyhow::Error::msg)?;
    let mut sup = Supervisor::new();
    let metrics = start_metrics(&mut sup);
    start_api(&mut sup, &bus, &db, &api, settings, &metrics).await?;
    sup.run(Duration::from_secs(30)).await
}

/// A role without an HTTP API, with what it needs.
#[derive(Debug)]
pub(super) enum Background {
    /// Runs jobs of the built-in kinds and delivers push kinds.
    Worker(BusArgs, DbArgs, WorkerArgs, WebhookArgs),
    /// Builds the read models.
    Projector(BusArgs, DbArgs, ProjectorArgs),
    /// Delivers webhooks (its settings checked before anything starts).
    Notifier(BusArgs, consumers::notifiers::webhook::WebhookSettings),
}

/// Runs a role without an HTTP API until it is told to stop, with its metrics and health
/// endpoints: one start for all of them.
pub(super) async fn background(role: Background, ops: OpsArgs) -> anyhow::Result<()> {
    let mut sup = Supervisor::new();
    let metrics = start_metrics(&mut sup);
    let (bus, grace) = match role {
        Background::Worker(bus, db, worker, webhooks) => (
            start_worker(&mut sup, &bus, &db, &worker, &webhooks).await?,
            // Running jobs get their grace period to finish.
            Duration::from_millis(worker.shutdown_grace_ms) + Duration::from_secs(5),
        ),
        Background::Projector(bus, db, projector) => (
            start_projector(&mut sup, &bus, &db, &projector).await?,
            Duration::from_secs(30),
        ),
        Background::Notifier(bus, webhooks) => (
            start_notifier(&mut sup, &bus, webhooks).await?,
            Duration::from_secs(30),
        ),
    };
    start_ops(&mut sup, &ops, metrics, bus).await?;
    sup.run(grace).await
}

pub(super) async fn dev(
    bus: BusArgs,
    db: DbArgs,
    mut api: ApiArgs,
    worker: WorkerArgs,
    projector: ProjectorArgs,
    webhooks: WebhookArgs,
) -> anyhow::Result<()> {
    // The one role that may run on the public development secrets, and only where no one else
    // can reach it: with them, anyone could mint tokens for every tenant.
    let dev_secret = api.jwt.jwt_secret.as_deref().is_none_or(str::is_empty)
        && api.jwt.jwt_algorithm.eq_ignore_ascii_case("HS256");
    if dev_secret && !on_loopback(&api.http_addr) {
        anyhow::bail!(
            "conveyor dev would listen on {} with the public development secret, so anyone who reaches it could mint tokens for every tenant: listen on 127.0.0.1 (CONVEYOR_HTTP_ADDR), or set CONVEYOR_JWT_SECRET and CONVEYOR_WEBHOOK_SECRET",
            api.http_addr
        );
    }
    api.jwt.or_dev_secret();
    let api_settings = api.settings(&webhooks, &worker.attempts, true)?;
    let webhook_settings = webhooks.settings(true)?;
    let mut sup = Supervisor::new();
    let metrics = start_metrics(&mut sup);
    // First: it migrates the database the other roles read.
    start_projector(&mut sup, &bus, &db, &projector).await?;
    start_worker(&mut sup, &bus, &db, &worker, &webhooks).await?;
    start_notifier(&mut sup, &bus, webhook_settings).await?;
    // The banner's token is minted with what the API verifies with.
    let jwt = api_settings.jwt.clone();
    let addr = start_api(&mut sup, &bus, &db, &api, api_settings, &metrics).await?;
    // Everything the CLI needs in another shell, client and operator commands alike, as lines
    // to paste.
    let mut exports = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Into::into))
    {
        let dir: std::path::PathBuf = dir;
        exports.push(format!(
            "export PATH={}:\"$PATH\"",
            shell_quote(&dir.to_string_lossy())
        ));
    }
    exports.push(format!("export CONVEYOR_URL=http://{addr}"));
    let token_note = if jwt.algorithm == producers::auth::Algorithm::HS256 {
        let token = producers::auth::mint(
            &jwt,
            "developer",
            &Tenant::parse("dev").expect("valid tenant"),
            "jobs:write jobs:read events:read admin operator",
            7 * 86_400,
        );
        exports.push(format!("export CONVEYOR_TOKEN={token}"));
        "tenant `dev`, every scope, the token valid 7 days".to_owned()
    } else {
        format!(
            "with CONVEYOR_JWT_ALGORITHM={:?}, get tokens from your identity provider",
            jwt.algorithm
        )
    };
    // Passwords in the URLs are not printed: whoever set them has them.
    let (nats_url, db_url) = (
        crate::config::redact(&bus.nats_url),
        crate::config::redact(&db.database_url),
    );
    let hidden = if nats_url != bus.nats_url || db_url != db.database_url {
        "   # passwords hidden: put yours in"
    } else {
        ""
    };
    exports.push(format!(
        "export CONVEYOR_NATS_URL={} CONVEYOR_NAMESPACE={} DATABASE_URL={}{hidden}",
        shell_quote(&nats_url),
        shell_quote(&bus.namespace),
        shell_quote(&db_url)
    ));
    println!(
        "\nconveyor dev is running: API and dashboard on http://{addr} (namespace {}, NATS {}, Postgres {})\n\n\
         For the CLI in another shell ({token_note}):\n\n  {}\n\n\
         Try: conveyor jobs submit sleep --payload '{{\"ms\": 2000, \"steps\": 4}}'\n",
        bus.namespace,
        nats_url,
        db_url,
        exports.join("\n  ")
    );
    sup.run(Duration::from_millis(worker.shutdown_grace_ms) + Duration::from_secs(5))
        .await
}

/// Whether a listen address is on loopback only (`127.0.0.1:8080`, `[::1]:8080`,
/// `localhost:8080`).
fn on_loopback(addr: &str) -> bool {
    match addr.parse::<SocketAddr>() {
        Ok(a) => a.ip().is_loopback(),
        Err(_) => addr
            .rsplit_once(':')
            .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost")),
    }
}

/// `s` as one shell word: as it is when it is plain, else in single quotes.
fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/:@._-,+=%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Installs the metrics recorder and keeps its histograms drained.
fn start_metrics(sup: &mut Supervisor) -> producers::MetricsRender {
    let render = crate::metrics::install();
    let (r, token) = (render.clone(), sup.token());
    sup.spawn("metrics", async move {
        crate::metrics::upkeep(r, token).await;
        Ok(())
    });
    render
}

async fn start_ops(
    sup: &mut Supervisor,
    ops: &OpsArgs,
    metrics: producers::MetricsRender,
    bus: bus::Bus,
) -> anyhow::Result<()> {
    let (addr, served) = crate::ops::serve(&ops.metrics_addr, metrics, bus, sup.token()).await?;
    // Machine-readable, like the API's line, for scripts that start roles on port 0.
    println!("conveyor metrics listening on http://{addr}");
    tracing::info!(%addr, "metrics and health endpoints listening");
    sup.spawn("metrics endpoint", served);
    Ok(())
}

async fn start_api(
    sup: &mut Supervisor,
    bus: &BusArgs,
    db: &DbArgs,
    api: &ApiArgs,
    api_settings: producers::ApiSettings,
    metrics: &producers::MetricsRender,
) -> anyhow::Result<SocketAddr> {
    let mut settings = bus.settings("api")?;
    // The API answers 503 at once rather than hold requests while NATS is away or saturated.
    settings.fail_fast = true;
    settings.max_publishes_in_flight = api.limits.publish_inflight.max(1);
    let bus = BusArgs::connect_waiting(&settings, &sup.token()).await?;
    let state =
        producers::AppState::new(bus, db.lazy_pool()?, api_settings, Some(metrics.clone())).await?;
    let listener = tokio::net::TcpListener::bind(&api.http_addr)
        .await
        .with_context(|| format!("cannot listen on {} (CONVEYOR_HTTP_ADDR)", api.http_addr))?;
    let addr = listener.local_addr()?;
    // Machine-readable, for scripts and tests that start the API on port 0.
    println!("conveyor api listening on http://{addr}");
    tracing::info!(%addr, "API listening");
    let token = sup.token();
    sup.spawn("api", async move {
        producers::serve(listener, state, token).await?;
        Ok(())
    });
    Ok(addr)
}

async fn start_worker(
    sup: &mut Supervisor,
    bus: &BusArgs,
    db: &DbArgs,
    worker: &WorkerArgs,
    webhooks: &WebhookArgs,
) -> anyhow::Result<bus::Bus> {
    let bus = BusArgs::connect_waiting(&bus.settings("worker")?, &sup.token()).await?;
    let w = Worker::new(
        bus.clone(),
        Registry::builtin(),
        worker.settings(webhooks),
        Some(db.lazy_pool()?),
    );
    let token = sup.token();
    sup.spawn("worker", async move { Ok(w.run(token).await?) });
    Ok(bus)
}

async fn start_projector(
    sup: &mut Supervisor,
    bus: &BusArgs,
    db: &DbArgs,
    projector: &ProjectorArgs,
) -> anyhow::Result<bus::Bus> {
    let pool = db.migrate_waiting(&sup.token()).await?;
    let bus = BusArgs::connect_waiting(&bus.settings("projector")?, &sup.token()).await?;
    let p = Projector::new(bus.clone(), pool, projector.settings());
    let token = sup.token();
    sup.spawn("projector", async move { Ok(p.run(token).await?) });
    Ok(bus)
}

async fn start_notifier(
    sup: &mut Supervisor,
    bus: &BusArgs,
    webhooks: consumers::notifiers::webhook::WebhookSettings,
) -> anyhow::Result<bus::Bus> {
    let bus = BusArgs::connect_waiting(&bus.settings("notifier")?, &sup.token()).await?;
    let n = consumers::notifiers::webhook::WebhookNotifier::new(bus.clone(), webhooks);
    let token = sup.token();
    sup.spawn("notifier", async move { Ok(n.run(token).await?) });
    Ok(bus)
}
