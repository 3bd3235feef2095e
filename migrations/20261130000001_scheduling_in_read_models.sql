-- The scheduler's view of a job in its read model: its priority (for listing queued jobs in the
-- order they will start) and, while it waits, why (the latest `job.waiting` of its attempt).
-- Every version of the read models changes; the view is recreated on the live one.
DO $$
DECLARE
    v integer;
BEGIN
    FOR v IN SELECT version FROM read_model_versions LOOP
        EXECUTE format('ALTER TABLE rm_%s.jobs ADD COLUMN IF NOT EXISTS priority integer NOT NULL DEFAULT 0', v);
        EXECUTE format('ALTER TABLE rm_%s.jobs ADD COLUMN IF NOT EXISTS waiting jsonb', v);
        EXECUTE format('CREATE INDEX IF NOT EXISTS jobs_tenant_status_priority_id
                          ON rm_%s.jobs (tenant, status, priority DESC, id)', v);
    END LOOP;
    SELECT version INTO v FROM read_model_versions WHERE state = 'live';
    EXECUTE format('CREATE OR REPLACE VIEW public.jobs AS SELECT * FROM rm_%s.jobs', v);
END $$;
