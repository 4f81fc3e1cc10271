-- The journey timeline: every domain event about an invoice, as the scheduler's own
-- projection (durable consumer `scheduler-timeline`, apart from the in-order consumer
-- that plans and stops invoices, so it never delays a stop). Step decisions come from
-- the step log, which now keeps the trace each decision was made in.
CREATE TABLE scheduler.timeline (
    event_id    UUID NOT NULL,
    invoice_id  TEXT NOT NULL,
    tenant      TEXT NOT NULL,
    customer_id TEXT,
    at          TIMESTAMPTZ NOT NULL,
    -- When the broker stored the event: the timeline's order. `at` is the event's own
    -- time, which for a test-clock tenant is simulated by some services and not others.
    recorded_at TIMESTAMPTZ NOT NULL,
    stream_seq  BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    detail      JSONB NOT NULL,
    trace_id    TEXT,
    PRIMARY KEY (event_id, invoice_id)
);
CREATE INDEX timeline_invoice ON scheduler.timeline (tenant, invoice_id);
CREATE INDEX timeline_customer ON scheduler.timeline (tenant, customer_id);

ALTER TABLE scheduler.step_log ADD COLUMN trace_id TEXT;
-- When the decision was written (the database's clock), to order it among events.
ALTER TABLE scheduler.step_log ADD COLUMN recorded_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp();
