-- Less work per row for intake's writes.
--
-- 1. No foreign key from customers and invoices to tenants. Postgres checked it per
--    inserted row, as a query that also share-locks the tenant's row: one tenant's
--    rows written by two batches (or replicas) at once turned that lock into a
--    multixact, every batch. In a profile of intake at full speed (taken with
--    executor instrumentation on, which inflates it) the checks were 15% of Postgres'
--    time. Intake never writes a row for a tenant it has not found (an unknown tenant
--    is rejected with `unknown_tenant` before anything is stored), and tenants are
--    never deleted.
ALTER TABLE intake.customers DROP CONSTRAINT customers_tenant_fkey;
ALTER TABLE intake.invoices DROP CONSTRAINT invoices_tenant_fkey;

-- 2. Keys compare byte by byte, as the scheduler's have since its migration 0006.
--    Tenant, customer, invoice and message ids are opaque; under the database's
--    linguistic collation every comparison of two of them in an index went through
--    the locale's rules (a tenth of Postgres' time in the same profile). Nothing
--    sorts them for display.
ALTER TABLE intake.tenants ALTER COLUMN id TYPE text COLLATE "C";
ALTER TABLE intake.customers ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN customer_id TYPE text COLLATE "C";
ALTER TABLE intake.invoices ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN invoice_id TYPE text COLLATE "C",
    ALTER COLUMN customer_id TYPE text COLLATE "C";
ALTER TABLE intake.messages ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN message_id TYPE text COLLATE "C";

-- Reissued: a third part compressed the outbox's other arrays with lz4; the platform's
-- outbox migration does that now for every service.
