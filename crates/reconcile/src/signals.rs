//! The end of a payment's transaction: its commit (after a test's pause, if one is set)
//! and then the settlement signal, `regua.v1.sig.<tenant>.invoice.settled`, core NATS,
//! sent right after that commit so that the scheduler halts its dunning without
//! waiting for `invoice.paid` to leave through the outbox.

use tracing::Instrument;

use regua_contract::subjects;
use regua_platform::{nats, telemetry};

use crate::{Reconcile, ledger};

impl Reconcile {
    /// Commits a payment's transaction (after a test's pause, if any).
    pub(crate) async fn commit(
        &self,
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
    ) -> Result<(), sqlx::Error> {
        if let Some(p) = &self.pause_before_commit {
            p.reached.notify_waiters();
            std::future::pending::<()>().await;
        }
        tx.commit().await
    }

    /// Signals each invoice `settled` settled (`regua.v1.sig.<tenant>.invoice.settled`,
    /// core NATS), right after the commit: the scheduler halts its dunning without
    /// waiting for `invoice.paid` to leave through the outbox. At most once: a signal
    /// that cannot be sent is only a lost shortcut, and `invoice.paid` follows anyway.
    pub(crate) async fn signal(&self, settled: &ledger::Settled) {
        if settled.is_empty() {
            return;
        }
        let client = match self.signals.get() {
            Some((client, _)) => client.clone(),
            None => self.js.client(),
        };
        for (tenant, signal, traceparent) in settled.iter() {
            let payload = match serde_json::to_vec(signal) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "encoding a settlement signal");
                    continue;
                }
            };
            let subject = subjects::settled(tenant);
            let span =
                nats::publish_span_continuing(&subject, &signal.event_id.to_string(), traceparent);
            let mut headers = async_nats::HeaderMap::new();
            telemetry::inject(&span, &mut headers);
            if let Err(e) = client
                .publish_with_headers(subject, headers, payload.into())
                .instrument(span)
                .await
            {
                tracing::warn!(error = %e, "sending a settlement signal");
            }
        }
    }
}
