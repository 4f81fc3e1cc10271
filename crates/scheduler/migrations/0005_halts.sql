-- When a paid invoice's dunning stopped. The durable consumer `scheduler-halt` records
-- it as soon as `invoice.paid` is stored, before the in-order consumer applies the
-- payment in full (or the in-order consumer does, if it gets there first). Firing
-- never takes an open invoice that has a row here, so a halt waits for nothing: not
-- for a firing claim that holds the invoice's row (that claim's step was already being
-- fired, and the dispatcher's guard refuses it), not for the in-order consumer. Rows
-- stay as the record of when dunning stopped (a paid invoice never reopens).
CREATE TABLE scheduler.halts (
    tenant      TEXT NOT NULL,
    invoice_id  TEXT NOT NULL,
    -- reconciliation's settlement instant, as the event carries it
    settled_at  TIMESTAMPTZ NOT NULL,
    halted_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    -- true: the halt got there first; false: the in-order consumer applied the
    -- payment in full before the halt came
    by_halt     BOOLEAN NOT NULL,
    PRIMARY KEY (tenant, invoice_id)
);

-- 0004 stopped an invoice by clearing its next step and stamping this column on the
-- invoice's row, which meant waiting for any claim that held the row.
INSERT INTO scheduler.halts (tenant, invoice_id, settled_at, halted_at, by_halt)
SELECT tenant, invoice_id, halted_at, halted_at, true FROM scheduler.invoices WHERE halted_at IS NOT NULL;
ALTER TABLE scheduler.invoices DROP COLUMN halted_at;
