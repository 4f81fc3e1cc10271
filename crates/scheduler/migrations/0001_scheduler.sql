-- The scheduler owns the schema `scheduler`: its copy of tenants, customers and
-- invoices (built from domain events), versioned policies, the durable schedule (each
-- open invoice's *next* step only), the step history, the contact ledger for caps,
-- processed event ids.

CREATE TABLE scheduler.tenants (
    id            TEXT PRIMARY KEY,
    legal_name    TEXT NOT NULL,
    cnpj          TEXT NOT NULL,
    address       TEXT NOT NULL,
    contact       TEXT NOT NULL,
    timezone      TEXT NOT NULL,
    test_clock    BOOLEAN NOT NULL,
    -- Test clocks only: the tenant's simulated now, and where an advance is heading.
    clock_now     TIMESTAMPTZ,
    clock_target  TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE scheduler.policies (
    tenant      TEXT NOT NULL REFERENCES scheduler.tenants (id),
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    body        JSONB NOT NULL,
    source      TEXT NOT NULL,
    migrate_open BOOLEAN NOT NULL DEFAULT false,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, name, version)
);

CREATE TABLE scheduler.customers (
    tenant        TEXT NOT NULL,
    customer_id   TEXT NOT NULL,
    state         JSONB NOT NULL,
    opted_out     TEXT[] NOT NULL DEFAULT '{}',
    paid          INTEGER NOT NULL DEFAULT 0,
    paid_late     INTEGER NOT NULL DEFAULT 0,
    max_days_late INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, customer_id)
);

CREATE TABLE scheduler.invoices (
    tenant          TEXT NOT NULL,
    invoice_id      TEXT NOT NULL,
    customer_id     TEXT NOT NULL,
    state           JSONB NOT NULL,
    -- open, paid, canceled, done (régua finished while open)
    status          TEXT NOT NULL,
    test_clock      BOOLEAN NOT NULL,
    policy          TEXT NOT NULL,
    policy_version  INTEGER NOT NULL,
    -- The schedule: the next step to decide and when (NULL when nothing is pending).
    next_step       INTEGER NOT NULL DEFAULT 0,
    deferred_to     TIMESTAMPTZ,
    notice_sent_at  TIMESTAMPTZ,
    thanks_pending  BOOLEAN NOT NULL DEFAULT false,
    next_at         TIMESTAMPTZ,
    -- W3C traceparent of the event that planned it: firing links back to it.
    traceparent     TEXT,
    opened_at       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, invoice_id)
);
-- Claims read due rows in this order with LIMIT: an index scan, never a sort of the
-- whole backlog.
CREATE INDEX invoices_due ON scheduler.invoices (next_at, tenant, customer_id, invoice_id)
    WHERE next_at IS NOT NULL;
CREATE INDEX invoices_customer ON scheduler.invoices (tenant, customer_id);

-- Every decision about a step: sent, escalated, skipped, deferred, cancelled.
CREATE TABLE scheduler.step_log (
    seq             BIGSERIAL PRIMARY KEY,
    tenant          TEXT NOT NULL,
    invoice_id      TEXT NOT NULL,
    step            TEXT NOT NULL,
    policy_version  INTEGER NOT NULL,
    state           TEXT NOT NULL,
    reason          TEXT,
    planned_at      TIMESTAMPTZ,
    at              TIMESTAMPTZ NOT NULL,
    channel         TEXT,
    command_id      TEXT
);
CREATE INDEX step_log_invoice ON scheduler.step_log (tenant, invoice_id, seq);

-- Messages sent to a customer (one per message, however many invoices it lists).
CREATE TABLE scheduler.contacts (
    tenant       TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    at           TIMESTAMPTZ NOT NULL,
    template     TEXT NOT NULL,
    command_id   TEXT NOT NULL
);
CREATE INDEX contacts_customer ON scheduler.contacts (tenant, customer_id, at);

CREATE TABLE scheduler.processed (
    event_id      UUID PRIMARY KEY,
    processed_at  TIMESTAMPTZ NOT NULL
);

-- Reissued: the outbox table this migration also made is the platform's now
-- (regua_platform::outbox::migrate); databases that applied the earlier text keep it.
