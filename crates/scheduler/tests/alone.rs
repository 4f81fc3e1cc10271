//! The scheduler started alone, on a real nats-server child and Postgres: fed the
//! domain events intake and reconciliation would emit, it plans an invoice, fires its
//! steps on the tenant's test clock as dispatch commands, and on `invoice.paid` stops
//! the dunning and thanks the customer once. No other service runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use regua_contract::commands::{CommandKind, DispatchCommand};
use regua_contract::events::{CustomerState, InvoicePaid};
use regua_contract::inbound::Channel;
use regua_contract::{DomainEvent, subjects};
use regua_platform::{Config, nats};
use regua_scheduler::{Scheduler, SchedulerError};
use regua_testkit::service::{self, Running};
use regua_testkit::{NatsServer, advance_clock, eventually, read_work_queue};
use serde_json::Value;
use sqlx::PgPool;

const TENANT: &str = "solo";
const KEY: &str = "rk_solo_test-key-0123456789";
const START: &str = "2026-12-01T03:00:00Z";

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

struct World {
    _server: NatsServer,
    js: jetstream::Context,
    http: reqwest::Client,
    running: Running,
}

impl World {
    /// The scheduler alone, the tenant registered with the platform (as intake registers
    /// the tenants it creates, so its key opens the routes), and `tenant.created`
    /// published as intake's relay would.
    async fn new(pool: &PgPool) -> World {
        let server = NatsServer::start().await;
        let config = Config {
            scheduler_batch_size: 50,
            ..regua_testkit::service::config(&server.url(), pool)
        };
        let running = Running::start(&config, |p, shutdown| async move {
            let s = Scheduler::from_parts(p.config, p.pool, p.client, p.clock);
            s.start(&shutdown).await?;
            Ok::<_, SchedulerError>(s.router())
        })
        .await;
        let client = nats::connect(&server.url(), "test").await.unwrap();
        let w = World {
            _server: server,
            js: nats::jetstream(client),
            http: reqwest::Client::new(),
            running,
        };
        let created = service::register_tenant(pool, TENANT, KEY, at(START)).await;
        w.publish(DomainEvent::TenantCreated(created), START).await;
        w
    }

    /// Publishes `event` on the events stream, as its service's outbox relay would.
    async fn publish(&self, event: DomainEvent, occurred_at: &str) {
        service::publish_event(&self.js, TENANT, event, at(occurred_at)).await;
    }

    /// The debtor and its invoice `NF-1`, as intake would publish them.
    async fn open_invoice(&self, customer: CustomerState) {
        service::open_invoice(&self.js, TENANT, customer, at(START)).await;
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        service::get_tenant(&self.http, &self.running.base(), TENANT, KEY, path).await
    }

    async fn advance(&self, to: &str) {
        advance_clock(&self.http, &self.running.base(), TENANT, KEY, to).await;
    }

    /// The dispatch commands waiting in the commands stream (no dispatcher runs).
    async fn commands(&self) -> Vec<DispatchCommand> {
        read_work_queue(&self.js, subjects::STREAM_COMMANDS)
            .await
            .into_iter()
            .map(|(_, _, body)| serde_json::from_value(body).unwrap())
            .collect()
    }
}

#[sqlx::test(migrations = false)]
async fn the_scheduler_alone_plans_fires_and_stops_on_payment(pool: PgPool) {
    let w = World::new(&pool).await;
    w.open_invoice(service::customer_state()).await;

    // Planned from the events alone: the starter policy's six steps, all pending.
    let plan = eventually("the plan", Duration::from_secs(30), || async {
        let (status, plan) = w.get("invoices/NF-1/plan").await;
        (status == 200).then_some(plan)
    })
    .await;
    let steps: Vec<(&str, &str)> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("lembrete", "pending"),
            ("vence_hoje", "pending"),
            ("primeiro_aviso", "pending"),
            ("segundo_aviso", "pending"),
            ("aviso_negativacao", "pending"),
            ("negativacao", "pending"),
        ],
        "{plan}"
    );

    // The reminder fires on the test clock, as a command for the first usable channel.
    w.advance("2026-12-07T14:00:00Z").await;
    let commands = eventually("the reminder", Duration::from_secs(30), || async {
        let c = w.commands().await;
        (!c.is_empty()).then_some(c)
    })
    .await;
    assert_eq!(commands.len(), 1, "{commands:?}");
    let reminder = &commands[0];
    assert_eq!(
        (reminder.step.as_str(), reminder.kind, reminder.channel),
        ("lembrete", CommandKind::Step, Channel::Whatsapp)
    );
    assert_eq!(reminder.fallback, vec![Channel::Sms, Channel::Email]);
    assert_eq!(reminder.invoices[0].invoice_id, "NF-1");
    assert_eq!(reminder.creditor.cnpj, "11222333000181");

    // Paid: every pending step stops, and the thank-you goes out once; nothing else.
    w.publish(
        DomainEvent::InvoicePaid(InvoicePaid {
            invoice_id: "NF-1".into(),
            customer_id: "C-1".into(),
            paid_at: at("2026-12-08T12:00:00Z"),
            amount_paid_cents: 15_990,
            currency: "BRL".into(),
            days_late: 0,
            overpaid_cents: 0,
        }),
        "2026-12-08T12:00:00Z",
    )
    .await;
    eventually("the stop", Duration::from_secs(30), || async {
        let (_, plan) = w.get("invoices/NF-1/plan").await;
        let cancelled = plan["steps"]
            .as_array()?
            .iter()
            .filter(|s| s["state"] == "cancelled")
            .count();
        (cancelled == 5).then_some(())
    })
    .await;
    w.advance("2027-02-01T12:00:00Z").await;
    let commands = eventually("the thank-you", Duration::from_secs(30), || async {
        let c = w.commands().await;
        (c.len() >= 2).then_some(c)
    })
    .await;
    let after: Vec<(&str, CommandKind)> = commands[1..]
        .iter()
        .map(|c| (c.template.as_str(), c.kind))
        .collect();
    assert_eq!(after, vec![("agradecimento", CommandKind::Thanks)]);

    // No other service ran: intake's tables were never made.
    let intake: bool = sqlx::query_scalar("SELECT to_regclass('intake.invoices') IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(intake, "the scheduler started alone");
}

#[sqlx::test(migrations = false)]
async fn the_debtors_preferred_channel_goes_first(pool: PgPool) {
    let w = World::new(&pool).await;
    w.open_invoice(CustomerState {
        preferred_channel: Some(Channel::Email),
        ..service::customer_state()
    })
    .await;
    eventually("the plan", Duration::from_secs(30), || async {
        (w.get("invoices/NF-1/plan").await.0 == 200).then_some(())
    })
    .await;
    w.advance("2026-12-07T14:00:00Z").await;
    let commands = eventually("the reminder", Duration::from_secs(30), || async {
        let c = w.commands().await;
        (!c.is_empty()).then_some(c)
    })
    .await;
    // The starter policy's reminder lists WhatsApp, SMS, e-mail; the debtor prefers
    // e-mail, which the step lists: it goes first, the step's order follows.
    assert_eq!(commands[0].channel, Channel::Email);
    assert_eq!(commands[0].fallback, vec![Channel::Whatsapp, Channel::Sms]);
}

/// Invoices of one customer due at one instant merge into one message, up to 50
/// invoices and 256 KiB: past either, the rest go in further messages of the same
/// contact, so no command nears NATS's maximum payload and none is lost.
#[sqlx::test(migrations = false)]
async fn a_merged_message_is_split_by_count_and_by_size(pool: PgPool) {
    use regua_contract::events::{CustomerUpserted, InvoiceChanged};
    use regua_domain::message::{MAX_INVOICES_PER_MESSAGE, MAX_MESSAGE_BYTES};
    let w = World::new(&pool).await;
    // C-1 owes 120 invoices with short descriptions (the count splits them); C-2 owes
    // 30 whose descriptions are 20 KB each (past what intake accepts, but the scheduler
    // must not trust that: the size splits them).
    let mut all = Vec::new();
    for (customer, n, description) in [
        ("C-1", 120, "Plano fibra".to_owned()),
        ("C-2", 30, "x".repeat(20_000)),
    ] {
        let state = CustomerState {
            customer_id: customer.into(),
            ..service::customer_state()
        };
        w.publish(
            DomainEvent::CustomerUpserted(CustomerUpserted { customer: state }),
            START,
        )
        .await;
        for i in 1..=n {
            let invoice_id = format!("{customer}-NF-{i:03}");
            all.push(invoice_id.clone());
            let invoice = regua_contract::events::InvoiceState {
                invoice_id,
                customer_id: customer.into(),
                description: Some(description.clone()),
                ..service::invoice_state()
            };
            w.publish(
                DomainEvent::InvoiceOpened(InvoiceChanged { invoice }),
                START,
            )
            .await;
        }
    }
    eventually("the plans", Duration::from_secs(60), || async {
        (w.get("invoices/C-2-NF-030/plan").await.0 == 200).then_some(())
    })
    .await;
    w.advance("2026-12-07T14:00:00Z").await;
    all.sort();
    let commands = eventually(
        "every invoice in a message",
        Duration::from_secs(60),
        || async {
            let c = w.commands().await;
            let mut ids: Vec<String> = c
                .iter()
                .flat_map(|c| c.invoices.iter().map(|i| i.invoice_id.clone()))
                .collect();
            ids.sort();
            (ids == all).then_some(c)
        },
    )
    .await;
    let sizes = |customer: &str| -> Vec<usize> {
        commands
            .iter()
            .filter(|c| c.recipient.customer_id == customer)
            .map(|c| c.invoices.len())
            .collect()
    };
    let mut c1 = sizes("C-1");
    c1.sort_unstable();
    assert_eq!(
        c1,
        vec![20, MAX_INVOICES_PER_MESSAGE, MAX_INVOICES_PER_MESSAGE]
    );
    let c2 = sizes("C-2");
    assert!(c2.len() >= 3, "split by size: {c2:?}");
    let instant = commands[0].scheduled_for;
    for c in &commands {
        let bytes = serde_json::to_vec(c).unwrap().len();
        assert!(bytes <= MAX_MESSAGE_BYTES, "{bytes} bytes");
        assert_eq!(c.scheduled_for, instant, "one contact, one instant");
        assert_eq!(c.step, commands[0].step);
    }
}

/// A message that reached a dispatcher after its window closed (a backlog, a dispatcher
/// outage) is skipped there as `window_closed`; the scheduler plans its step again,
/// under a new command id, instead of losing the reminder. A redelivery of that event
/// changes nothing more, and a message skipped for another reason is not planned again.
#[sqlx::test(migrations = false)]
async fn a_message_that_came_after_its_window_is_planned_again(pool: PgPool) {
    use regua_contract::events::MessageEvent;
    let w = World::new(&pool).await;
    w.open_invoice(service::customer_state()).await;
    eventually("the plan", Duration::from_secs(30), || async {
        (w.get("invoices/NF-1/plan").await.0 == 200).then_some(())
    })
    .await;
    w.advance("2026-12-07T14:00:00Z").await;
    let first = eventually("the reminder", Duration::from_secs(30), || async {
        let c = w.commands().await;
        (c.len() == 1).then(|| c[0].clone())
    })
    .await;
    let skipped = |reason: &str, at: &str| {
        DomainEvent::MessageSkipped(MessageEvent {
            command_id: first.command_id.clone(),
            status: "skipped".into(),
            channel: first.channel,
            provider: "twilio".into(),
            provider_message_id: None,
            customer_id: "C-1".into(),
            invoice_ids: vec!["NF-1".into()],
            step: first.step.clone(),
            sent_at: None,
            at: at.parse().unwrap(),
            reason: Some(reason.into()),
            fallback_to: None,
            attempts: 0,
            segments: None,
        })
    };
    // Another reason: nothing happens.
    w.publish(
        skipped("opted_out", "2026-12-07T14:00:00Z"),
        "2026-12-07T14:00:00Z",
    )
    .await;
    let late = skipped("window_closed", "2026-12-07T14:00:00Z");
    w.publish(late.clone(), "2026-12-07T14:00:00Z").await;
    // Delivered twice, as JetStream may: planned again once.
    w.publish(late, "2026-12-07T14:00:00Z").await;
    w.advance("2026-12-07T15:00:00Z").await;
    let again = eventually("the reminder again", Duration::from_secs(30), || async {
        let c = w.commands().await;
        (c.len() >= 2).then_some(c)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = w.commands().await;
    assert_eq!(
        all.len(),
        2,
        "{:?}",
        all.iter().map(|c| &c.command_id).collect::<Vec<_>>()
    );
    let second = &again[1];
    assert_eq!(second.step, first.step);
    assert_eq!(second.command_id, format!("{}:r1", first.command_id));
    assert!(second.scheduled_for > first.scheduled_for);
    // The late message of the first plan, reported again after the second went out
    // (as a new event, not a redelivery): still nothing more.
    w.publish(
        skipped("window_closed", "2026-12-07T15:00:00Z"),
        "2026-12-07T15:00:00Z",
    )
    .await;
    w.advance("2026-12-07T16:00:00Z").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(w.commands().await.len(), 2);
    // The timeline says why.
    let (_, timeline) = w.get("invoices/NF-1/timeline").await;
    let text = timeline.to_string();
    assert!(text.contains("window_closed"), "{text}");
}
