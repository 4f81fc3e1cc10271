-- Intake owns the schema `intake`: tenants, the customers and invoices integrators
-- send, the record of every inbound message's outcome.

CREATE TABLE intake.tenants (
    id            TEXT PRIMARY KEY,
    legal_name    TEXT NOT NULL,
    cnpj          TEXT NOT NULL,
    address       TEXT NOT NULL,
    contact       TEXT NOT NULL,
    timezone      TEXT NOT NULL,
    test_clock    BOOLEAN NOT NULL DEFAULT false,
    clock_start   TIMESTAMPTZ,
    api_key_hash  BYTEA NOT NULL UNIQUE,
    created_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE intake.customers (
    tenant         TEXT NOT NULL REFERENCES intake.tenants (id),
    customer_id    TEXT NOT NULL,
    document_kind  TEXT,
    content_hash   BYTEA NOT NULL,
    state          JSONB NOT NULL,
    -- Inbound stream sequence of the message that last changed the row: arrival order,
    -- so a message processed late (by another worker) cannot overwrite a newer one.
    last_seq       BIGINT,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, customer_id)
);

-- A canceled invoice keeps its row (a tombstone when the cancel came first), so a late
-- upsert cannot bring it back.
CREATE TABLE intake.invoices (
    tenant         TEXT NOT NULL REFERENCES intake.tenants (id),
    invoice_id     TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('open', 'canceled')),
    revision       BIGINT,
    customer_id    TEXT,
    content_hash   BYTEA,
    state          JSONB,
    cancel_reason  TEXT,
    last_seq       BIGINT,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, invoice_id)
);

CREATE INDEX invoices_by_customer ON intake.invoices (tenant, customer_id);

-- One row per inbound message: its single outcome. `tenant` is the subject token, which
-- may name no tenant (outcome rejected, code unknown_tenant).
CREATE TABLE intake.messages (
    tenant        TEXT NOT NULL,
    message_id    TEXT NOT NULL,
    subject       TEXT NOT NULL,
    stream_seq    BIGINT,
    outcome       TEXT NOT NULL CHECK (outcome IN ('accepted', 'duplicate', 'stale', 'rejected')),
    detail        JSONB,
    processed_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, message_id)
);

-- Reissued: the outbox table this migration also made is the platform's now
-- (regua_platform::outbox::migrate); databases that applied the earlier text keep it.
