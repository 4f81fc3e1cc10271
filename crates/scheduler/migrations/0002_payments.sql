-- Payments reconciliation reported (invoice.partially_paid, invoice.paid), so that
-- messages state what is still owed (fine, interest, already paid, balance).
CREATE TABLE scheduler.payments (
    tenant       TEXT NOT NULL,
    invoice_id   TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    -- The event's id: one row per event.
    event_id     UUID NOT NULL,
    paid_on      DATE NOT NULL,
    amount_cents BIGINT NOT NULL,
    -- invoice.paid: amount_cents is everything paid.
    settles      BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (tenant, invoice_id, event_id)
);
CREATE INDEX payments_by_customer ON scheduler.payments (tenant, customer_id);
