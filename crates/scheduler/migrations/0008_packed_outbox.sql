-- Reissued: this migration packed the outbox table into one row per enqueue. The
-- outbox is the platform's now (regua_platform::outbox::migrate creates it in that
-- shape); databases that applied the earlier text keep what it did.
SELECT 1;
