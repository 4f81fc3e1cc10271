-- Reconciliation's view of tenants, customers and invoices (from domain events), the
-- payment ledger.

CREATE TABLE reconcile.tenants (
    id          TEXT PRIMARY KEY,
    timezone    TEXT NOT NULL,
    test_clock  BOOLEAN NOT NULL,
    -- A test-clock tenant's simulated time (tenant.created, tenant.clock_advanced).
    clock_now   TIMESTAMPTZ,
    -- SHA-256 of the PIX webhook secret (hex); NULL until one is issued.
    pix_secret_sha256 TEXT
);

CREATE TABLE reconcile.customers (
    tenant      TEXT NOT NULL,
    customer_id TEXT NOT NULL,
    -- Digits only; for the document + amount heuristic.
    document    TEXT,
    PRIMARY KEY (tenant, customer_id)
);
CREATE INDEX customers_by_document ON reconcile.customers (tenant, document) WHERE document IS NOT NULL;

CREATE TABLE reconcile.invoices (
    tenant        TEXT NOT NULL,
    invoice_id    TEXT NOT NULL,
    customer_id   TEXT NOT NULL,
    -- open, paid or canceled.
    status        TEXT NOT NULL,
    revision      BIGINT,
    amount_cents  BIGINT NOT NULL,
    currency      TEXT NOT NULL,
    due_date      DATE NOT NULL,
    effective_due DATE NOT NULL,
    fine_bps      INT NOT NULL,
    interest_bps  INT NOT NULL,
    reference     TEXT,
    -- Payments applied so far (a first payment need not read the ledger).
    applications  INT NOT NULL DEFAULT 0,
    -- The invoice as its last event stated it (InvoiceState).
    state         JSONB NOT NULL,
    opened_at     TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, invoice_id)
);
CREATE INDEX invoices_by_reference ON reconcile.invoices (tenant, reference) WHERE reference IS NOT NULL;
CREATE INDEX invoices_open_by_customer ON reconcile.invoices (tenant, customer_id) WHERE status = 'open';

-- Every payment as it arrived. Append-only: never updated, never deleted.
CREATE TABLE reconcile.payments (
    tenant         TEXT NOT NULL,
    payment_id     TEXT NOT NULL,
    seq            BIGSERIAL NOT NULL,
    invoice_id     TEXT,
    reference      TEXT,
    amount_cents   BIGINT NOT NULL CHECK (amount_cents > 0),
    currency       TEXT NOT NULL,
    paid_at        TIMESTAMPTZ NOT NULL,
    method         TEXT NOT NULL,
    payer_document TEXT,
    -- nats, http or pix_webhook.
    source         TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    received_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, payment_id)
);

-- Where each payment went. Append-only: one row per payment once it is matched;
-- an invoice's balance is the charges minus its applications (regua_domain::charges).
CREATE TABLE reconcile.applications (
    tenant       TEXT NOT NULL,
    payment_id   TEXT NOT NULL,
    invoice_id   TEXT NOT NULL,
    customer_id  TEXT NOT NULL,
    -- The payment's day on the tenant's calendar.
    paid_on      DATE NOT NULL,
    amount_cents BIGINT NOT NULL,
    -- The part beyond the balance: the customer's credit, flagged for review.
    credit_cents BIGINT NOT NULL DEFAULT 0,
    -- invoice_id, reference, document_amount or manual.
    matched_by   TEXT NOT NULL,
    settled      BOOLEAN NOT NULL,
    -- For the race test and dashboards: when the commit that settled it took the fence.
    settled_at   TIMESTAMPTZ,
    invoice_paid_event UUID,
    applied_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, payment_id)
);
CREATE INDEX applications_by_invoice ON reconcile.applications (tenant, invoice_id);

-- Payments no rule could match, waiting for review. A row leaves when the payment is
-- matched (automatically once its invoice appears, or by hand).
CREATE TABLE reconcile.unmatched (
    tenant      TEXT NOT NULL,
    payment_id  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    since       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, payment_id)
);

CREATE TABLE reconcile.processed (
    id UUID PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Reissued: the outbox table this migration also made is the platform's now
-- (regua_platform::outbox::migrate); databases that applied the earlier text keep it.
