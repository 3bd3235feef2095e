-- Workflows in the read models: the batch a job is a member of, the jobs it depends on, whether
-- it is a batch (its id is the batch's) and when that batch was sealed, the job whose handler
-- submitted it (its parent), and the last attempt of a handler that waited for its children.
-- Every version of the read models changes (one requested but not prepared yet has no tables: it
-- is created from the live one later); no job before this had any of them, so nothing is read
-- back. Per group (a batch's members, a parent's children): one index lists them in submission
-- order, the other serves the counts by status, a filtered list, and the scheduler's check that
-- none is unended.
DO $$
DECLARE
    v integer;
BEGIN
    FOR v IN SELECT version FROM read_model_versions LOOP
        CONTINUE WHEN to_regclass(format('rm_%s.jobs', v)) IS NULL;
        EXECUTE format('ALTER TABLE rm_%s.jobs ADD COLUMN IF NOT EXISTS batch uuid', v);
        EXECUTE format('ALTER TABLE rm_%s.jobs ADD COLUMN IF NOT EXISTS depends_on jsonb', v);
        EXECUTE format('ALTER TABLE rm_%s.jobs ADD COLUMN IF NOT EXISTS is_batch boolean NOT NULL DEFAULT false', v);
        EXECUTE format('ALTER TABLE rm_%s.jobs ADD COLUMN IF NOT EXISTS sealed_at timestamptz', v);
        EXECUTE format('ALTER TABLE rm_%s.jobs ADD COLUMN IF NOT EXISTS parent uuid', v);
        EXECUTE format('ALTER TABLE rm_%s.jobs ADD COLUMN IF NOT EXISTS suspended_attempt integer', v);
        EXECUTE format('CREATE INDEX IF NOT EXISTS jobs_batch_members
                          ON rm_%s.jobs (batch, id) WHERE batch IS NOT NULL', v);
        EXECUTE format('CREATE INDEX IF NOT EXISTS jobs_batch_members_by_status
                          ON rm_%s.jobs (batch, status, id) WHERE batch IS NOT NULL', v);
        EXECUTE format('CREATE INDEX IF NOT EXISTS jobs_children
                          ON rm_%s.jobs (parent, id) WHERE parent IS NOT NULL', v);
        EXECUTE format('CREATE INDEX IF NOT EXISTS jobs_children_by_status
                          ON rm_%s.jobs (parent, status, id) WHERE parent IS NOT NULL', v);
    END LOOP;
    SELECT version INTO v FROM read_model_versions WHERE state = 'live';
    EXECUTE format('CREATE OR REPLACE VIEW public.jobs AS SELECT * FROM rm_%s.jobs', v);
END $$;
