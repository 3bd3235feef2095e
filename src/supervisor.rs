//! One supervisor per process: runs its components until SIGINT/SIGTERM or until one fails,
//! then cancels the others and waits for them, within a grace period.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A set of components sharing one shutdown token.
#[derive(Debug)]
pub struct Supervisor {
    shutdown: CancellationToken,
    tasks: JoinSet<(String, anyhow::Result<()>)>,
}

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
        Self {
            shutdown,
            tasks: JoinSet::new(),
        }
    }

    /// The shared shutdown token.
    pub fn token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Adds a component.
    pub fn spawn<F>(&mut self, name: &str, fut: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let name = name.to_owned();
        self.tasks.spawn(async move { (name, fut.await) });
    }

    /// Runs until every component ended. The first failure cancels the rest; after shutdown
    /// starts, components get `grace` to finish.
    pub async fn run(mut self, grace: Duration) -> anyhow::Result<()> {
        let mut first_error = None;
        loop {
            let joined = if self.shutdown.is_cancelled() {
                match tokio::time::timeout(grace, self.tasks.join_next()).await {
                    Ok(j) => j,
                    Err(_) => {
                        tracing::warn!(
                            remaining_tasks = self.tasks.len(),
                            "grace period over; aborting"
                        );
                        self.tasks.abort_all();
                        break;
                    }
                }
            } else {
                self.tasks.join_next().await
            };
            let Some(joined) = joined else { break };
            let (name, result) = joined.context("a component panicked")?;
            match result {
                Ok(()) => tracing::debug!(component = %name, "stopped"),
                Err(e) => {
                    tracing::error!(component = %name, error = %format!("{e:#}"), "failed");
                    first_error.get_or_insert(e.context(format!("{name} failed")));
                }
            }
            // Whatever ends first (an error or a clean stop) brings the others down.
            self.shutdown.cancel();
        }
        first_error.map_or(Ok(()), Err)
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
