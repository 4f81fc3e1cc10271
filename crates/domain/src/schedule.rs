//! Turning a policy into send instants, and deciding what a due step does.
//!
//! [`base_plan`] places every step of an invoice's régua in time: the business
//! calendar, the send window in the debtor's zone, and grace for good payers. [`fire`]
//! is the one decision the scheduler makes when an invoice's next step falls due:
//! supersede stale steps, respect the window and the contact caps (deferring, never
//! dropping), merge same-day messages for a customer, and keep the negativação notice
//! rule. [`simulate`] runs [`fire`] forward in time for a customer's invoices; the plan
//! preview and the property tests both use it, so the preview is the real decision.

use chrono::{DateTime, Days, NaiveDate, NaiveTime, TimeDelta, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::calendar::Calendar;
use crate::policy::{
    Action, Caps, NEGATIVACAO, NEGATIVACAO_NOTICE_DAYS, Notify, Policy, RiskClass,
};
use crate::window::local_to_utc;

/// One step placed in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub index: usize,
    pub name: String,
    pub send_at: DateTime<Utc>,
}

/// Every step of one invoice's régua, in order, with its base send instant (before
/// caps, which depend on what else the customer receives).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasePlan {
    pub due_date: NaiveDate,
    pub effective_due_date: NaiveDate,
    pub steps: Vec<PlannedStep>,
}

/// Places `policy`'s steps for an invoice due on `due_date`, for a debtor in `tz`.
///
/// - the effective due date is the next business day on or after `due_date`;
/// - steps before the due date count from `due_date` and move *earlier* to a send day;
/// - `D0` and later count from the effective due date and move *later*; good payers'
///   after-due steps move `grace_days` later;
/// - each instant is inside the send window; the order of steps is kept.
pub fn base_plan(
    policy: &Policy,
    cal: &Calendar,
    tz: Tz,
    due_date: NaiveDate,
    risk: RiskClass,
) -> BasePlan {
    let effective = cal.next_business_day(due_date);
    let window = &policy.send_window;
    let grace = if risk == RiskClass::Good {
        policy.grace_days
    } else {
        0
    };
    let mut steps: Vec<PlannedStep> = Vec::with_capacity(policy.steps.len());
    for (index, step) in policy.steps.iter().enumerate() {
        let days = step.at.0;
        let mut send_at = if days < 0 {
            let day = due_date
                .checked_sub_days(Days::new(u64::from(days.unsigned_abs())))
                .unwrap_or(due_date);
            window.on_or_before(day, step.time, tz, cal)
        } else {
            let extra = if days > 0 { grace } else { 0 };
            let day = effective
                .checked_add_days(Days::new(u64::from(days.unsigned_abs()) + u64::from(extra)))
                .unwrap_or(effective);
            window.on_or_after(day, step.time, tz, cal)
        };
        if let Some(prev) = steps.last() {
            send_at = send_at.max(prev.send_at);
        }
        steps.push(PlannedStep {
            index,
            name: step.name.clone(),
            send_at,
        });
    }
    BasePlan {
        due_date,
        effective_due_date: effective,
        steps,
    }
}

/// One message a customer received (or is receiving in this instant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub at: DateTime<Utc>,
    pub template: String,
}

/// A customer's contacts, for the caps. Kept sorted by instant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    contacts: Vec<Contact>,
}

const WEEK: TimeDelta = TimeDelta::days(7);

impl Ledger {
    pub fn new(mut contacts: Vec<Contact>) -> Self {
        contacts.sort_by_key(|c| c.at);
        Ledger { contacts }
    }

    pub fn push(&mut self, c: Contact) {
        let pos = self.contacts.partition_point(|x| x.at <= c.at);
        self.contacts.insert(pos, c);
    }

    pub fn contacts(&self) -> &[Contact] {
        &self.contacts
    }

    /// A message with `template` sent at exactly `at`: a same-instant message for
    /// another invoice of the customer joins it instead of counting again.
    pub fn same_message(&self, at: DateTime<Utc>, template: &str) -> bool {
        self.contacts
            .iter()
            .any(|c| c.at == at && c.template == template)
    }

    fn on_local_day(&self, at: DateTime<Utc>, tz: Tz) -> usize {
        let day = at.with_timezone(&tz).date_naive();
        self.contacts
            .iter()
            .filter(|c| c.at.with_timezone(&tz).date_naive() == day)
            .count()
    }

    /// Contacts in the rolling window `(at - 7 days, at]`, oldest first.
    fn in_week(&self, at: DateTime<Utc>) -> impl Iterator<Item = &Contact> {
        self.contacts
            .iter()
            .filter(move |c| c.at > at - WEEK && c.at <= at)
    }

    /// Why a message at `at` would exceed `caps`, if it would.
    pub fn capped(&self, caps: &Caps, at: DateTime<Utc>, tz: Tz) -> Option<DeferReason> {
        if self.on_local_day(at, tz) >= caps.per_day as usize {
            Some(DeferReason::CapPerDay)
        } else if self.in_week(at).count() >= caps.per_7_days as usize {
            Some(DeferReason::Cap7Days)
        } else {
            None
        }
    }

    /// The earliest instant at or after `at`, inside the window, where a message fits the
    /// caps.
    pub fn release(
        &self,
        caps: &Caps,
        at: DateTime<Utc>,
        tz: Tz,
        policy: &Policy,
        cal: &Calendar,
    ) -> DateTime<Utc> {
        let window = &policy.send_window;
        let mut t = window.next_open(at, tz, cal);
        for _ in 0..400 {
            match self.capped(caps, t, tz) {
                None => return t,
                Some(DeferReason::CapPerDay) => {
                    let next_day = t
                        .with_timezone(&tz)
                        .date_naive()
                        .checked_add_days(Days::new(1))
                        .unwrap_or_default();
                    t = window.next_open(
                        local_to_utc(tz, next_day.and_time(NaiveTime::MIN)),
                        tz,
                        cal,
                    );
                }
                Some(_) => {
                    let oldest = self.in_week(t).next().map(|c| c.at).unwrap_or(t);
                    t = window.next_open(oldest + WEEK, tz, cal);
                }
            }
        }
        t
    }
}

/// Why a step waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeferReason {
    /// Outside the send window.
    Window,
    CapPerDay,
    Cap7Days,
    /// Negativação waits until its written notice is old enough.
    PriorNotice,
}

/// Why a step was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// A later step was also due; only the most relevant one goes out.
    Superseded,
    /// A reminder before the due date that could only go out on or after it.
    StaleReminder,
    /// No channel of the step can reach the customer (missing contact or opt-out).
    NoUsableChannel,
    /// Negativação without a written notice sent first.
    NoPriorNotice,
    /// Offers belong to the negotiation feature, not built yet.
    OfferUnsupported,
}

/// What happened to one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StepState {
    /// A message goes out now. `merged` when it joins a same-instant message for another
    /// invoice of the customer.
    Sent {
        merged: bool,
    },
    Escalated {
        level: String,
    },
    Skipped {
        reason: SkipReason,
        superseded_by: Option<String>,
    },
    Deferred {
        until: DateTime<Utc>,
        reason: DeferReason,
    },
}

impl DeferReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeferReason::Window => "window",
            DeferReason::CapPerDay => "cap_per_day",
            DeferReason::Cap7Days => "cap_7_days",
            DeferReason::PriorNotice => "prior_notice",
        }
    }
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Superseded => "superseded",
            SkipReason::StaleReminder => "stale_reminder",
            SkipReason::NoUsableChannel => "no_usable_channel",
            SkipReason::NoPriorNotice => "no_prior_notice",
            SkipReason::OfferUnsupported => "offer_unsupported",
        }
    }
}

impl StepState {
    /// `sent`, `escalated`, `skipped` or `deferred`.
    pub fn name(&self) -> &'static str {
        match self {
            StepState::Sent { .. } => "sent",
            StepState::Escalated { .. } => "escalated",
            StepState::Skipped { .. } => "skipped",
            StepState::Deferred { .. } => "deferred",
        }
    }

    /// Why, as a label from a closed set (metrics): `merged`, `escalation`, a skip or
    /// deferral reason, or empty.
    pub fn reason_code(&self) -> &'static str {
        match self {
            StepState::Sent { merged: false } => "",
            StepState::Sent { merged: true } => "merged",
            StepState::Escalated { .. } => "escalation",
            StepState::Skipped { reason, .. } => reason.as_str(),
            StepState::Deferred { reason, .. } => reason.as_str(),
        }
    }

    /// Why, as the step log and the plan preview show it.
    pub fn reason(&self) -> Option<String> {
        match self {
            StepState::Sent { merged: false } => None,
            StepState::Sent { merged: true } => {
                Some("merged: one message lists the customer's invoices".into())
            }
            StepState::Escalated { level } => Some(level.clone()),
            StepState::Skipped {
                superseded_by: Some(by),
                ..
            } => Some(format!("superseded by {by}")),
            StepState::Skipped { reason, .. } => Some(reason.as_str().to_owned()),
            StepState::Deferred { until, reason } => {
                Some(format!("{} until {}", reason.as_str(), until.to_rfc3339()))
            }
        }
    }
}

/// One decision about one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepEvent {
    pub index: usize,
    pub name: String,
    /// The step's base send instant.
    pub planned_at: DateTime<Utc>,
    /// When the decision was made.
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub state: StepState,
}

/// Where an invoice is in its régua. The schedule stores exactly this per invoice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Index of the next step to decide.
    pub next: usize,
    /// Set when that step was deferred.
    pub deferred_to: Option<DateTime<Utc>>,
    /// When the negativação notice went out.
    pub notice_sent_at: Option<DateTime<Utc>>,
}

impl Progress {
    /// When the next step falls due; `None` when the régua is done.
    pub fn next_at(&self, plan: &BasePlan) -> Option<DateTime<Utc>> {
        let step = plan.steps.get(self.next)?;
        Some(self.deferred_to.unwrap_or(step.send_at))
    }

    /// The progress after a policy change: the first step of the new plan not already
    /// decided (by name) and not before the last decision, so nothing is doubled.
    pub fn migrate(
        plan: &BasePlan,
        decided: &[String],
        last_decided_at: Option<DateTime<Utc>>,
        notice_sent_at: Option<DateTime<Utc>>,
    ) -> Progress {
        let next = plan
            .steps
            .iter()
            .position(|s| {
                !decided.contains(&s.name) && last_decided_at.is_none_or(|t| s.send_at > t)
            })
            .unwrap_or(plan.steps.len());
        Progress {
            next,
            deferred_to: None,
            notice_sent_at,
        }
    }
}

/// The decision context of one invoice.
pub struct Subject<'a> {
    pub policy: &'a Policy,
    pub cal: &'a Calendar,
    pub tz: Tz,
    pub plan: &'a BasePlan,
}

/// What [`fire`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    pub events: Vec<StepEvent>,
    pub progress: Progress,
    /// The notify step that sends now, if any (for the command).
    pub send: Option<usize>,
}

/// Decides the invoice's due steps at `now` (≥ its next instant). `reachable` says
/// whether a notify step has a usable channel for this customer.
pub fn fire(
    s: &Subject<'_>,
    progress: Progress,
    now: DateTime<Utc>,
    ledger: &Ledger,
    reachable: &dyn Fn(&Notify) -> bool,
) -> Fired {
    let mut events = Vec::new();
    let steps = &s.plan.steps;
    if progress.next_at(s.plan).is_none_or(|t| t > now) {
        return Fired {
            events,
            progress,
            send: None,
        };
    }
    // The next step is due (its instant, or its deferral, has come); later ones are due
    // when their own instant has.
    let due: Vec<usize> = (progress.next..steps.len())
        .filter(|&i| i == progress.next || steps[i].send_at <= now)
        .collect();
    let Some(&last) = due.last() else {
        return Fired {
            events,
            progress,
            send: None,
        };
    };
    let needs_notice = |i: usize| {
        matches!(s.policy.steps[i].action(), Action::Escalate(e) if e.level == NEGATIVACAO)
            && progress.notice_sent_at.is_none()
    };
    let is_notice = |i: usize| matches!(s.policy.steps[i].action(), Action::Notify(n) if n.prior_notice_of.as_deref() == Some(NEGATIVACAO));
    let mut chosen = last;
    if needs_notice(last)
        && let Some(&notice) = due.iter().rev().find(|&&i| is_notice(i))
    {
        chosen = notice;
    }
    let event = |i: usize, state: StepState| StepEvent {
        index: i,
        name: steps[i].name.clone(),
        planned_at: steps[i].send_at,
        at: now,
        state,
    };
    for &i in due.iter().filter(|&&i| i < chosen) {
        events.push(event(
            i,
            StepState::Skipped {
                reason: SkipReason::Superseded,
                superseded_by: Some(steps[chosen].name.clone()),
            },
        ));
    }
    let mut next = Progress {
        next: chosen + 1,
        deferred_to: None,
        notice_sent_at: progress.notice_sent_at,
    };
    let mut send = None;
    let step = &s.policy.steps[chosen];
    let skipped = |reason| StepState::Skipped {
        reason,
        superseded_by: None,
    };
    let state = match step.action() {
        Action::Notify(n) => {
            let local_day = now.with_timezone(&s.tz).date_naive();
            if step.at.0 < 0 && local_day >= s.plan.due_date {
                skipped(SkipReason::StaleReminder)
            } else if !reachable(n) {
                skipped(SkipReason::NoUsableChannel)
            } else if ledger.same_message(now, &n.template) {
                send = Some(chosen);
                StepState::Sent { merged: true }
            } else if !s.policy.send_window.contains(now, s.tz, s.cal) {
                let until = s.policy.send_window.next_open(now, s.tz, s.cal);
                next = Progress {
                    next: chosen,
                    deferred_to: Some(until),
                    ..next
                };
                StepState::Deferred {
                    until,
                    reason: DeferReason::Window,
                }
            } else if let Some(reason) = ledger.capped(&s.policy.caps, now, s.tz) {
                let until = ledger.release(&s.policy.caps, now, s.tz, s.policy, s.cal);
                next = Progress {
                    next: chosen,
                    deferred_to: Some(until),
                    ..next
                };
                StepState::Deferred { until, reason }
            } else {
                send = Some(chosen);
                StepState::Sent { merged: false }
            }
        }
        Action::Escalate(e) => {
            if e.level != NEGATIVACAO {
                StepState::Escalated {
                    level: e.level.clone(),
                }
            } else {
                match progress.notice_sent_at {
                    None => skipped(SkipReason::NoPriorNotice),
                    Some(sent) => {
                        let ready = sent + TimeDelta::days(i64::from(NEGATIVACAO_NOTICE_DAYS));
                        if now < ready {
                            next = Progress {
                                next: chosen,
                                deferred_to: Some(ready),
                                ..next
                            };
                            StepState::Deferred {
                                until: ready,
                                reason: DeferReason::PriorNotice,
                            }
                        } else {
                            StepState::Escalated {
                                level: e.level.clone(),
                            }
                        }
                    }
                }
            }
        }
        Action::Offer => skipped(SkipReason::OfferUnsupported),
    };
    if matches!(state, StepState::Sent { .. }) && is_notice(chosen) {
        next.notice_sent_at = Some(now);
    }
    events.push(event(chosen, state));
    Fired {
        events,
        progress: next,
        send,
    }
}

/// One invoice in a simulation.
pub struct SimInvoice<'a> {
    pub subject: Subject<'a>,
    pub progress: Progress,
}

/// Runs the customer's invoices forward from their current progress until `until`
/// (or until every régua is done), exactly as the scheduler would fire them: in time
/// order, same-instant invoices in slice order. Returns (invoice index, event) in order.
pub fn simulate(
    invoices: &mut [SimInvoice<'_>],
    ledger: &mut Ledger,
    until: Option<DateTime<Utc>>,
    reachable: &dyn Fn(&Notify) -> bool,
) -> Vec<(usize, StepEvent)> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let Some(now) = invoices
            .iter()
            .filter_map(|i| i.progress.next_at(i.subject.plan))
            .min()
        else {
            break;
        };
        if until.is_some_and(|u| now > u) {
            break;
        }
        for (k, inv) in invoices.iter_mut().enumerate() {
            if inv.progress.next_at(inv.subject.plan) != Some(now) {
                continue;
            }
            let fired = fire(&inv.subject, inv.progress, now, ledger, reachable);
            if let Some(i) = fired.send
                && let Action::Notify(n) = inv.subject.policy.steps[i].action()
                && !ledger.same_message(now, &n.template)
            {
                ledger.push(Contact {
                    at: now,
                    template: n.template.clone(),
                });
            }
            inv.progress = fired.progress;
            out.extend(fired.events.into_iter().map(|e| (k, e)));
        }
    }
    out
}

#[cfg(test)]
mod tests;
