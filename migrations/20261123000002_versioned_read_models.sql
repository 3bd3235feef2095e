-- Versioned read models: each version of the projections lives in its own schema (rm_<version>),
-- and the names the API reads (jobs, job_events, job_stats) are views onto the live version. A
-- rebuild fills a new version beside the live one, then one transaction points the views at it.

CREATE SCHEMA rm_1;
ALTER TABLE jobs SET SCHEMA rm_1;
ALTER TABLE job_events SET SCHEMA rm_1;
ALTER TABLE job_stats SET SCHEMA rm_1;
CREATE VIEW jobs AS SELECT * FROM rm_1.jobs;
CREATE VIEW job_events AS SELECT * FROM rm_1.job_events;
CREATE VIEW job_stats AS SELECT * FROM rm_1.job_stats;

-- At most one live version and at most one being built.
CREATE TABLE read_model_versions (
    version    integer PRIMARY KEY,
    state      text        NOT NULL CHECK (state IN ('live', 'building')),
    from_seq   bigint      NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX read_model_versions_one_per_state ON read_model_versions (state);
INSERT INTO read_model_versions (version, state) VALUES (1, 'live');

ALTER TABLE projection_checkpoints DROP CONSTRAINT projection_checkpoints_pkey;
ALTER TABLE projection_checkpoints ADD PRIMARY KEY (projection, version);
