//! Prometheus metrics, for scaling decisions and alerts.
//!
//! One recorder per process ([`install`]), rendered at `/metrics` by every service's
//! HTTP server. Every series regua records is named here. No label carries an id
//! (tenant, invoice, customer, message): label values come from small closed sets
//! (outcomes, reject codes, step reasons, channels, providers, consumers, outboxes), so
//! cardinality stays bounded whatever the portfolio.
//!
//! What no code path observes is sampled ([`crate::sampler`]): the pending and
//! ack-pending counts of each durable consumer this process set up
//! ([`crate::nats::ensure_pull_consumer`] registers it here) and the depth of each
//! outbox it relays ([`crate::outbox::Relay`] registers it here).

use std::sync::{Mutex, OnceLock};

use metrics::{describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Intake: messages decided, by `outcome` and, for rejections, the first `code`.
pub const INTAKE_MESSAGES: &str = "regua_intake_messages_total";
/// Intake: messages per processed batch.
pub const INTAKE_BATCH_SIZE: &str = "regua_intake_batch_size";
/// Intake: from fetch to acknowledgement, per batch.
pub const INTAKE_BATCH_SECONDS: &str = "regua_intake_batch_seconds";
/// Scheduler: open invoices whose next step is due and not yet decided (real-time
/// tenants; test clocks have their own time).
pub const SCHEDULER_DUE_BACKLOG: &str = "regua_scheduler_due_backlog";
/// Scheduler: how late a step was decided after its planned instant.
pub const SCHEDULER_FIRE_LATENESS: &str = "regua_scheduler_fire_lateness_seconds";
/// Scheduler: step decisions by `outcome` (sent, escalated, skipped, deferred) and
/// `reason` (for skips and deferrals: `window`, `cap_per_day`, `superseded`, …).
pub const SCHEDULER_STEPS: &str = "regua_scheduler_steps_total";
/// Scheduler: from the settlement's commit (the `invoice.paid` event's time) to the
/// invoice's pending steps stopped (halted, or cancelled by the in-order consumer if
/// it got there first).
pub const PAYMENT_TO_CANCEL: &str = "regua_payment_to_cancel_seconds";
/// Dispatch: messages ended by `channel`, `provider` and `outcome` (sent, failed,
/// skipped, fenced, dead_lettered).
pub const DISPATCH_SENDS: &str = "regua_dispatch_sends_total";
/// Dispatch: provider call latency by `channel` and `provider`.
pub const DISPATCH_PROVIDER_SECONDS: &str = "regua_dispatch_provider_seconds";
/// Dispatch: time spent waiting for a rate-limit slot, by `channel`.
pub const DISPATCH_RATE_LIMIT_WAIT: &str = "regua_dispatch_rate_limit_wait_seconds";
/// Dispatch: messages moved to their step's next channel, by `from` and `to`.
pub const DISPATCH_FALLBACKS: &str = "regua_dispatch_fallbacks_total";
/// Dispatch: opt-outs and opt-ins applied, by `channel`, `source` and `direction`.
pub const DISPATCH_OPT_OUTS: &str = "regua_dispatch_opt_outs_total";
/// Reconciliation: payments by `result` (matched, unmatched, partial, paid,
/// duplicate, rejected).
pub const RECONCILE_PAYMENTS: &str = "regua_reconcile_payments_total";
/// Every service: a durable consumer's messages not yet delivered, by `stream` and
/// `consumer` (the lag KEDA scales channel workers on).
pub const CONSUMER_PENDING: &str = "regua_jetstream_consumer_pending";
/// Every service: a durable consumer's messages delivered and not yet acknowledged.
pub const CONSUMER_ACK_PENDING: &str = "regua_jetstream_consumer_ack_pending";
/// Every service with an in-order consumer: 1 on the replica holding the lease named
/// `lease`, 0 on the replicas standing by.
pub const LEASE_HELD: &str = "regua_lease_held";
/// Every service: rows in its outbox not yet published, by `outbox`.
pub const OUTBOX_DEPTH: &str = "regua_outbox_depth";
/// Every service: messages its relay could never publish and moved aside, by `outbox`.
pub const OUTBOX_PARKED: &str = "regua_outbox_parked_total";

/// Latency buckets (seconds): 1 ms to 5 min.
const SECONDS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Fire lateness (seconds): 1 s to 1 day.
const LATENESS: [f64; 10] = [
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4.0 * 3600.0,
    12.0 * 3600.0,
    86400.0,
];
/// Batch sizes.
const SIZES: [f64; 10] = [1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder once and returns its handle. When another recorder
/// is already installed (an embedding program's), regua's metrics go there and this
/// handle renders nothing.
pub fn install() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(SCHEDULER_FIRE_LATENESS.into()), &LATENESS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(INTAKE_BATCH_SIZE.into()), &SIZES))
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_ok() {
            describe();
        }
        handle
    })
}

/// The Prometheus text exposition of everything recorded so far.
pub fn render() -> String {
    install().render()
}

fn describe() {
    describe_counter!(
        INTAKE_MESSAGES,
        "Inbound messages decided by intake, by outcome and reject code"
    );
    describe_histogram!(INTAKE_BATCH_SIZE, "Messages per intake batch");
    describe_histogram!(
        INTAKE_BATCH_SECONDS,
        metrics::Unit::Seconds,
        "Intake batch time, fetch to ack"
    );
    describe_gauge!(
        SCHEDULER_DUE_BACKLOG,
        "Open invoices with a due step not yet decided"
    );
    describe_histogram!(
        SCHEDULER_FIRE_LATENESS,
        metrics::Unit::Seconds,
        "Step decision time after its planned instant"
    );
    describe_counter!(SCHEDULER_STEPS, "Step decisions by outcome and reason");
    describe_histogram!(
        PAYMENT_TO_CANCEL,
        metrics::Unit::Seconds,
        "Settlement commit to the invoice's pending steps stopped (halted or cancelled)"
    );
    describe_counter!(
        DISPATCH_SENDS,
        "Messages ended by channel, provider and outcome"
    );
    describe_histogram!(
        DISPATCH_PROVIDER_SECONDS,
        metrics::Unit::Seconds,
        "Provider call latency"
    );
    describe_histogram!(
        DISPATCH_RATE_LIMIT_WAIT,
        metrics::Unit::Seconds,
        "Wait for a provider rate-limit slot"
    );
    describe_counter!(DISPATCH_FALLBACKS, "Messages moved to the next channel");
    describe_counter!(DISPATCH_OPT_OUTS, "Channel opt-outs and opt-ins applied");
    describe_counter!(RECONCILE_PAYMENTS, "Payments by result");
    describe_gauge!(
        CONSUMER_PENDING,
        "Durable consumer messages not yet delivered"
    );
    describe_gauge!(
        CONSUMER_ACK_PENDING,
        "Durable consumer messages delivered, not yet acknowledged"
    );
    describe_gauge!(OUTBOX_DEPTH, "Outbox messages not yet published");
    describe_counter!(
        OUTBOX_PARKED,
        "Outbox messages that can never be published (too large), moved aside"
    );
    describe_gauge!(
        LEASE_HELD,
        "1 where this replica holds the lease (runs the in-order consumer), 0 standing by"
    );
}

/// What this process samples: its durable consumers (stream, consumer) and outbox
/// tables.
#[derive(Debug, Clone, Default)]
pub struct Watched {
    pub consumers: Vec<(String, String)>,
    pub outboxes: Vec<&'static str>,
}

static WATCHED: Mutex<Watched> = Mutex::new(Watched {
    consumers: Vec::new(),
    outboxes: Vec::new(),
});

fn watched_mut() -> std::sync::MutexGuard<'static, Watched> {
    WATCHED.lock().unwrap_or_else(|p| p.into_inner())
}

/// What to sample now.
pub fn watched() -> Watched {
    watched_mut().clone()
}

/// Samples `stream`'s durable `consumer` from now on (once, however often called).
pub fn watch_consumer(stream: &str, consumer: &str) {
    let mut w = watched_mut();
    if !w
        .consumers
        .iter()
        .any(|(s, c)| s == stream && c == consumer)
    {
        w.consumers.push((stream.to_owned(), consumer.to_owned()));
    }
}

/// Samples the depth of the outbox `table` from now on (once, however often called).
pub fn watch_outbox(table: &'static str) {
    let mut w = watched_mut();
    if !w.outboxes.contains(&table) {
        w.outboxes.push(table);
    }
}
