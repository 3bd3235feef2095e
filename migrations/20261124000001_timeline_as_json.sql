-- The timeline keeps each event's JSON as received (`json`), not converted to `jsonb`: nothing
-- queries into it, and the conversion (parsing, sorting every object's keys) was the largest
-- part of the projector's cost. Every version of the read models changes; the view is recreated
-- on the live one.
DO $$
DECLARE
    v integer;
BEGIN
    DROP VIEW IF EXISTS public.job_events;
    FOR v IN SELECT version FROM read_model_versions LOOP
        EXECUTE format('ALTER TABLE rm_%s.job_events ALTER COLUMN event TYPE json USING event::json', v);
    END LOOP;
    SELECT version INTO v FROM read_model_versions WHERE state = 'live';
    EXECUTE format('CREATE VIEW public.job_events AS SELECT * FROM rm_%s.job_events', v);
END $$;
