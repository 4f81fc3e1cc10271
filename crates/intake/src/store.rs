//! Applying inbound commands to Postgres, a batch at a time.
//!
//! One transaction per batch: read which message ids were already processed, lock the
//! invoices and customers the batch touches, decide every message's outcome in order in
//! memory, then write the changed rows, one outcome row per message and the events
//! (through the outbox) with a few multi-row statements. Nothing is acknowledged to
//! JetStream before this commits, and a redelivered message finds its outcome row and
//! is reported `duplicate` with no second effect.
//!
//! Rules:
//! - an upsert whose `revision` is older than the stored one is `stale`; equal with the
//!   same content is `duplicate`, equal with other content is `stale`;
//! - without revisions on both sides, arrival order decides: each row keeps the inbound
//!   stream sequence that last changed it, and a message with an older sequence (one a
//!   concurrent worker or replica processed late) is `stale`, or `duplicate` when its
//!   content is the same;
//! - content identical to what is stored is `duplicate` (a newer revision is recorded);
//! - cancel is final: a cancel of an unknown invoice leaves a tombstone, and any later
//!   upsert of a canceled invoice is `stale`.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use regua_contract::decode::{
    Command, CustomerDraft, CustomerSource, Decoded, InvoiceDraft, Issues,
};
use regua_contract::events::{
    CustomerUpserted, DocumentKind, IntakeRejected, InvoiceCanceled, InvoiceChanged, InvoiceState,
};
use regua_contract::{DomainEvent, RejectCode};
use regua_platform::outbox::{OutboxMessage, event_message};
use regua_platform::tenancy::{Directory, TenantInfo};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Row};

use crate::OUTBOX;

/// The single outcome of one inbound message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Accepted,
    Duplicate,
    Stale,
    Rejected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Duplicate => "duplicate",
            Outcome::Stale => "stale",
            Outcome::Rejected => "rejected",
        }
    }
}

/// One message to apply.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// Tenant token from the subject (it may name no tenant).
    pub tenant: String,
    pub message_id: String,
    pub subject: String,
    pub stream_seq: Option<u64>,
    pub payload: Bytes,
    pub decoded: Decoded,
    /// Trace context of the span processing this message, stored with its events.
    pub traceparent: Option<String>,
}

/// What happened to one message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<regua_contract::FieldIssue<RejectCode>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<regua_contract::FieldIssue<regua_contract::WarnCode>>,
}

impl Applied {
    /// Counts this decision in `regua_intake_messages_total` (outcome, first reject code).
    pub fn count(&self) {
        let code = self.errors.first().map(|e| e.code.as_str()).unwrap_or("");
        metrics::counter!(
            regua_platform::metrics::INTAKE_MESSAGES,
            "outcome" => self.outcome.as_str(),
            "code" => code,
        )
        .increment(1);
    }

    fn new(outcome: Outcome, issues: Issues, reason: Option<String>) -> Self {
        Applied {
            outcome,
            reason,
            errors: issues.errors,
            warnings: issues.warnings,
        }
    }
}

/// Errors that abort a whole batch (the transaction rolls back; nothing is acked).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("serializing: {0}")]
    Json(#[from] serde_json::Error),
    /// A write changed another number of rows than the batch read: the batch rolls back
    /// and is retried.
    #[error("{table}: {expected} rows to write, {written} written")]
    Unexpected {
        table: &'static str,
        expected: usize,
        written: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Open,
    Canceled,
}

#[derive(Debug, Clone)]
struct InvoiceRow {
    status: Status,
    revision: Option<i64>,
    customer_id: Option<String>,
    hash: Option<Vec<u8>>,
    /// New state to write; `None` keeps the stored one.
    state: Option<String>,
    cancel_reason: Option<String>,
    last_seq: Option<i64>,
    dirty: bool,
    /// Whether the row was in the table when the batch read it (under the key's lock):
    /// a dirty row is then updated, otherwise inserted.
    in_db: bool,
}

impl InvoiceRow {
    /// A row for an invoice never seen: canceled before any upsert.
    fn tombstone() -> Self {
        InvoiceRow {
            status: Status::Canceled,
            revision: None,
            customer_id: None,
            hash: None,
            state: None,
            cancel_reason: None,
            last_seq: None,
            dirty: true,
            in_db: false,
        }
    }
}

#[derive(Debug, Clone)]
struct CustomerRow {
    document_kind: Option<DocumentKind>,
    hash: Vec<u8>,
    state: Option<String>,
    last_seq: Option<i64>,
    dirty: bool,
    /// As [`InvoiceRow::in_db`].
    in_db: bool,
}

/// Whether a message at `incoming` arrived before the one that last changed a row.
fn arrived_earlier(incoming: Option<i64>, stored: Option<i64>) -> bool {
    matches!((incoming, stored), (Some(i), Some(s)) if i < s)
}

fn seq_of(item: &Inbound) -> Option<i64> {
    item.stream_seq.and_then(|s| i64::try_from(s).ok())
}

type Key = (String, String);

fn hash(s: &str) -> Vec<u8> {
    Sha256::digest(s.as_bytes()).to_vec()
}

fn kind_str(k: DocumentKind) -> &'static str {
    match k {
        DocumentKind::Cpf => "cpf",
        DocumentKind::Cnpj => "cnpj",
    }
}

fn parse_kind(s: Option<&str>) -> Option<DocumentKind> {
    match s {
        Some("cpf") => Some(DocumentKind::Cpf),
        Some("cnpj") => Some(DocumentKind::Cnpj),
        _ => None,
    }
}

/// Applies `items` in one transaction and returns one [`Applied`] per item, in order.
pub async fn apply_batch(
    pool: &PgPool,
    tenants: &Directory,
    now: DateTime<Utc>,
    items: &[Inbound],
) -> Result<Vec<Applied>, StoreError> {
    let mut tx = pool.begin().await?;
    let applied = apply_in(&mut tx, tenants, now, items).await?;
    tx.commit().await?;
    Ok(applied)
}

async fn apply_in(
    conn: &mut PgConnection,
    tenants: &Directory,
    now: DateTime<Utc>,
    items: &[Inbound],
) -> Result<Vec<Applied>, StoreError> {
    let tokens: Vec<&str> = items.iter().map(|i| i.tenant.as_str()).collect();
    let known = tenants.resolve(conn, &tokens).await?;

    let mut invoice_keys = Vec::new();
    let mut customer_keys = Vec::new();
    for item in items {
        if !known.contains_key(&item.tenant) {
            continue;
        }
        match &item.decoded.command {
            Some(Command::UpsertInvoice(i)) => {
                invoice_keys.push((item.tenant.clone(), i.invoice_id.clone()));
                customer_keys.push((item.tenant.clone(), i.customer.customer_id().to_owned()));
            }
            Some(Command::CancelInvoice(c)) => {
                invoice_keys.push((item.tenant.clone(), c.invoice_id.clone()));
            }
            Some(Command::UpsertCustomer(c)) => {
                customer_keys.push((item.tenant.clone(), c.customer_id.clone()));
            }
            None => {}
        }
    }
    lock_keys(conn, &invoice_keys, &customer_keys).await?;
    // Read after the locks: a replica that held them has committed its outcome rows.
    let seen = processed_ids(conn, items).await?;
    let mut invoices = load_invoices(conn, invoice_keys).await?;
    let mut customers = load_customers(conn, customer_keys).await?;

    let mut batch = Batch {
        now,
        out: Vec::new(),
        applied: Vec::with_capacity(items.len()),
        recorded: Vec::with_capacity(items.len()),
    };
    let mut in_batch: HashSet<(&str, &str)> = HashSet::new();
    for item in items {
        let key = (item.tenant.as_str(), item.message_id.as_str());
        if seen.contains(&(item.tenant.clone(), item.message_id.clone())) || !in_batch.insert(key) {
            batch.applied.push(Applied::new(
                Outcome::Duplicate,
                Issues::default(),
                Some("message id already processed".into()),
            ));
            continue;
        }
        let applied = decide(
            &mut batch,
            item,
            known.get(&item.tenant),
            &mut invoices,
            &mut customers,
        )?;
        batch.recorded.push((item, applied.clone()));
        batch.applied.push(applied);
    }

    write_customers(conn, &customers, now).await?;
    write_invoices(conn, &invoices, now).await?;
    write_messages(conn, &batch.recorded, now).await?;
    OUTBOX.enqueue(conn, &batch.out).await?;
    Ok(batch.applied)
}

struct Batch<'a> {
    now: DateTime<Utc>,
    out: Vec<OutboxMessage>,
    applied: Vec<Applied>,
    recorded: Vec<(&'a Inbound, Applied)>,
}

impl Batch<'_> {
    fn emit(&mut self, item: &Inbound, event: DomainEvent) -> Result<(), StoreError> {
        self.out.push(event_message(
            self.now,
            &item.tenant,
            &event,
            &item.message_id,
            &item.message_id,
            item.traceparent.clone(),
        )?);
        Ok(())
    }
}

fn decide(
    batch: &mut Batch<'_>,
    item: &Inbound,
    tenant: Option<&TenantInfo>,
    invoices: &mut HashMap<Key, InvoiceRow>,
    customers: &mut HashMap<Key, CustomerRow>,
) -> Result<Applied, StoreError> {
    let mut issues = item.decoded.issues.clone();
    let Some(command) = item
        .decoded
        .command
        .as_ref()
        .filter(|_| !issues.is_rejected())
    else {
        return reject(batch, item, issues);
    };
    let Some(tenant) = tenant else {
        issues.error(
            "",
            RejectCode::UnknownTenant,
            format!("tenant `{}` does not exist", item.tenant),
        );
        return reject(batch, item, issues);
    };
    match command {
        Command::UpsertCustomer(draft) => {
            let outcome = upsert_customer(batch, item, tenant, draft, customers)?;
            let reason = (outcome == Outcome::Stale)
                .then(|| "a newer message already changed this customer".to_owned());
            Ok(Applied::new(outcome, issues, reason))
        }
        Command::CancelInvoice(cancel) => {
            let key = (item.tenant.clone(), cancel.invoice_id.clone());
            let incoming = cancel.revision.and_then(|r| i64::try_from(r).ok());
            if let Some(row) = invoices.get(&key) {
                if row.status == Status::Canceled {
                    return Ok(Applied::new(
                        Outcome::Duplicate,
                        issues,
                        Some("invoice already canceled".into()),
                    ));
                }
                if let (Some(r), Some(s)) = (incoming, row.revision)
                    && r < s
                {
                    return Ok(Applied::new(
                        Outcome::Stale,
                        issues,
                        Some(format!(
                            "cancel revision {r} is older than stored revision {s}"
                        )),
                    ));
                }
            }
            let was_open = invoices.contains_key(&key);
            // Cancel changes the row it finds, keeping what this batch already wrote to
            // it, or leaves a tombstone.
            let row = invoices.entry(key).or_insert_with(InvoiceRow::tombstone);
            row.status = Status::Canceled;
            row.revision = incoming.or(row.revision);
            row.cancel_reason = cancel.reason.clone();
            row.last_seq = seq_of(item).max(row.last_seq);
            row.dirty = true;
            batch.emit(
                item,
                DomainEvent::InvoiceCanceled(InvoiceCanceled {
                    invoice_id: cancel.invoice_id.clone(),
                    revision: cancel.revision,
                    reason: cancel.reason.clone(),
                    was_open,
                }),
            )?;
            Ok(Applied::new(Outcome::Accepted, issues, None))
        }
        Command::UpsertInvoice(draft) => {
            upsert_invoice(batch, item, tenant, draft, issues, invoices, customers)
        }
    }
}

fn reject(batch: &mut Batch<'_>, item: &Inbound, issues: Issues) -> Result<Applied, StoreError> {
    batch.emit(
        item,
        DomainEvent::IntakeRejected(IntakeRejected::new(
            item.subject.clone(),
            item.message_id.clone(),
            item.stream_seq,
            issues.errors.clone(),
            issues.warnings.clone(),
            &item.payload,
        )),
    )?;
    Ok(Applied::new(Outcome::Rejected, issues, None))
}

/// Upserts a customer; returns the outcome for the customer alone.
fn upsert_customer(
    batch: &mut Batch<'_>,
    item: &Inbound,
    tenant: &TenantInfo,
    draft: &CustomerDraft,
    customers: &mut HashMap<Key, CustomerRow>,
) -> Result<Outcome, StoreError> {
    let state = draft.resolve(&tenant.timezone);
    let json = serde_json::to_string(&state)?;
    let h = hash(&json);
    let key = (item.tenant.clone(), draft.customer_id.clone());
    let in_db = match customers.get(&key) {
        Some(c) if c.hash == h => return Ok(Outcome::Duplicate),
        Some(c) if arrived_earlier(seq_of(item), c.last_seq) => return Ok(Outcome::Stale),
        Some(c) => c.in_db,
        None => false,
    };
    customers.insert(
        key,
        CustomerRow {
            document_kind: state.document_kind,
            hash: h,
            state: Some(json),
            last_seq: seq_of(item),
            dirty: true,
            in_db,
        },
    );
    batch.emit(
        item,
        DomainEvent::CustomerUpserted(CustomerUpserted { customer: state }),
    )?;
    Ok(Outcome::Accepted)
}

#[allow(clippy::too_many_arguments)]
fn upsert_invoice(
    batch: &mut Batch<'_>,
    item: &Inbound,
    tenant: &TenantInfo,
    draft: &InvoiceDraft,
    mut issues: Issues,
    invoices: &mut HashMap<Key, InvoiceRow>,
    customers: &mut HashMap<Key, CustomerRow>,
) -> Result<Applied, StoreError> {
    let customer_key = (item.tenant.clone(), draft.customer.customer_id().to_owned());
    let debtor_kind = match &draft.customer {
        CustomerSource::Embedded(c) => c
            .document
            .as_ref()
            .map(regua_contract::decode::document_kind),
        CustomerSource::Reference(id) => match customers.get(&customer_key) {
            None => {
                issues.error(
                    "customer_id",
                    RejectCode::UnknownCustomer,
                    format!("customer `{id}` is not known; send it embedded or upsert it first"),
                );
                return reject(batch, item, issues);
            }
            Some(c) => {
                if c.document_kind == Some(DocumentKind::Cpf)
                    && let Some(fee) = &draft.late_fee
                {
                    regua_contract::decode::check_consumer_fine(fee, &mut issues);
                    if issues.is_rejected() {
                        return reject(batch, item, issues);
                    }
                }
                c.document_kind
            }
        },
    };

    let key = (item.tenant.clone(), draft.invoice_id.clone());
    let existing = invoices.get(&key);
    if existing.is_some_and(|r| r.status == Status::Canceled) {
        return Ok(Applied::new(
            Outcome::Stale,
            issues,
            Some("invoice was canceled; cancel is final".into()),
        ));
    }
    let incoming = draft.revision.and_then(|r| i64::try_from(r).ok());
    let stored = existing.and_then(|r| r.revision);
    let mut state = InvoiceState {
        revision: None,
        ..draft.state(debtor_kind)
    };
    // The stored state leaves the revision out, so equal content hashes equal.
    let json = serde_json::to_string(&state)?;
    let h = hash(&json);
    let same_content = existing.is_some_and(|r| r.hash.as_deref() == Some(h.as_slice()));
    if let (Some(r), Some(s)) = (incoming, stored) {
        if r < s || (r == s && !same_content) {
            return Ok(Applied::new(
                Outcome::Stale,
                issues,
                Some(format!(
                    "revision {r} is not newer than stored revision {s}"
                )),
            ));
        }
    } else if !same_content && arrived_earlier(seq_of(item), existing.and_then(|r| r.last_seq)) {
        return Ok(Applied::new(
            Outcome::Stale,
            issues,
            Some("a newer message already changed this invoice".into()),
        ));
    }

    let customer_changed = match &draft.customer {
        CustomerSource::Embedded(c) => {
            upsert_customer(batch, item, tenant, c, customers)? == Outcome::Accepted
        }
        CustomerSource::Reference(_) => false,
    };
    let revision = incoming.or(stored);
    if same_content {
        if let Some(row) = invoices.get_mut(&key)
            && row.revision != revision
        {
            row.revision = revision;
            row.last_seq = row.last_seq.max(seq_of(item));
            row.dirty = true;
        }
        let outcome = if customer_changed {
            Outcome::Accepted
        } else {
            Outcome::Duplicate
        };
        return Ok(Applied::new(outcome, issues, None));
    }
    let opened = existing.is_none();
    let in_db = existing.is_some_and(|r| r.in_db);
    invoices.insert(
        key,
        InvoiceRow {
            status: Status::Open,
            revision,
            customer_id: Some(state.customer_id.clone()),
            hash: Some(h),
            state: Some(json),
            cancel_reason: None,
            last_seq: seq_of(item),
            dirty: true,
            in_db,
        },
    );
    state.revision = revision.and_then(|r| u64::try_from(r).ok());
    let changed = InvoiceChanged { invoice: state };
    let event = if opened {
        DomainEvent::InvoiceOpened(changed)
    } else {
        DomainEvent::InvoiceUpdated(changed)
    };
    batch.emit(item, event)?;
    Ok(Applied::new(Outcome::Accepted, issues, None))
}

/// Serialises batches (from this or another replica) that touch the same invoice or
/// customer, including ones that do not exist yet and so have no row to lock. Locks are
/// taken in one sorted order, so two batches cannot deadlock on each other.
async fn lock_keys(
    conn: &mut PgConnection,
    invoices: &[Key],
    customers: &[Key],
) -> Result<(), sqlx::Error> {
    if invoices.is_empty() && customers.is_empty() {
        return Ok(());
    }
    let mut classes = Vec::with_capacity(invoices.len() + customers.len());
    let mut names = Vec::with_capacity(invoices.len() + customers.len());
    for (class, keys) in [(1i32, invoices), (2i32, customers)] {
        for (tenant, id) in keys {
            classes.push(class);
            names.push(format!("{tenant}/{id}"));
        }
    }
    sqlx::query(
        "SELECT pg_advisory_xact_lock(c, o) FROM ( \
           SELECT DISTINCT c, hashtext(n) AS o FROM UNNEST($1::int4[], $2::text[]) AS u(c, n) \
         ) k ORDER BY c, o",
    )
    .bind(&classes)
    .bind(&names)
    .execute(conn)
    .await?;
    Ok(())
}

async fn processed_ids(
    conn: &mut PgConnection,
    items: &[Inbound],
) -> Result<HashSet<Key>, sqlx::Error> {
    let tenants: Vec<&str> = items.iter().map(|i| i.tenant.as_str()).collect();
    let ids: Vec<&str> = items.iter().map(|i| i.message_id.as_str()).collect();
    let rows = sqlx::query(
        "SELECT m.tenant, m.message_id FROM intake.messages m \
         JOIN UNNEST($1::text[], $2::text[]) AS k(tenant, message_id) \
           ON m.tenant = k.tenant AND m.message_id = k.message_id",
    )
    .bind(&tenants)
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("tenant")?, r.try_get("message_id")?)))
        .collect()
}

fn split_keys(mut keys: Vec<Key>) -> (Vec<String>, Vec<String>) {
    keys.sort();
    keys.dedup();
    keys.into_iter().unzip()
}

async fn load_invoices(
    conn: &mut PgConnection,
    keys: Vec<Key>,
) -> Result<HashMap<Key, InvoiceRow>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let (tenants, ids) = split_keys(keys);
    let rows = sqlx::query(
        "SELECT i.tenant, i.invoice_id, i.status, i.revision, i.content_hash, i.last_seq \
         FROM intake.invoices i \
         JOIN UNNEST($1::text[], $2::text[]) AS k(tenant, invoice_id) \
           ON i.tenant = k.tenant AND i.invoice_id = k.invoice_id",
    )
    .bind(&tenants)
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let status: String = r.try_get("status")?;
        out.insert(
            (r.try_get("tenant")?, r.try_get("invoice_id")?),
            InvoiceRow {
                status: if status == "canceled" {
                    Status::Canceled
                } else {
                    Status::Open
                },
                revision: r.try_get("revision")?,
                customer_id: None,
                hash: r.try_get("content_hash")?,
                state: None,
                cancel_reason: None,
                last_seq: r.try_get("last_seq")?,
                dirty: false,
                in_db: true,
            },
        );
    }
    Ok(out)
}

async fn load_customers(
    conn: &mut PgConnection,
    keys: Vec<Key>,
) -> Result<HashMap<Key, CustomerRow>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let (tenants, ids) = split_keys(keys);
    let rows = sqlx::query(
        "SELECT c.tenant, c.customer_id, c.document_kind, c.content_hash, c.last_seq \
         FROM intake.customers c \
         JOIN UNNEST($1::text[], $2::text[]) AS k(tenant, customer_id) \
           ON c.tenant = k.tenant AND c.customer_id = k.customer_id",
    )
    .bind(&tenants)
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let kind: Option<String> = r.try_get("document_kind")?;
        out.insert(
            (r.try_get("tenant")?, r.try_get("customer_id")?),
            CustomerRow {
                document_kind: parse_kind(kind.as_deref()),
                hash: r.try_get("content_hash")?,
                state: None,
                last_seq: r.try_get("last_seq")?,
                dirty: false,
                in_db: true,
            },
        );
    }
    Ok(out)
}

/// Writes the batch's changed customers: a plain insert for the ones the batch did not
/// find and an update for the ones it did. The batch holds each key's lock from before it
/// read, and every writer takes it, so no other writer can have inserted a missing row
/// meanwhile (if one did, the insert fails and the batch is retried, message by message).
/// An `INSERT … ON CONFLICT DO UPDATE` would pay for a speculative insertion on every
/// row to learn what the batch already knows.
async fn write_customers(
    conn: &mut PgConnection,
    customers: &HashMap<Key, CustomerRow>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let (stored, new): (Vec<_>, Vec<_>) = customers
        .iter()
        .filter(|(_, c)| c.dirty)
        .partition(|(_, c)| c.in_db);
    for (rows, sql) in [
        (
            new,
            "INSERT INTO intake.customers (tenant, customer_id, document_kind, content_hash, state, last_seq, created_at, updated_at) \
             SELECT t, c, k, h, s::jsonb, q, $7, $7 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::int8[]) AS u(t, c, k, h, s, q)",
        ),
        (
            stored,
            "UPDATE intake.customers AS x SET document_kind = u.k, content_hash = u.h, state = u.s::jsonb, last_seq = u.q, updated_at = $7 \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::int8[]) AS u(t, c, k, h, s, q) \
             WHERE x.tenant = u.t AND x.customer_id = u.c",
        ),
    ] {
        if rows.is_empty() {
            continue;
        }
        let tenants: Vec<&str> = rows.iter().map(|(k, _)| k.0.as_str()).collect();
        let ids: Vec<&str> = rows.iter().map(|(k, _)| k.1.as_str()).collect();
        let kinds: Vec<Option<&str>> = rows
            .iter()
            .map(|(_, c)| c.document_kind.map(kind_str))
            .collect();
        let hashes: Vec<&[u8]> = rows.iter().map(|(_, c)| c.hash.as_slice()).collect();
        let states: Vec<Option<&str>> = rows.iter().map(|(_, c)| c.state.as_deref()).collect();
        let seqs: Vec<Option<i64>> = rows.iter().map(|(_, c)| c.last_seq).collect();
        let written = sqlx::query(sql)
            .bind(&tenants)
            .bind(&ids)
            .bind(&kinds)
            .bind(&hashes)
            .bind(&states)
            .bind(&seqs)
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        check_written("intake.customers", rows.len(), written)?;
    }
    Ok(())
}

/// Writes the batch's changed invoices, as [`write_customers`] does: a plain insert for
/// the ones not found, an update for the ones found. An update keeps the stored
/// customer, content hash and state where the row carries none (a cancel).
async fn write_invoices(
    conn: &mut PgConnection,
    invoices: &HashMap<Key, InvoiceRow>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let (stored, new): (Vec<_>, Vec<_>) = invoices
        .iter()
        .filter(|(_, r)| r.dirty)
        .partition(|(_, r)| r.in_db);
    for (rows, sql) in [
        (
            new,
            "INSERT INTO intake.invoices (tenant, invoice_id, status, revision, customer_id, content_hash, state, cancel_reason, last_seq, created_at, updated_at) \
             SELECT t, i, st, r, c, h, s::jsonb, cr, q, $10, $10 \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::bytea[], $7::text[], $8::text[], $9::int8[]) AS u(t, i, st, r, c, h, s, cr, q)",
        ),
        (
            stored,
            "UPDATE intake.invoices AS x SET status = u.st, revision = u.r, \
               customer_id = COALESCE(u.c, x.customer_id), content_hash = COALESCE(u.h, x.content_hash), \
               state = COALESCE(u.s::jsonb, x.state), cancel_reason = u.cr, last_seq = u.q, updated_at = $10 \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::bytea[], $7::text[], $8::text[], $9::int8[]) AS u(t, i, st, r, c, h, s, cr, q) \
             WHERE x.tenant = u.t AND x.invoice_id = u.i",
        ),
    ] {
        if rows.is_empty() {
            continue;
        }
        let tenants: Vec<&str> = rows.iter().map(|(k, _)| k.0.as_str()).collect();
        let ids: Vec<&str> = rows.iter().map(|(k, _)| k.1.as_str()).collect();
        let statuses: Vec<&str> = rows
            .iter()
            .map(|(_, r)| match r.status {
                Status::Open => "open",
                Status::Canceled => "canceled",
            })
            .collect();
        let revisions: Vec<Option<i64>> = rows.iter().map(|(_, r)| r.revision).collect();
        let customer_ids: Vec<Option<&str>> =
            rows.iter().map(|(_, r)| r.customer_id.as_deref()).collect();
        let hashes: Vec<Option<&[u8]>> = rows.iter().map(|(_, r)| r.hash.as_deref()).collect();
        let states: Vec<Option<&str>> = rows.iter().map(|(_, r)| r.state.as_deref()).collect();
        let reasons: Vec<Option<&str>> = rows
            .iter()
            .map(|(_, r)| r.cancel_reason.as_deref())
            .collect();
        let seqs: Vec<Option<i64>> = rows.iter().map(|(_, r)| r.last_seq).collect();
        let written = sqlx::query(sql)
            .bind(&tenants)
            .bind(&ids)
            .bind(&statuses)
            .bind(&revisions)
            .bind(&customer_ids)
            .bind(&hashes)
            .bind(&states)
            .bind(&reasons)
            .bind(&seqs)
            .bind(now)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        check_written("intake.invoices", rows.len(), written)?;
    }
    Ok(())
}

/// Every row a write meant to change was changed: an update that finds fewer rows than
/// the batch read means something the locks do not cover changed the table, and the
/// batch must not commit.
fn check_written(table: &'static str, expected: usize, written: u64) -> Result<(), StoreError> {
    if written == expected as u64 {
        Ok(())
    } else {
        Err(StoreError::Unexpected {
            table,
            expected,
            written,
        })
    }
}

async fn write_messages(
    conn: &mut PgConnection,
    recorded: &[(&Inbound, Applied)],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if recorded.is_empty() {
        return Ok(());
    }
    let mut tenants = Vec::with_capacity(recorded.len());
    let mut ids = Vec::with_capacity(recorded.len());
    let mut subjects = Vec::with_capacity(recorded.len());
    let mut seqs = Vec::with_capacity(recorded.len());
    let mut outcomes = Vec::with_capacity(recorded.len());
    let mut details: Vec<Option<String>> = Vec::with_capacity(recorded.len());
    for (item, applied) in recorded {
        tenants.push(item.tenant.as_str());
        ids.push(item.message_id.as_str());
        subjects.push(item.subject.as_str());
        seqs.push(item.stream_seq.and_then(|s| i64::try_from(s).ok()));
        outcomes.push(applied.outcome.as_str());
        let has_detail =
            applied.reason.is_some() || !applied.errors.is_empty() || !applied.warnings.is_empty();
        details.push(if has_detail {
            Some(serde_json::to_string(applied)?)
        } else {
            None
        });
    }
    // A plain INSERT: if another replica recorded one of these ids meanwhile, the batch
    // fails and is retried, and the retry reports the message as a duplicate.
    sqlx::query(
        "INSERT INTO intake.messages (tenant, message_id, subject, stream_seq, outcome, detail, processed_at) \
         SELECT t, m, s, q, o, d::jsonb, $7 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[]) AS u(t, m, s, q, o, d)",
    )
    .bind(&tenants)
    .bind(&ids)
    .bind(&subjects)
    .bind(&seqs)
    .bind(&outcomes)
    .bind(&details)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// An invoice as stored, for the HTTP API.
#[derive(Debug, Clone, Serialize)]
pub struct StoredInvoice {
    pub invoice_id: String,
    pub status: String,
    pub revision: Option<i64>,
    pub customer_id: Option<String>,
    pub invoice: Option<serde_json::Value>,
    pub cancel_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn get_invoice(
    pool: &PgPool,
    tenant: &str,
    invoice_id: &str,
) -> Result<Option<StoredInvoice>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT invoice_id, status, revision, customer_id, state, cancel_reason, created_at, updated_at \
         FROM intake.invoices WHERE tenant = $1 AND invoice_id = $2",
    )
    .bind(tenant)
    .bind(invoice_id)
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        let revision: Option<i64> = r.try_get("revision")?;
        let mut invoice: Option<serde_json::Value> = r.try_get("state")?;
        if let (Some(serde_json::Value::Object(o)), Some(rev)) = (invoice.as_mut(), revision) {
            o.insert("revision".into(), rev.into());
        }
        Ok(StoredInvoice {
            invoice_id: r.try_get("invoice_id")?,
            status: r.try_get("status")?,
            revision,
            customer_id: r.try_get("customer_id")?,
            invoice,
            cancel_reason: r.try_get("cancel_reason")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    })
    .transpose()
}

/// A customer as stored, for the HTTP API.
#[derive(Debug, Clone, Serialize)]
pub struct StoredCustomer {
    pub customer: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

pub async fn get_customer(
    pool: &PgPool,
    tenant: &str,
    customer_id: &str,
) -> Result<Option<StoredCustomer>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT state, created_at, updated_at FROM intake.customers WHERE tenant = $1 AND customer_id = $2",
    )
    .bind(tenant)
    .bind(customer_id)
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        Ok(StoredCustomer {
            customer: r.try_get("state")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    })
    .transpose()
}

/// The recorded outcome of one message, for the HTTP API.
pub async fn get_message(
    pool: &PgPool,
    tenant: &str,
    message_id: &str,
) -> Result<Option<serde_json::Value>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT message_id, subject, stream_seq, outcome, detail, processed_at \
         FROM intake.messages WHERE tenant = $1 AND message_id = $2",
    )
    .bind(tenant)
    .bind(message_id)
    .fetch_optional(pool)
    .await?;
    row.map(|r| {
        let processed_at: DateTime<Utc> = r.try_get("processed_at")?;
        let detail: Option<serde_json::Value> = r.try_get("detail")?;
        Ok(serde_json::json!({
            "message_id": r.try_get::<String, _>("message_id")?,
            "subject": r.try_get::<String, _>("subject")?,
            "stream_sequence": r.try_get::<Option<i64>, _>("stream_seq")?,
            "outcome": r.try_get::<String, _>("outcome")?,
            "detail": detail,
            "processed_at": processed_at,
        }))
    })
    .transpose()
}
