//! One supervisor for every set of components sharing a shutdown token: the `conveyor` binary's
//! roles, and the loops inside the worker and the notifier.
//!
//! Components run until they all ended, until shutdown, or until one fails: whichever ends
//! first (a failure, a panic or a clean stop) cancels the others. After shutdown starts, the
//! others get a grace period, then are aborted.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A set of components sharing one shutdown token.
#[derive(Debug)]
pub struct Supervisor<E> {
    shutdown: CancellationToken,
    tasks: JoinSet<(String, Result<(), E>)>,
}

/// A component panicked.
#[derive(Debug, thiserror::Error)]
#[error("panicked: {0}")]
pub struct Panicked(pub(crate) String);

/// The first component that failed, and how.
#[derive(Debug, thiserror::Error)]
#[error("{component} failed")]
pub struct ComponentFailed<E> {
    /// The component's name.
    pub component: String,
    /// Its error.
    #[source]
    pub error: E,
}

impl<E> Supervisor<E>
where
    E: From<Panicked> + std::fmt::Display + Send + 'static,
{
    /// A supervisor of components that stop when `shutdown` fires.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            shutdown,
            tasks: JoinSet::new(),
        }
    }

    /// The shared shutdown token.
    pub fn token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Adds a component; a panic in it counts as its failure.
    pub fn spawn<F>(&mut self, name: &str, fut: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let name = name.to_owned();
        self.tasks.spawn(async move {
            let result = AssertUnwindSafe(fut)
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| Err(Panicked(panic_message(panic.as_ref())).into()));
            (name, result)
        });
    }

    /// Runs until every component ended; returns the first failure. After shutdown starts,
    /// components get `grace` to finish (`Duration::MAX`: as long as they take). Failures after
    /// the first are logged here, the first is the caller's to report.
    pub async fn run(mut self, grace: Duration) -> Result<(), ComponentFailed<E>> {
        let mut first = None;
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
            let Ok((component, result)) = joined else {
                // Only aborted tasks end without their result, and none is aborted here.
                continue;
            };
            match result {
                Ok(()) => tracing::debug!(component = %component, "stopped"),
                Err(error) if first.is_none() => first = Some(ComponentFailed { component, error }),
                Err(error) => {
                    tracing::error!(component = %component, error = %format!("{error:#}"), "failed")
                }
            }
            self.shutdown.cancel();
        }
        first.map_or(Ok(()), Err)
    }
}

/// The text of a panic's payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Failure(String);

    impl From<Panicked> for Failure {
        fn from(p: Panicked) -> Self {
            Self(p.to_string())
        }
    }

    #[tokio::test]
    async fn the_first_failure_stops_the_others() {
        let mut sup = Supervisor::<Failure>::new(CancellationToken::new());
        let token = sup.token();
        sup.spawn("waits", async move {
            token.cancelled().await;
            Ok(())
        });
        sup.spawn("fails", async { Err(Failure("boom".into())) });
        let failed = sup.run(Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(failed.component, "fails");
        assert_eq!(failed.error.to_string(), "boom");
    }

    #[tokio::test]
    async fn a_panic_is_a_failure() {
        let mut sup = Supervisor::<Failure>::new(CancellationToken::new());
        sup.spawn("panics", async { panic!("oops") });
        let failed = sup.run(Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(failed.error.to_string(), "panicked: oops");
    }

    #[tokio::test(start_paused = true)]
    async fn stragglers_are_aborted_after_the_grace_period() {
        let mut sup = Supervisor::<Failure>::new(CancellationToken::new());
        sup.spawn("stops", async { Ok(()) });
        sup.spawn("ignores shutdown", std::future::pending());
        assert!(sup.run(Duration::from_secs(1)).await.is_ok());
    }
}
