-- The dispatchers' schema: one per deployment, shared by every channel's workers.

-- One row per (command, channel): the record that makes "never send the same step
-- twice" hold. `state` moves pending -> sending -> sent | failed | retry, or to skipped;
-- a row found in `sending` by a later delivery means a worker died between the
-- provider call and recording it, and becomes `unknown` (never resent).
CREATE TABLE dispatch.attempts (
    tenant              TEXT NOT NULL,
    command_id          TEXT NOT NULL,
    channel             TEXT NOT NULL,
    state               TEXT NOT NULL,
    customer_id         TEXT NOT NULL,
    -- The phone or e-mail sent to, normalised (digits, or lowercase), so replies and
    -- provider callbacks find their customer.
    address_key         TEXT,
    step                TEXT NOT NULL,
    invoice_ids         TEXT[] NOT NULL,
    provider            TEXT NOT NULL,
    provider_message_id TEXT,
    calls               INT NOT NULL DEFAULT 0,
    reason              TEXT,
    segments            INT,
    sent_at             TIMESTAMPTZ,
    test_clock          BOOLEAN NOT NULL DEFAULT false,
    -- The command as received: a later provider failure (a status callback) moves it
    -- to the next channel.
    command             JSONB NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, command_id, channel)
);
CREATE INDEX attempts_provider_message ON dispatch.attempts (provider, provider_message_id)
    WHERE provider_message_id IS NOT NULL;
CREATE INDEX attempts_address ON dispatch.attempts (channel, address_key);

-- Provider statuses already turned into events (callbacks are retried by providers).
CREATE TABLE dispatch.statuses (
    provider            TEXT NOT NULL,
    provider_message_id TEXT NOT NULL,
    status              TEXT NOT NULL,
    at                  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, provider_message_id, status)
);

-- Channels a customer asked not to be contacted on.
CREATE TABLE dispatch.opt_outs (
    tenant      TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    channel     TEXT NOT NULL,
    source      TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, customer_id, channel)
);

-- Invoices paid or canceled (from domain events): their pending messages are skipped.
CREATE TABLE dispatch.closed_invoices (
    tenant     TEXT NOT NULL,
    invoice_id TEXT NOT NULL,
    reason     TEXT NOT NULL,
    PRIMARY KEY (tenant, invoice_id)
);

-- The latest WhatsApp opt-in of each customer (from customer.upserted).
CREATE TABLE dispatch.customers (
    tenant          TEXT NOT NULL,
    customer_id     TEXT NOT NULL,
    whatsapp_opt_in BOOLEAN NOT NULL,
    PRIMARY KEY (tenant, customer_id)
);

-- Domain events already applied (idempotent consumer).
CREATE TABLE dispatch.processed (
    id UUID PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One GCRA cell per provider account: the theoretical arrival time, in microseconds
-- since the epoch on the database's clock, shared by every replica.
CREATE TABLE dispatch.limiter (
    key     TEXT PRIMARY KEY,
    tat_us  BIGINT NOT NULL
);

-- Reissued: the outbox table this migration also made is the platform's now
-- (regua_platform::outbox::migrate); databases that applied the earlier text keep it.
