//! One supervisor per process: [`consumers::supervisor::Supervisor`] running the roles until
//! SIGINT/SIGTERM or until one fails, then cancelling the others and waiting for them, within a
//! grace period.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The roles and endpoints of this process, sharing one shutdown token.
#[derive(Debug)]
pub struct Supervisor(consumers::supervisor::Supervisor<anyhow::Error>);

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    /// A supervisor whose token fires on SIGINT or SIGTERM.
    pub fn new() -> Self {
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested");
            token.cancel();
        });
        Self(consumers::supervisor::Supervisor::new(shutdown))
    }

    /// The shared shutdown token.
    pub fn token(&self) -> CancellationToken {
        self.0.token()
    }

    /// Adds a component.
    pub fn spawn<F>(&mut self, name: &str, fut: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.0.spawn(name, fut);
    }

    /// Runs until every component ended. The first failure cancels the rest; after shutdown
    /// starts, components get `grace` to finish.
    pub async fn run(self, grace: Duration) -> anyhow::Result<()> {
        self.0.run(grace).await.map_err(|failed| {
            tracing::error!(component = %failed.component, error = %format!("{:#}", failed.error), "failed");
            failed.error.context(format!("{} failed", failed.component))
        })
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("cannot listen for SIGTERM");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
