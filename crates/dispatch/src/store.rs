//! The dispatchers' Postgres state: attempts, guard facts, opt-outs, and the events
//! and fallback commands they put in the outbox.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use regua_contract::commands::DispatchCommand;
use regua_contract::events::MessageStatus;
use regua_contract::events::{CustomerChannelOptedIn, CustomerChannelOptedOut, MessageEvent};
use regua_contract::inbound::Channel;
use regua_contract::{DomainEvent, subjects};
use regua_platform::outbox::{self, OutboxMessage};
use sqlx::{PgConnection, Row};

use crate::{DispatchError, OUTBOX};

/// Where an attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Sending,
    Retry,
    Sent,
    Failed,
    Skipped,
    Unknown,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Sending => "sending",
            State::Retry => "retry",
            State::Sent => "sent",
            State::Failed => "failed",
            State::Skipped => "skipped",
            State::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> State {
        match s {
            "sending" => State::Sending,
            "retry" => State::Retry,
            "sent" => State::Sent,
            "failed" => State::Failed,
            "skipped" => State::Skipped,
            "unknown" => State::Unknown,
            _ => State::Pending,
        }
    }

    /// Whether the attempt is over: a redelivery of its command changes nothing.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Sent | State::Failed | State::Skipped | State::Unknown
        )
    }
}

/// A command about to be claimed, in the state the guard decided for it.
pub struct NewAttempt<'a> {
    pub cmd: &'a DispatchCommand,
    pub address_key: Option<String>,
    pub provider: &'static str,
    pub json: String,
    /// `sending` (counted as a call), `skipped` or `failed`.
    pub state: State,
    pub reason: Option<String>,
}

const SEP: &str = "\u{1f}";

/// Inserts the attempts of commands never seen, in their decided state, and returns
/// their keys. A command already claimed (or being claimed by a transaction that
/// commits first) is left alone: [`lock`] reads it.
pub async fn claim(
    conn: &mut PgConnection,
    channel: Channel,
    items: &[NewAttempt<'_>],
) -> Result<HashSet<(String, String)>, sqlx::Error> {
    let mut tenants = Vec::with_capacity(items.len());
    let mut ids = Vec::with_capacity(items.len());
    let mut customers = Vec::with_capacity(items.len());
    let mut addresses = Vec::with_capacity(items.len());
    let mut steps = Vec::with_capacity(items.len());
    let mut invoices = Vec::with_capacity(items.len());
    let mut providers = Vec::with_capacity(items.len());
    let mut clocks = Vec::with_capacity(items.len());
    let mut commands = Vec::with_capacity(items.len());
    let mut states = Vec::with_capacity(items.len());
    let mut reasons = Vec::with_capacity(items.len());
    let mut calls = Vec::with_capacity(items.len());
    for a in items {
        tenants.push(a.cmd.tenant.as_str());
        ids.push(a.cmd.command_id.as_str());
        customers.push(a.cmd.recipient.customer_id.as_str());
        addresses.push(a.address_key.as_deref());
        steps.push(a.cmd.step.as_str());
        invoices.push(
            a.cmd
                .invoices
                .iter()
                .map(|i| i.invoice_id.as_str())
                .collect::<Vec<_>>()
                .join(SEP),
        );
        providers.push(a.provider);
        clocks.push(a.cmd.test_clock);
        commands.push(a.json.as_str());
        states.push(a.state.as_str());
        reasons.push(a.reason.as_deref());
        calls.push(i32::from(a.state == State::Sending));
    }
    let rows = sqlx::query(
        "INSERT INTO dispatch.attempts (tenant, command_id, channel, state, customer_id, address_key, \
         step, invoice_ids, provider, test_clock, command, reason, calls) \
         SELECT t, c, $1, s, cu, ad, st, string_to_array(inv, $11), pr, tc, cmd::jsonb, r, n \
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                     $8::text[], $9::bool[], $10::text[], $12::text[], $13::text[], $14::int[]) \
              AS u(t, c, cu, ad, st, inv, pr, tc, cmd, s, r, n) \
         ON CONFLICT (tenant, command_id, channel) DO NOTHING \
         RETURNING tenant, command_id",
    )
    .bind(channel.as_str())
    .bind(&tenants)
    .bind(&ids)
    .bind(&customers)
    .bind(&addresses)
    .bind(&steps)
    .bind(&invoices)
    .bind(&providers)
    .bind(&clocks)
    .bind(&commands)
    .bind(SEP)
    .bind(&states)
    .bind(&reasons)
    .bind(&calls)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// Locks the attempts of commands seen before; returns each one's state and calls.
pub async fn lock(
    conn: &mut PgConnection,
    channel: Channel,
    cmds: &[&DispatchCommand],
) -> Result<HashMap<(String, String), (State, i32)>, sqlx::Error> {
    if cmds.is_empty() {
        return Ok(HashMap::new());
    }
    let tenants: Vec<&str> = cmds.iter().map(|c| c.tenant.as_str()).collect();
    let ids: Vec<&str> = cmds.iter().map(|c| c.command_id.as_str()).collect();
    let rows = sqlx::query(
        "SELECT tenant, command_id, state, calls FROM dispatch.attempts \
         WHERE channel = $1 AND (tenant, command_id) IN (SELECT * FROM UNNEST($2::text[], $3::text[])) \
         ORDER BY tenant, command_id FOR UPDATE",
    )
    .bind(channel.as_str())
    .bind(&tenants)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let state: String = r.try_get("state")?;
        out.insert(
            (r.try_get("tenant")?, r.try_get("command_id")?),
            (State::parse(&state), r.try_get("calls")?),
        );
    }
    Ok(out)
}

/// What the guard needs to know about a batch.
#[derive(Debug, Default)]
pub struct GuardFacts {
    pub closed: HashSet<(String, String)>,
    pub opted_out: HashSet<(String, String)>,
    /// Customers whose latest upsert says no WhatsApp opt-in.
    pub no_whatsapp: HashSet<(String, String)>,
}

/// Loads the guard's facts for `cmds` on `channel`.
pub async fn guard_facts(
    conn: &mut PgConnection,
    channel: Channel,
    cmds: &[&DispatchCommand],
) -> Result<GuardFacts, sqlx::Error> {
    let (mut it, mut ii) = (Vec::new(), Vec::new());
    let (mut ct, mut cc) = (Vec::new(), Vec::new());
    for c in cmds {
        for i in &c.invoices {
            it.push(c.tenant.as_str());
            ii.push(i.invoice_id.as_str());
        }
        ct.push(c.tenant.as_str());
        cc.push(c.recipient.customer_id.as_str());
    }
    let pairs =
        |rows: Vec<sqlx::postgres::PgRow>| -> Result<HashSet<(String, String)>, sqlx::Error> {
            rows.into_iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect()
        };
    let closed = pairs(
        sqlx::query(
            "SELECT tenant, invoice_id FROM dispatch.closed_invoices \
             WHERE (tenant, invoice_id) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))",
        )
        .bind(&it)
        .bind(&ii)
        .fetch_all(&mut *conn)
        .await?,
    )?;
    let opted_out = pairs(
        sqlx::query(
            "SELECT tenant, customer_id FROM dispatch.opt_outs WHERE channel = $3 \
             AND (tenant, customer_id) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))",
        )
        .bind(&ct)
        .bind(&cc)
        .bind(channel.as_str())
        .fetch_all(&mut *conn)
        .await?,
    )?;
    let no_whatsapp = if channel == Channel::Whatsapp {
        pairs(
            sqlx::query(
                "SELECT tenant, customer_id FROM dispatch.customers WHERE NOT whatsapp_opt_in \
                 AND (tenant, customer_id) IN (SELECT * FROM UNNEST($1::text[], $2::text[]))",
            )
            .bind(&ct)
            .bind(&cc)
            .fetch_all(&mut *conn)
            .await?,
        )?
    } else {
        HashSet::new()
    };
    Ok(GuardFacts {
        closed,
        opted_out,
        no_whatsapp,
    })
}

/// One attempt's new state.
#[derive(Debug, Clone)]
pub struct Update {
    pub tenant: String,
    pub command_id: String,
    pub state: State,
    pub provider_message_id: Option<String>,
    pub reason: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    pub segments: Option<i32>,
    /// Count this update as a provider call.
    pub call: bool,
    /// The trace the message was sent in.
    pub traceparent: Option<String>,
}

impl Update {
    /// `cmd`'s attempt moving to `state`, with nothing else to record yet.
    pub fn new(cmd: &DispatchCommand, state: State) -> Update {
        Update {
            tenant: cmd.tenant.clone(),
            command_id: cmd.command_id.clone(),
            state,
            provider_message_id: None,
            reason: None,
            sent_at: None,
            segments: None,
            call: false,
            traceparent: None,
        }
    }
}

/// Applies `updates` on `channel` in one statement.
pub async fn update(
    conn: &mut PgConnection,
    channel: Channel,
    updates: &[Update],
) -> Result<(), sqlx::Error> {
    if updates.is_empty() {
        return Ok(());
    }
    let mut t = Vec::new();
    let mut c = Vec::new();
    let mut s = Vec::new();
    let mut p = Vec::new();
    let mut r = Vec::new();
    let mut at = Vec::new();
    let mut seg = Vec::new();
    let mut call = Vec::new();
    let mut tp = Vec::new();
    for u in updates {
        tp.push(u.traceparent.as_deref());
        t.push(u.tenant.as_str());
        c.push(u.command_id.as_str());
        s.push(u.state.as_str());
        p.push(u.provider_message_id.as_deref());
        r.push(u.reason.as_deref());
        at.push(u.sent_at);
        seg.push(u.segments);
        call.push(i32::from(u.call));
    }
    sqlx::query(
        "UPDATE dispatch.attempts a SET state = u.s, \
         provider_message_id = coalesce(u.p, a.provider_message_id), reason = u.r, \
         sent_at = coalesce(u.at, a.sent_at), segments = coalesce(u.seg, a.segments), \
         calls = a.calls + u.call, traceparent = coalesce(u.tp, a.traceparent), updated_at = now() \
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], \
                     $8::int[], $9::int[], $10::text[]) AS u(t, c, s, p, r, at, seg, call, tp) \
         WHERE a.channel = $1 AND a.tenant = u.t AND a.command_id = u.c",
    )
    .bind(channel.as_str())
    .bind(&t)
    .bind(&c)
    .bind(&s)
    .bind(&p)
    .bind(&r)
    .bind(&at)
    .bind(&seg)
    .bind(&call)
    .bind(&tp)
    .execute(conn)
    .await?;
    Ok(())
}

/// What a `message.*` event says beyond the command.
#[derive(Debug, Clone, Default)]
pub struct EventFacts {
    pub provider_message_id: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub fallback_to: Option<Channel>,
    pub attempts: u32,
    pub segments: Option<u32>,
}

/// A `message.*` event about `cmd` on `channel`.
pub fn message_event(
    cmd: &DispatchCommand,
    channel: Channel,
    provider: &str,
    kind: MessageStatus,
    at: DateTime<Utc>,
    facts: EventFacts,
    traceparent: Option<String>,
) -> Result<OutboxMessage, DispatchError> {
    let data = MessageEvent {
        command_id: cmd.command_id.clone(),
        status: kind.as_str().to_owned(),
        channel,
        provider: provider.to_owned(),
        provider_message_id: facts.provider_message_id,
        customer_id: cmd.recipient.customer_id.clone(),
        invoice_ids: cmd.invoices.iter().map(|i| i.invoice_id.clone()).collect(),
        step: cmd.step.clone(),
        sent_at: facts.sent_at,
        at,
        reason: facts.reason,
        fallback_to: facts.fallback_to,
        attempts: facts.attempts,
        segments: facts.segments,
    };
    Ok(outbox::event_message(
        at,
        &cmd.tenant,
        &kind.event(data),
        &cmd.command_id,
        &cmd.command_id,
        traceparent,
    )?)
}

/// The `kind` event of a message that ends on `channel`, followed, when `fallback` is
/// asked and the step has a next channel, by the command moved there (named in the
/// event's `fallback_to`).
#[allow(clippy::too_many_arguments)]
pub fn ended(
    cmd: &DispatchCommand,
    channel: Channel,
    provider: &str,
    kind: MessageStatus,
    at: DateTime<Utc>,
    mut facts: EventFacts,
    fallback: bool,
    traceparent: Option<String>,
) -> Result<Vec<OutboxMessage>, DispatchError> {
    let moved = if fallback {
        self::fallback(cmd, at, traceparent.clone())?
    } else {
        None
    };
    facts.fallback_to = moved.as_ref().map(|(next, _)| *next);
    if let Some((next, _)) = &moved {
        metrics::counter!(
            regua_platform::metrics::DISPATCH_FALLBACKS,
            "from" => channel.as_str(),
            "to" => next.as_str(),
        )
        .increment(1);
    }
    let mut out = vec![message_event(
        cmd,
        channel,
        provider,
        kind,
        at,
        facts,
        traceparent,
    )?];
    out.extend(moved.map(|(_, m)| m));
    Ok(out)
}

/// The command moved to its next channel, if it has one.
pub fn fallback(
    cmd: &DispatchCommand,
    now: DateTime<Utc>,
    traceparent: Option<String>,
) -> Result<Option<(Channel, OutboxMessage)>, DispatchError> {
    let Some((&next, rest)) = cmd.fallback.split_first() else {
        return Ok(None);
    };
    let mut moved = cmd.clone();
    moved.channel = next;
    moved.fallback = rest.to_vec();
    Ok(Some((
        next,
        OutboxMessage {
            id: outbox::new_id(now),
            subject: subjects::dispatch(&cmd.tenant, next),
            payload: serde_json::to_vec(&moved)?,
            traceparent,
        },
    )))
}

/// Opts `customer_id` out of `channel` (`out`) or back in, as `source` asked; when that
/// changed anything, emits `customer.channel_opted_out` or `customer.channel_opted_in`.
pub async fn set_opt_out(
    conn: &mut PgConnection,
    tenant: &str,
    customer_id: &str,
    channel: Channel,
    source: &'static str,
    now: DateTime<Utc>,
    out: bool,
) -> Result<bool, DispatchError> {
    let changed = if out {
        sqlx::query(
            "INSERT INTO dispatch.opt_outs (tenant, customer_id, channel, source, at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(tenant)
        .bind(customer_id)
        .bind(channel.as_str())
        .bind(source)
        .bind(now)
    } else {
        sqlx::query(
            "DELETE FROM dispatch.opt_outs WHERE tenant = $1 AND customer_id = $2 AND channel = $3",
        )
        .bind(tenant)
        .bind(customer_id)
        .bind(channel.as_str())
    }
    .execute(&mut *conn)
    .await?
    .rows_affected()
        > 0;
    if changed {
        metrics::counter!(
            regua_platform::metrics::DISPATCH_OPT_OUTS,
            "channel" => channel.as_str(),
            "source" => source,
            "direction" => if out { "out" } else { "in" },
        )
        .increment(1);
        let (customer_id, source) = (customer_id.to_owned(), source.to_owned());
        let correlation = customer_id.clone();
        let event = if out {
            DomainEvent::CustomerChannelOptedOut(CustomerChannelOptedOut {
                customer_id,
                channel,
                source: source.clone(),
            })
        } else {
            DomainEvent::CustomerChannelOptedIn(CustomerChannelOptedIn {
                customer_id,
                channel,
                source: source.clone(),
            })
        };
        let event = outbox::event_message(now, tenant, &event, &correlation, &source, None)?;
        OUTBOX.enqueue(conn, &[event]).await?;
    }
    Ok(changed)
}

/// The customers (tenant, customer id) that were sent to `address_key` on `channel`.
pub async fn customers_at(
    conn: &mut PgConnection,
    channel: Channel,
    address_key: &str,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT DISTINCT tenant, customer_id FROM dispatch.attempts \
         WHERE channel = $1 AND address_key = $2",
    )
    .bind(channel.as_str())
    .bind(address_key)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}
