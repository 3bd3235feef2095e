//! The projector: folds the EVENTS stream into the Postgres read models.
//!
//! It reads with an ordered reader ([`bus::ordered`]) starting right after the checkpoint stored in Postgres,
//! so the only state is the database: no durable consumer can drift from it. Each batch
//! (as many events as are ready, up to `batch_size`) is applied in one transaction that also
//! moves the checkpoints, with a compare-and-set on their previous values, so:
//! - a crash at any point replays from the last committed checkpoint and nothing is applied twice;
//! - two projectors running by mistake cannot both apply a batch (the loser's commit fails and it
//!   re-reads from the checkpoint).
//!
//! After each commit it sends a `NOTIFY` on [`readmodel::CHECKPOINT_CHANNEL`] with the new
//! sequence, which the API uses to answer reads of a job right after its `202`
//! (read-your-writes).
//!
//! **One active projector per database.** Several projector processes may run (for
//! availability): each first takes a session-level Postgres advisory lock on a connection of its
//! own and only the holder follows the log and runs rebuilds; the others stand by, trying again
//! every [`crate::leadership::STANDBY_POLL`]. When the leader dies its session ends, Postgres releases the lock and a
//! standby takes over from the checkpoint. A leader whose lock session fails (Postgres restarted,
//! connection cut) stops following at once and stands by too. The lock only avoids wasted work:
//! correctness still rests on the checkpoint compare-and-set, so a leader that has not yet noticed
//! it lost the lock cannot apply a batch twice.

pub mod read_models;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bus::jetstream::DeliverPolicy;
use bus::Bus;
use events::RetryPolicy;
use futures::{FutureExt, StreamExt};
use read_models::Sequenced;
use readmodel::versions::{self, VersionState};
use readmodel::{checkpoints, Projection, CHECKPOINT_CHANNEL};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// The waits before following the log again after a failure (Postgres or NATS away).
const RESTART_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(5));

/// Tuning of the projector.
#[derive(Debug, Clone)]
pub struct ProjectorSettings {
    /// Most events per transaction while following the log.
    pub batch_size: usize,
    /// Most events per transaction of a rebuild (larger: a rebuild works through a long log).
    pub rebuild_batch_size: usize,
}

impl Default for ProjectorSettings {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            rebuild_batch_size: 5000,
        }
    }
}

/// Why a batch was not applied.
#[derive(Debug, thiserror::Error)]
enum ApplyError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("checkpoint of {0} moved under us: another projector is active")]
    Conflict(&'static str),
    #[error("read-model version {0} is no longer the one this follower writes")]
    VersionChanged(i32),
    #[error(transparent)]
    Bus(#[from] bus::Error),
    #[error("the EVENTS stream starts at {first} but the checkpoint needs {wanted}: events were removed before they were projected")]
    Gap { first: u64, wanted: u64 },
}

/// What a follower maintains: the live version, or one being rebuilt beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Live,
    Build,
}

impl Role {
    fn state(self) -> VersionState {
        match self {
            Self::Live => VersionState::Live,
            Self::Build => VersionState::Building,
        }
    }
}

/// How a rebuild ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildOutcome {
    /// The new version is live; the old one was dropped.
    Switched {
        /// The version now live.
        version: i32,
    },
    /// Stopped by shutdown; run again to resume from its checkpoint.
    Interrupted,
}

/// Progress of a rebuild, reported after each batch.
#[derive(Debug, Clone, Copy)]
pub struct RebuildProgress {
    /// The version being built.
    pub version: i32,
    /// Its checkpoint.
    pub checkpoint: u64,
    /// The stream's last sequence.
    pub stream_last: u64,
    /// Events applied by this run so far.
    pub applied: u64,
}

/// Serialises rebuilders across processes (`pg_try_advisory_lock`).
const REBUILD_LOCK: i64 = 0x636f_6e76_6579_6f72; // "conveyor"

/// The leadership lock: its holder is the one active projector of the database.
pub const LEADER_LOCK: i64 = 0x636f_6e76_6c65_6164; // "convlead"

/// The projector's one-active role.
const ROLE: crate::leadership::Role = crate::leadership::Role {
    lock: LEADER_LOCK,
    name: "projector",
};

/// The projector role.
#[derive(Debug)]
pub struct Projector {
    bus: Bus,
    db: PgPool,
    settings: ProjectorSettings,
    /// The live version's checkpoint as last committed here (for the lag metrics).
    live_checkpoint: AtomicI64,
}

impl Projector {
    /// A projector from `bus` into `db` (migrated).
    pub fn new(bus: Bus, db: PgPool, settings: ProjectorSettings) -> Self {
        Self {
            bus,
            db,
            settings,
            live_checkpoint: AtomicI64::new(-1),
        }
    }

    /// Keeps the lag gauges current (`conveyor_projection_lag_events` and `_seconds`), also
    /// while the projector is stuck (Postgres down), until `shutdown`.
    async fn report_lag(&self, shutdown: &CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = shutdown.cancelled() => return,
            }
            let checkpoint = self.live_checkpoint.load(Ordering::Relaxed);
            let Ok(checkpoint) = u64::try_from(checkpoint) else {
                continue;
            };
            // Fetching the handle reads the stream's info.
            let Ok(stream) = self.bus.events_stream().await else {
                continue;
            };
            let info = stream.cached_info();
            let lag = info.state.last_sequence.saturating_sub(checkpoint);
            // Age of the oldest event not applied yet: when it was stored.
            let age = if lag == 0 {
                0.0
            } else {
                match stream.direct_get(checkpoint + 1).await {
                    Ok(m) => {
                        let stored = m.time.unix_timestamp_nanos() as f64 / 1e9;
                        let now =
                            chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) as f64 / 1e9;
                        (now - stored).max(0.0)
                    }
                    Err(_) => continue,
                }
            };
            for p in Projection::ALL {
                let name = p.as_str();
                metrics::gauge!("conveyor_projection_lag_events", "projection" => name)
                    .set(lag as f64);
                metrics::gauge!("conveyor_projection_lag_seconds", "projection" => name).set(age);
            }
        }
    }

    /// Runs until `shutdown`: follows EVENTS into the live version, and builds a new version
    /// when one is requested (`conveyor replay`, `POST /v1/admin/projections/{name}/rebuild`).
    /// Failures (NATS or Postgres down) are retried with backoff from the last checkpoint; only a
    /// gap in the stream stops it.
    ///
    /// Only one projector per database works at a time (see the module documentation): this one
    /// stands by until it holds the leadership lock, and goes back to standing by if it loses it.
    pub async fn run(self, shutdown: CancellationToken) -> crate::Result<()> {
        self.bus.provision_streams().await?;
        let lead = async {
            loop {
                let Some(mut lock) = ROLE.lead(&self.db, &shutdown).await else {
                    return Ok::<(), crate::Error>(());
                };
                let term = shutdown.child_token();
                let work = self.work(&term);
                tokio::pin!(work);
                let result = tokio::select! {
                    r = &mut work => r,
                    () = crate::leadership::watch(&mut lock) => {
                        // Lost: stop as on shutdown (the batch in hand is committed or fails its
                        // compare-and-set), then stand by.
                        term.cancel();
                        work.await
                    }
                };
                term.cancel();
                ROLE.resign(lock).await;
                self.live_checkpoint.store(-1, Ordering::Relaxed);
                result?;
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                tracing::warn!(
                    "projector lost its leadership lock (its Postgres session ended); standing by"
                );
            }
        };
        let (result, ()) = tokio::join!(lead, self.report_lag(&shutdown));
        result
    }

    /// What the active projector does until `shutdown`: follow the log, build requested versions.
    async fn work(&self, shutdown: &CancellationToken) -> crate::Result<()> {
        let builder = async {
            while !shutdown.is_cancelled() {
                if let Ok(Some(version)) = versions::building(&self.db).await {
                    match self.rebuild(version, shutdown, |_| {}).await {
                        Ok(Some(outcome)) => tracing::info!(?outcome, "rebuild ended"),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "rebuild interrupted; will resume"),
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        };
        let live = self.follow_with_retries(Role::Live, shutdown);
        let (live, ()) = tokio::join!(live, builder);
        live
    }

    async fn follow_with_retries(
        &self,
        role: Role,
        shutdown: &CancellationToken,
    ) -> crate::Result<()> {
        let mut backoff = RESTART_RETRY.backoff();
        loop {
            let delay = match self.follow(role, shutdown, &mut |_| {}).await {
                Ok(_) => return Ok(()),
                Err(ApplyError::Gap { first, wanted }) => {
                    let e = crate::Error::Gap { first, wanted };
                    tracing::error!(error = %e, "projector stopped");
                    return Err(e);
                }
                Err(ApplyError::VersionChanged(v)) => {
                    tracing::info!(
                        old_version = v,
                        "read models switched version; following the new one"
                    );
                    // The new version is there already: start over at the shortest wait.
                    backoff.reset();
                    Duration::from_millis(50)
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "projector restarting from its checkpoint");
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// Builds the requested `version` (creating its tables if needed) until it catches up with
    /// the stream, then switches reads to it and drops the old version. `None` if another process
    /// holds the rebuild lock. Interrupted builds resume from their own checkpoint.
    pub async fn rebuild(
        &self,
        version: i32,
        shutdown: &CancellationToken,
        mut progress: impl FnMut(RebuildProgress),
    ) -> crate::Result<Option<RebuildOutcome>> {
        let mut lock = self.db.acquire().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(REBUILD_LOCK)
            .fetch_one(&mut *lock)
            .await?;
        if !locked {
            return Ok(None);
        }
        let result = async {
            prepare_version(&self.db, version).await?;
            let mut backoff = RESTART_RETRY.backoff();
            loop {
                let delay = backoff.next_delay();
                match self.follow(Role::Build, shutdown, &mut progress).await {
                    Ok(Some(v)) => return Ok(RebuildOutcome::Switched { version: v }),
                    Ok(None) => return Ok(RebuildOutcome::Interrupted),
                    Err(ApplyError::Gap { first, wanted }) => {
                        return Err(crate::Error::Gap { first, wanted })
                    }
                    Err(ApplyError::VersionChanged(v)) => {
                        return Err(crate::Error::VersionChanged(v))
                    }
                    Err(e) => tracing::warn!(error = %e, retry_in = ?delay, "rebuild restarting from its checkpoint"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Ok(RebuildOutcome::Interrupted),
                }
            }
        }
        .await;
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(REBUILD_LOCK)
            .execute(&mut *lock)
            .await;
        result.map(Some)
    }

    /// Follows EVENTS into the version `role` designates. Returns `Ok(None)` on shutdown, and
    /// for a build `Ok(Some(version))` once it caught up and switched reads to it.
    async fn follow(
        &self,
        role: Role,
        shutdown: &CancellationToken,
        progress: &mut impl FnMut(RebuildProgress),
    ) -> Result<Option<i32>, ApplyError> {
        let version = versions::in_state(&self.db, role.state())
            .await?
            .ok_or(ApplyError::VersionChanged(0))?;
        let mut cps = checkpoints::of_version(&self.db, version).await?;
        let start = Projection::ALL
            .iter()
            .map(|p| cps.get(p).copied().unwrap_or(0))
            .min()
            .unwrap_or(0)
            + 1;
        if role == Role::Live {
            self.live_checkpoint.store(start - 1, Ordering::Relaxed);
        }
        // Fetching the handle reads the stream's info.
        let stream = self.bus.events_stream().await?;
        let state = stream.cached_info().state.clone();
        let wanted = u64::try_from(start).unwrap_or(1);
        if state.messages > 0 && state.first_sequence > wanted {
            return Err(ApplyError::Gap {
                first: state.first_sequence,
                wanted,
            });
        }
        if role == Role::Build && state.last_sequence < wanted {
            // Nothing left to replay: switch as soon as the live version is not ahead.
            loop {
                if let Some(v) = self.switch(version).await? {
                    return Ok(Some(v));
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = shutdown.cancelled() => return Ok(None),
                }
            }
        }
        let (messages, _) = bus::ordered::ordered(
            stream,
            self.bus.ns().all_events(),
            DeliverPolicy::ByStartSequence {
                start_sequence: wanted,
            },
        )
        .await?;
        tracing::info!(
            from_seq = wanted,
            version,
            role = role.state().as_str(),
            "projector following EVENTS"
        );
        // A reader task fetches and decodes the next batch while this one is written, so
        // Postgres and the rest of the work overlap.
        let (tx, mut batches) = tokio::sync::mpsc::channel(1);
        let size = match role {
            Role::Live => self.settings.batch_size,
            Role::Build => self.settings.rebuild_batch_size,
        }
        .max(1);
        let reader = AbortOnDrop(tokio::spawn(read_batches(messages, size, tx)));
        let mut applied = 0u64;
        loop {
            let next = tokio::select! {
                b = batches.recv() => b,
                _ = shutdown.cancelled() => return Ok(None),
            };
            let Some(next) = next else {
                return Err(bus::Error::Ended("the event stream").into());
            };
            let Decoded {
                events,
                last,
                pending,
                count,
            } = next?;
            self.apply(role, version, &mut cps, &events, last).await?;
            applied += count;
            if role == Role::Build {
                let checkpoint = u64::try_from(last).unwrap_or(0);
                progress(RebuildProgress {
                    version,
                    checkpoint,
                    stream_last: checkpoint + pending,
                    applied,
                });
                // Past the end the stream had when this run started, and near its end now:
                // switch if this version has reached the live one (checked under lock, so reads
                // never go back in time); else go on.
                if checkpoint >= state.last_sequence && pending < size as u64 {
                    if let Some(v) = self.switch(version).await? {
                        drop(reader);
                        return Ok(Some(v));
                    }
                }
            }
        }
    }

    /// Points the read-model views at `version`, makes it live and drops the old live version,
    /// if `version` has applied at least what the live one has (`None` otherwise: not yet).
    /// Waits for the live projector's batch in flight (it holds its version row `FOR SHARE`),
    /// and holds the live one back while it compares.
    async fn switch(&self, version: i32) -> Result<Option<i32>, ApplyError> {
        create_indexes(&self.db, version).await?;
        let mut tx = self.db.begin().await?;
        let old: Option<i32> = sqlx::query_scalar(
            "SELECT version FROM read_model_versions WHERE state = 'live' FOR UPDATE",
        )
        .fetch_optional(&mut *tx)
        .await?;
        let building: Option<i32> = sqlx::query_scalar(
            "SELECT version FROM read_model_versions WHERE version = $1 AND state = 'building' FOR UPDATE",
        )
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?;
        if building.is_none() {
            return Err(ApplyError::VersionChanged(version));
        }
        let checkpoint = |v: Option<i32>| {
            sqlx::query_scalar::<_, Option<i64>>(
                "SELECT min(last_seq) FROM projection_checkpoints WHERE version = $1",
            )
            .bind(v)
        };
        let built = checkpoint(Some(version))
            .fetch_one(&mut *tx)
            .await?
            .unwrap_or(0);
        let live = checkpoint(old).fetch_one(&mut *tx).await?.unwrap_or(0);
        if built < live {
            return Ok(None);
        }
        let schema = readmodel::schema(version);
        if let Some(old) = old {
            sqlx::query("DELETE FROM read_model_versions WHERE version = $1")
                .bind(old)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM projection_checkpoints WHERE version = $1")
                .bind(old)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE read_model_versions SET state = 'live' WHERE version = $1")
            .bind(version)
            .execute(&mut *tx)
            .await?;
        for table in Projection::ALL {
            sqlx::query(&format!(
                "CREATE OR REPLACE VIEW public.{table} AS SELECT * FROM {schema}.{table}"
            ))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        if let Some(old) = old.filter(|o| *o != version) {
            // Nothing reads the old version any more: the views moved, and DROP waits for
            // queries still running on it. The switch is done either way; a failed drop only
            // leaves an unused schema behind.
            let schema = readmodel::schema(old);
            if let Err(e) = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&self.db)
                .await
            {
                tracing::warn!(error = %e, schema, "old read-model version not dropped; drop it by hand");
            }
        }
        tracing::info!(version, "read models switched to the rebuilt version");
        Ok(Some(version))
    }

    async fn apply(
        &self,
        role: Role,
        version: i32,
        cps: &mut HashMap<Projection, i64>,
        events: &[Sequenced],
        last: i64,
    ) -> Result<(), ApplyError> {
        let cp = |p: Projection| cps.get(&p).copied().unwrap_or(0);
        let mut tx = self.db.begin().await?;
        // No wait for the WAL flush: the checkpoint commits with the writes, so a batch lost
        // to a Postgres crash takes its checkpoint with it and is applied again from the log.
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        // Still the version this follower writes? Holding the row `FOR SHARE` makes a switch
        // wait for this batch, so no batch lands in a version after it was retired.
        let still: Option<String> = sqlx::query_scalar(
            "SELECT state FROM read_model_versions WHERE version = $1 FOR SHARE",
        )
        .bind(version)
        .fetch_optional(&mut *tx)
        .await?;
        if still.as_deref() != Some(role.state().as_str()) {
            return Err(ApplyError::VersionChanged(version));
        }
        let started = std::time::Instant::now();
        // Live: one span per event, in the trace of the job it belongs to, covering the
        // transaction that applies it. (Rebuilds are not part of any job's life: no spans.)
        let _spans: Vec<tracing::Span> = if role == Role::Live {
            events
                .iter()
                .map(|Sequenced { seq, ev, .. }| {
                    let span = tracing::info_span!("project", otel.kind = "consumer",
                        job_id = %ev.job, tenant = %ev.tenant, event = ev.payload.name(),
                        seq, trace_id = tracing::field::Empty);
                    bus::trace::continue_trace(&span, ev.traceparent.as_ref());
                    span
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut ids: Vec<uuid::Uuid> = events.iter().map(|e| e.ev.job.0).collect();
        ids.sort_unstable();
        ids.dedup();
        let before = readmodel::jobs::load(&mut tx, version, &ids).await?;
        let batch = read_models::fold(
            before,
            events,
            cp(Projection::Jobs),
            cp(Projection::JobEvents),
        );
        read_models::write(&mut tx, &readmodel::schema(version), &batch).await?;
        // Every checkpoint moves (compare-and-set on its previous value) and, live, the API is
        // told of the new one: one statement.
        let olds: Vec<i64> = Projection::ALL.into_iter().map(cp).collect();
        let (moved, _told): (i64, i64) = sqlx::query_as(
            "WITH moved AS (
               UPDATE projection_checkpoints c SET last_seq = greatest(v.old, $3), updated_at = now()
               FROM unnest($1::text[], $2::int8[]) AS v(name, old)
               WHERE c.projection = v.name AND c.version = $4 AND c.last_seq = v.old
               RETURNING 1),
             told AS (SELECT pg_notify($5, $3::text) WHERE $6)
             SELECT (SELECT count(*) FROM moved), (SELECT count(*) FROM told)",
        )
        .bind(&Projection::ALL.map(Projection::as_str)[..])
        .bind(&olds)
        .bind(last)
        .bind(version)
        .bind(CHECKPOINT_CHANNEL)
        .bind(role == Role::Live)
        .fetch_one(&mut *tx)
        .await?;
        if moved != Projection::ALL.len() as i64 {
            return Err(ApplyError::Conflict("projection_checkpoints"));
        }
        tx.commit().await?;
        let moved = Projection::ALL.map(|p| (p, last.max(cp(p))));
        cps.extend(moved);
        if role == Role::Live {
            let checkpoint = Projection::ALL
                .iter()
                .filter_map(|p| cps.get(p).copied())
                .min()
                .unwrap_or(last);
            self.live_checkpoint.store(checkpoint, Ordering::Relaxed);
            for p in Projection::ALL {
                metrics::gauge!("conveyor_projection_checkpoint", "projection" => p.as_str())
                    .set(checkpoint as f64);
            }
            metrics::histogram!("conveyor_projector_batch_events").record(events.len() as f64);
            metrics::histogram!("conveyor_projector_batch_seconds")
                .record(started.elapsed().as_secs_f64());
            for f in &batch.finished {
                metrics::counter!("conveyor_jobs_finished_total",
                    "kind" => f.kind.clone(), "status" => f.status.as_str())
                .increment(1);
                metrics::histogram!("conveyor_job_latency_seconds", "kind" => f.kind.clone())
                    .record(f.latency.as_secs_f64());
            }
        }
        Ok(())
    }
}

/// Creates the tables and checkpoints of `version` if they do not exist yet (idempotent, so an
/// interrupted build resumes).
async fn prepare_version(db: &PgPool, version: i32) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    let live = versions::live(&mut *tx).await?;
    let from_seq: i64 =
        sqlx::query_scalar("SELECT from_seq FROM read_model_versions WHERE version = $1")
            .bind(version)
            .fetch_one(&mut *tx)
            .await?;
    let (schema, live_schema) = (readmodel::schema(version), readmodel::schema(live));
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(&mut *tx)
        .await?;
    for table in Projection::ALL {
        // The new tables get their primary keys now (upserts need them), their other indexes
        // once filled (`create_indexes`): building an index over the rows at the end costs a
        // fraction of keeping it up to date row by row.
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {schema}.{table}
               (LIKE {live_schema}.{table} INCLUDING ALL EXCLUDING INDEXES)"
        ))
        .execute(&mut *tx)
        .await?;
        let has_key: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_constraint
               WHERE conrelid = to_regclass($1) AND contype = 'p')",
        )
        .bind(format!("{schema}.{table}"))
        .fetch_one(&mut *tx)
        .await?;
        if !has_key {
            let key: String = sqlx::query_scalar(
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint
                 WHERE conrelid = to_regclass($1) AND contype = 'p'",
            )
            .bind(format!("{live_schema}.{table}"))
            .fetch_one(&mut *tx)
            .await?;
            sqlx::query(&format!("ALTER TABLE {schema}.{table} ADD {key}"))
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO projection_checkpoints (projection, version, last_seq) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(table.as_str())
        .bind(version)
        .bind(from_seq - 1)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Gives the tables of `version` the indexes the live version's tables have (besides their
/// primary keys, which they have from the start); idempotent.
async fn create_indexes(db: &PgPool, version: i32) -> sqlx::Result<()> {
    let live = versions::in_state(db, VersionState::Live).await?;
    let Some(live) = live.filter(|l| *l != version) else {
        return Ok(());
    };
    let (schema, live_schema) = (readmodel::schema(version), readmodel::schema(live));
    let defs: Vec<String> = sqlx::query_scalar(
        "SELECT i.indexdef FROM pg_indexes i
         WHERE i.schemaname = $1 AND NOT EXISTS (
           SELECT 1 FROM pg_constraint c
           WHERE c.conindid = to_regclass(i.schemaname || '.' || i.indexname) AND c.contype = 'p')",
    )
    .bind(&live_schema)
    .fetch_all(db)
    .await?;
    for def in defs {
        // `CREATE [UNIQUE] INDEX name ON rm_<live>.table …`: the same on the new version's table.
        let def = def
            .replacen(" INDEX ", " INDEX IF NOT EXISTS ", 1)
            .replacen(&format!(" ON {live_schema}."), &format!(" ON {schema}."), 1);
        sqlx::query(&def).execute(db).await?;
    }
    Ok(())
}

/// A decoded batch: its events, the sequence of its last message, how many messages the stream
/// had after it, and how many messages it had (poison included).
struct Decoded {
    events: Vec<Sequenced>,
    last: i64,
    pending: u64,
    count: u64,
}

/// Aborts a task when dropped (the batch reader ends with its follower).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads batches of up to `size` messages and hands them on decoded, until the follower stops
/// listening or the stream fails (the failure is handed on).
async fn read_batches(
    mut messages: impl futures::Stream<Item = bus::Result<bus::jetstream::Message>> + Unpin,
    size: usize,
    tx: tokio::sync::mpsc::Sender<Result<Decoded, ApplyError>>,
) {
    loop {
        let Some(first) = messages.next().await else {
            let _ = tx
                .send(Err(bus::Error::Ended("the event stream").into()))
                .await;
            return;
        };
        let first = match first {
            Ok(m) => m,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let mut batch = vec![first];
        // Fill the batch while the stream has more (every transaction costs a commit, so a
        // backlog is worked off in large ones); once caught up, take only what is already here
        // and commit at once (low latency when the load is light).
        while batch.len() < size {
            let more = batch
                .last()
                .and_then(|m| m.info().ok())
                .is_some_and(|i| i.pending > 0);
            let next = if more {
                tokio::time::timeout(Duration::from_millis(100), messages.next())
                    .await
                    .ok()
                    .flatten()
            } else {
                messages.next().now_or_never().flatten()
            };
            match next {
                Some(Ok(m)) => batch.push(m),
                Some(Err(e)) => {
                    // The reader goes on after an error; this batch ends here.
                    tracing::warn!(error = %e, "reading EVENTS failed");
                    break;
                }
                None => break,
            }
        }
        let decoded = decode_batch(&batch).map(|(events, last, pending)| Decoded {
            events,
            last,
            pending,
            count: batch.len() as u64,
        });
        if tx.send(decoded).await.is_err() {
            return;
        }
    }
}

/// Decodes a batch and returns it with the sequence of its last message and how many messages
/// the stream had after it. Poison (not a conveyor CloudEvent) is skipped with a logged reason;
/// the checkpoint still moves past it.
fn decode_batch(
    batch: &[bus::jetstream::Message],
) -> Result<(Vec<Sequenced>, i64, u64), ApplyError> {
    let mut out = Vec::with_capacity(batch.len());
    let (mut last, mut pending) = (0, 0);
    for msg in batch {
        let info = msg.info().map_err(bus::Error::consumer)?;
        last = i64::try_from(info.stream_sequence).unwrap_or(i64::MAX);
        pending = info.pending;
        match bus::decode(msg.headers.as_ref(), &msg.payload) {
            // In structured mode the CloudEvent JSON is stored as received.
            Ok(decoded) => out.push(Sequenced {
                seq: last,
                ev: decoded.envelope,
                json: decoded.json,
            }),
            Err(e) => {
                tracing::warn!(seq = last, subject = %msg.subject, reason = %e, "poison event skipped")
            }
        }
    }
    Ok((out, last, pending))
}
