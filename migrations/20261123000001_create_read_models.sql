-- Read models built by the projector from the EVENTS stream. Nothing else writes them.

-- Current state of each job.
CREATE TABLE jobs (
    id           uuid PRIMARY KEY,
    tenant       text        NOT NULL,
    kind         text        NOT NULL,
    status       text        NOT NULL,
    attempt      integer     NOT NULL DEFAULT 0,
    max_attempts integer     NOT NULL,
    timeout_ms   bigint      NOT NULL,
    payload      jsonb       NOT NULL,
    progress     jsonb,
    result       jsonb,
    result_ref   jsonb,
    error        jsonb,
    webhook_url  text,
    run_at       timestamptz,
    trace_id     text,
    created_at   timestamptz NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz,
    updated_at   timestamptz NOT NULL,
    last_seq     bigint      NOT NULL
);
-- Keyset pagination, newest first (ids are UUIDv7, so id order is creation order).
CREATE INDEX jobs_tenant_id ON jobs (tenant, id DESC);
CREATE INDEX jobs_tenant_status_id ON jobs (tenant, status, id DESC);
CREATE INDEX jobs_tenant_kind_id ON jobs (tenant, kind, id DESC);

-- Every event of every job, keyed by its EVENTS stream sequence: the timeline.
CREATE TABLE job_events (
    seq    bigint PRIMARY KEY,
    job_id uuid        NOT NULL,
    tenant text        NOT NULL,
    type   text        NOT NULL,
    time   timestamptz NOT NULL,
    event  jsonb       NOT NULL
);
CREATE INDEX job_events_job ON job_events (job_id, seq);

-- Counts and run time per tenant, kind and status.
CREATE TABLE job_stats (
    tenant            text   NOT NULL,
    kind              text   NOT NULL,
    status            text   NOT NULL,
    count             bigint NOT NULL,
    total_duration_ms bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, kind, status)
);

-- One row per projection: the last EVENTS sequence applied, moved in the same transaction as
-- the projection's writes, so a redelivered or replayed event is applied at most once.
CREATE TABLE projection_checkpoints (
    projection text PRIMARY KEY,
    version    integer     NOT NULL DEFAULT 1,
    last_seq   bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO projection_checkpoints (projection) VALUES ('jobs'), ('job_events'), ('job_stats');
