-- Keys compare byte by byte, as the scheduler's (its migration 0006) and intake's
-- (its migration 0003) do.
--
-- Tenant, command, customer and invoice ids, provider message ids and address keys
-- are opaque identifiers; under the database's linguistic collation every comparison
-- of two of them in an index went through the locale's rules. Command ids are long
-- and share long prefixes (`tenant:invoice:step:version`), the costly case for those
-- rules. The only orders taken over these columns are a lock order (any consistent
-- order does) and reports that group by channel and state, lowercase ASCII words
-- whose byte order is their alphabetical order.
ALTER TABLE dispatch.attempts ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN command_id TYPE text COLLATE "C",
    ALTER COLUMN channel TYPE text COLLATE "C",
    ALTER COLUMN customer_id TYPE text COLLATE "C",
    ALTER COLUMN address_key TYPE text COLLATE "C",
    ALTER COLUMN provider TYPE text COLLATE "C",
    ALTER COLUMN provider_message_id TYPE text COLLATE "C";
ALTER TABLE dispatch.statuses ALTER COLUMN provider TYPE text COLLATE "C",
    ALTER COLUMN provider_message_id TYPE text COLLATE "C",
    ALTER COLUMN status TYPE text COLLATE "C";
ALTER TABLE dispatch.early_statuses ALTER COLUMN provider TYPE text COLLATE "C",
    ALTER COLUMN provider_message_id TYPE text COLLATE "C",
    ALTER COLUMN status TYPE text COLLATE "C";
ALTER TABLE dispatch.opt_outs ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN customer_id TYPE text COLLATE "C",
    ALTER COLUMN channel TYPE text COLLATE "C";
ALTER TABLE dispatch.closed_invoices ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN invoice_id TYPE text COLLATE "C";
ALTER TABLE dispatch.customers ALTER COLUMN tenant TYPE text COLLATE "C",
    ALTER COLUMN customer_id TYPE text COLLATE "C";
ALTER TABLE dispatch.limiter ALTER COLUMN key TYPE text COLLATE "C";
