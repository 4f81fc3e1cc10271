-- Keys compare byte by byte.
--
-- Tenant, customer and invoice ids are opaque identifiers. Under the database's
-- linguistic collation every comparison of two of them in an index (a claim's probes,
-- the rewritten invoice's three index entries, the step log's and the ledger's) went
-- through the locale's rules; with "C" it is a memcmp. The order the scheduler relies
-- on was already byte order (a customer's invoices at one instant are decided in
-- invoice id order, `COLLATE "C"`, as the preview simulates them).
ALTER TABLE scheduler.policies ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN name TYPE text COLLATE "C";
ALTER TABLE scheduler.tenants ALTER COLUMN id TYPE text COLLATE "C";
ALTER TABLE scheduler.customers ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN customer_id TYPE text COLLATE "C";
ALTER TABLE scheduler.invoices ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN invoice_id TYPE text COLLATE "C",
    ALTER COLUMN customer_id TYPE text COLLATE "C",
    ALTER COLUMN policy TYPE text COLLATE "C";
ALTER TABLE scheduler.step_log ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN invoice_id TYPE text COLLATE "C";
ALTER TABLE scheduler.contacts ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN customer_id TYPE text COLLATE "C";
ALTER TABLE scheduler.payments ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN invoice_id TYPE text COLLATE "C",
    ALTER COLUMN customer_id TYPE text COLLATE "C";
ALTER TABLE scheduler.halts ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN invoice_id TYPE text COLLATE "C";
ALTER TABLE scheduler.timeline ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN invoice_id TYPE text COLLATE "C",
    ALTER COLUMN customer_id TYPE text COLLATE "C";
