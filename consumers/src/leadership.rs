//! One active process among several: a Postgres advisory lock held by a session of its own. The
//! holder is active for as long as that session lives; when the process dies, Postgres ends the
//! session, releases the lock, and a standby polling for it takes over. A holder whose session
//! fails (Postgres restarted, the network cut) notices within a second or so and stops.

use std::time::Duration;

use sqlx::{Connection as _, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

/// How often a standby tries to take the lock.
pub const STANDBY_POLL: Duration = Duration::from_secs(1);

/// How often the holder checks that its session is alive.
const CHECK: Duration = Duration::from_secs(1);

/// A role with one active process: its advisory lock and its name in logs and metrics.
#[derive(Debug, Clone, Copy)]
pub struct Role {
    /// The advisory lock's key.
    pub lock: i64,
    /// `projector`, `scheduler`: names the log lines and the `conveyor_<name>_leader` gauge.
    pub name: &'static str,
}

impl Role {
    fn gauge(&self, value: f64) {
        metrics::gauge!(format!("conveyor_{}_leader", self.name)).set(value);
    }

    /// Waits until this process holds the lock (`None`: `shutdown` came first). The lock lives
    /// in a session of its own, outside the pool, so it is held exactly as long as that
    /// connection.
    pub async fn lead(&self, db: &PgPool, shutdown: &CancellationToken) -> Option<PgConnection> {
        self.gauge(0.0);
        let mut told = false;
        loop {
            match try_lock(db, self.lock).await {
                Ok(Some(conn)) => {
                    tracing::info!(
                        "{} is the active one (holds the leadership lock)",
                        self.name
                    );
                    self.gauge(1.0);
                    return Some(conn);
                }
                Ok(None) if !told => {
                    tracing::info!(
                        "another {} is active; standing by to take over when it stops",
                        self.name
                    );
                    told = true;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(role = self.name, error = %e, retry_in = ?STANDBY_POLL, "cannot take the leadership lock")
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(STANDBY_POLL) => {}
                _ = shutdown.cancelled() => return None,
            }
        }
    }

    /// Gives the lock up at once for a standby (closing its session).
    pub async fn resign(&self, lock: PgConnection) {
        let _ = lock.close().await;
        self.gauge(0.0);
    }
}

/// A connection of its own holding the lock, or `None` if another session holds it.
async fn try_lock(db: &PgPool, key: i64) -> sqlx::Result<Option<PgConnection>> {
    let mut conn = db.acquire().await?.detach();
    // Postgres learns within about 30 s that a holder's network is gone (not after the system's
    // two hours), and frees the lock for a standby.
    for setting in [
        "SET tcp_keepalives_idle = 10",
        "SET tcp_keepalives_interval = 5",
        "SET tcp_keepalives_count = 4",
    ] {
        sqlx::query(setting).execute(&mut conn).await?;
    }
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut conn)
        .await?;
    if locked {
        Ok(Some(conn))
    } else {
        let _ = conn.close().await;
        Ok(None)
    }
}

/// Returns once the session holding the lock fails: then this process is no longer the active
/// one (another may have taken the lock already).
pub async fn watch(lock: &mut PgConnection) {
    loop {
        tokio::time::sleep(CHECK).await;
        let alive = tokio::time::timeout(Duration::from_secs(5), lock.ping()).await;
        if !matches!(alive, Ok(Ok(()))) {
            return;
        }
    }
}
