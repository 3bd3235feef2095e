-- The scheduler's view of a job in its read model: its priority (for listing queued jobs in the
-- order they will start) and, while it waits, why (the latest `job.waiting` of its attempt).
-- Every version of the read models changes (one requested but not prepared yet has no tables:
-- it is created from the live one later); priorities of jobs submitted before are read back from
-- their `job.submitted`, so the live version equals a rebuild; the view is recreated on the live
-- version. The index covers queued jobs only: small, and quick to build.
DO $$
DECLARE
    v integer;
BEGIN
    FOR v IN SELECT version FROM read_model_versions LOOP
        CONTINUE WHEN to_regclass(format('rm_%s.jobs', v)) IS NULL;
        EXECUTE format('ALTER TABLE rm_%s.jobs ADD COLUMN IF NOT EXISTS priority integer NOT NULL DEFAULT 0', v);
        EXECUTE format('ALTER TABLE rm_%s.jobs ADD COLUMN IF NOT EXISTS waiting jsonb', v);
        EXECUTE format($q$
            UPDATE rm_%1$s.jobs j SET priority = (e.event::jsonb #>> '{data,priority}')::integer
            FROM rm_%1$s.job_events e
            WHERE e.job_id = j.id AND e.type = 'submitted'
              AND e.event::jsonb #>> '{data,priority}' IS NOT NULL$q$, v);
        EXECUTE format('CREATE INDEX IF NOT EXISTS jobs_queued_in_start_order
                          ON rm_%s.jobs (tenant, (-priority), id) WHERE status = ''queued''', v);
    END LOOP;
    SELECT version INTO v FROM read_model_versions WHERE state = 'live';
    EXECUTE format('CREATE OR REPLACE VIEW public.jobs AS SELECT * FROM rm_%s.jobs', v);
END $$;
