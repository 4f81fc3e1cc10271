-- The settlement fence: invoices a payment has settled. Reconciliation writes a row
-- under an exclusive advisory lock on the invoice; a dispatcher reads it under a shared
-- lock held until its provider calls return (see regua_platform::fence).
CREATE TABLE fence.settled (
    tenant      TEXT NOT NULL,
    invoice_id  TEXT NOT NULL,
    payment_id  TEXT NOT NULL,
    -- clock_timestamp() taken after the exclusive lock was granted.
    settled_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, invoice_id)
);
