-- The outbox packs each enqueue into one row (regua_platform::outbox): the messages
-- go in parallel arrays, so a batch of them costs one heap tuple and one index entry
-- instead of one each per message, and its payloads are compressed together once the
-- row passes the TOAST threshold. Rows waiting at the upgrade become one-message rows.
ALTER TABLE dispatch.outbox
    ADD COLUMN n            INTEGER NOT NULL DEFAULT 1,
    ADD COLUMN ids          UUID[],
    ADD COLUMN subjects     TEXT[],
    ADD COLUMN payloads     BYTEA[],
    ADD COLUMN traceparents TEXT[];
UPDATE dispatch.outbox
   SET ids = ARRAY[id], subjects = ARRAY[subject], payloads = ARRAY[payload],
       traceparents = ARRAY[traceparent];
ALTER TABLE dispatch.outbox
    DROP COLUMN id,
    DROP COLUMN subject,
    DROP COLUMN payload,
    DROP COLUMN traceparent,
    ALTER COLUMN n DROP DEFAULT,
    ALTER COLUMN ids SET NOT NULL,
    ALTER COLUMN subjects SET NOT NULL,
    ALTER COLUMN payloads SET NOT NULL,
    ALTER COLUMN traceparents SET NOT NULL,
    -- The relay reads the arrays side by side: one element per message in each.
    ADD CONSTRAINT outbox_pack CHECK (
        n > 0 AND cardinality(ids) = n AND cardinality(subjects) = n
        AND cardinality(payloads) = n AND cardinality(traceparents) = n);
-- lz4 compresses a pack of JSON payloads several times faster than the default pglz.
-- A server built without lz4 keeps its default.
DO $$
BEGIN
    ALTER TABLE dispatch.outbox ALTER COLUMN payloads SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'dispatch.outbox: lz4 is not available; payloads keep the default compression';
END
$$;
