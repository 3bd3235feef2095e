//! Cancellation: `cancel` commands become a marker in the cancels bucket (seen by a worker that
//! picks the job up later) and a broadcast (seen by the worker running it now), and each worker
//! listens to the broadcast for the jobs it runs.

use std::sync::Arc;
use std::time::Duration;

use bus::consume::{Delivery, Disposition, Pull};
use events::{streams, JobId};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Shared, PULL_EXPIRES};

/// Cancel commands taken per pull.
const BATCH: usize = 64;

/// Turns `cancel` commands into a marker and a broadcast, until `shutdown`.
pub(super) async fn canceller_loop(
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> crate::Result<()> {
    let spec = streams::canceller_consumer(shared.bus.ns(), shared.settings.ack_wait);
    let pull = Pull::new(spec, BATCH).expires(PULL_EXPIRES);
    let bus = shared.bus.clone();
    bus.consume(pull, &shutdown, move |delivery| {
        let shared = shared.clone();
        async move { cancel(&shared, delivery).await }
    })
    .await?;
    Ok(())
}

/// Marks the job of one cancel command cancelled and tells the worker running it.
async fn cancel(shared: &Shared, delivery: Delivery) -> Disposition {
    let cmd = match bus::decode_command(delivery.headers.as_ref(), &delivery.payload) {
        Ok(cmd) => cmd,
        Err(e) => {
            tracing::warn!(subject = %delivery.subject, reason = %e, "poison command terminated");
            return Disposition::Terminate;
        }
    };
    let job = cmd.job.to_string();
    let marked = shared.cancels.put(&job, "1".into()).await;
    let told = shared
        .bus
        .client()
        .publish(shared.bus.ns().cancel_broadcast(), job.into())
        .await;
    if marked.is_ok() && told.is_ok() {
        Disposition::Ack
    } else {
        Disposition::Retry(Some(Duration::from_secs(1)))
    }
}

/// Cancels jobs running in this process when a cancel broadcast names them.
pub(super) async fn cancel_listener(
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) -> crate::Result<()> {
    let mut sub = shared
        .bus
        .client()
        .subscribe(shared.bus.ns().cancel_broadcast())
        .await
        .map_err(bus::Error::core)?;
    loop {
        let msg = tokio::select! {
            m = sub.next() => m,
            _ = shutdown.cancelled() => return Ok(()),
        };
        // The subscription ends only with the connection: without it, running jobs would miss
        // their cancels, so the worker stops rather than run on deaf.
        let Some(msg) = msg else {
            return Err(bus::Error::Ended("the cancel broadcast subscription").into());
        };
        let Ok(job) = std::str::from_utf8(&msg.payload)
            .unwrap_or_default()
            .parse::<JobId>()
        else {
            continue;
        };
        if let Some(token) = shared
            .running
            .lock()
            .expect("running map poisoned")
            .get(&job)
        {
            token.cancel();
        }
    }
}
