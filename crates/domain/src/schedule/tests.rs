use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDateTime, Timelike};
use proptest::prelude::*;

use super::*;
use crate::policy::{Channel, Escalate, Offset, Step, padrao};

const SP: Tz = chrono_tz::America::Sao_Paulo;

fn d(y: i32, m: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, day).unwrap()
}

fn local(at: DateTime<Utc>, tz: Tz) -> NaiveDateTime {
    at.with_timezone(&tz).naive_local()
}

fn anyone(_: &Notify) -> bool {
    true
}

#[test]
fn padrao_on_a_saturday_due_date() {
    let p = padrao();
    let cal = p.calendar.calendar();
    // Due Saturday 2026-03-14: effective Monday 16th.
    let plan = base_plan(&p, &cal, SP, d(2026, 3, 14), RiskClass::Regular);
    assert_eq!(plan.effective_due_date, d(2026, 3, 16));
    let at: BTreeMap<&str, NaiveDateTime> = plan
        .steps
        .iter()
        .map(|s| (s.name.as_str(), local(s.send_at, SP)))
        .collect();
    assert_eq!(
        at["lembrete"],
        d(2026, 3, 11).and_hms_opt(10, 0, 0).unwrap(),
        "D-3 from the printed date"
    );
    assert_eq!(
        at["vence_hoje"],
        d(2026, 3, 16).and_hms_opt(9, 0, 0).unwrap(),
        "D0 on the effective date"
    );
    assert_eq!(
        at["primeiro_aviso"],
        d(2026, 3, 19).and_hms_opt(10, 0, 0).unwrap()
    );
}

#[test]
fn padrao_around_carnaval_and_sunday() {
    let p = padrao();
    let cal = p.calendar.calendar();
    // Due Carnaval Monday 2026-02-16: effective Ash Wednesday; D-3 is Friday 13th.
    let plan = base_plan(&p, &cal, SP, d(2026, 2, 16), RiskClass::Regular);
    assert_eq!(plan.effective_due_date, d(2026, 2, 18));
    assert_eq!(local(plan.steps[0].send_at, SP).date(), d(2026, 2, 13));
    assert_eq!(local(plan.steps[1].send_at, SP).date(), d(2026, 2, 18));
    // Due Wednesday 2026-03-18: D-3 is Sunday 15th, moved earlier to Saturday 14th.
    let plan = base_plan(&p, &cal, SP, d(2026, 3, 18), RiskClass::Regular);
    assert_eq!(
        local(plan.steps[0].send_at, SP),
        d(2026, 3, 14).and_hms_opt(10, 0, 0).unwrap()
    );
    // Due Sunday 2027-03-28 (Easter): Good Friday the 26th closed; effective Monday 29th.
    let plan = base_plan(&p, &cal, SP, d(2027, 3, 28), RiskClass::Regular);
    assert_eq!(plan.effective_due_date, d(2027, 3, 29));
    assert_eq!(
        local(plan.steps[0].send_at, SP).date(),
        d(2027, 3, 25),
        "D-3 is Thursday 25th"
    );
}

#[test]
fn good_payers_get_grace_after_the_due_date() {
    let p = padrao();
    let cal = p.calendar.calendar();
    let regular = base_plan(&p, &cal, SP, d(2026, 3, 10), RiskClass::Regular);
    let good = base_plan(&p, &cal, SP, d(2026, 3, 10), RiskClass::Good);
    assert_eq!(regular.steps[0], good.steps[0], "pre-due unchanged");
    assert_eq!(regular.steps[1], good.steps[1], "D0 unchanged");
    assert!(good.steps[2].send_at >= regular.steps[2].send_at + TimeDelta::days(3));
}

#[test]
fn after_downtime_only_the_most_relevant_step_goes() {
    let p = padrao();
    let cal = p.calendar.calendar();
    let plan = base_plan(&p, &cal, SP, d(2026, 3, 10), RiskClass::Regular);
    let s = Subject {
        policy: &p,
        cal: &cal,
        tz: SP,
        plan: &plan,
    };
    // Down from before D-3 until the morning after D+3's send time.
    let now = plan.steps[2].send_at + TimeDelta::hours(1);
    let fired = fire(&s, Progress::default(), now, &Ledger::default(), &anyone);
    let states: Vec<(&str, &StepState)> = fired
        .events
        .iter()
        .map(|e| (e.name.as_str(), &e.state))
        .collect();
    assert_eq!(states.len(), 3);
    assert!(matches!(
        states[0].1,
        StepState::Skipped {
            reason: SkipReason::Superseded,
            ..
        }
    ));
    assert!(matches!(
        states[1].1,
        StepState::Skipped {
            reason: SkipReason::Superseded,
            ..
        }
    ));
    assert_eq!(
        states[2],
        ("primeiro_aviso", &StepState::Sent { merged: false })
    );
    assert_eq!(fired.progress.next, 3);
}

#[test]
fn a_reminder_never_goes_out_on_or_after_the_due_date() {
    let p = Policy::parse(
        "steps:\n  - {name: lembrete, at: D-5, notify: {channels: [email], template: lembrete_vencimento}}\n",
    )
    .unwrap();
    let cal = p.calendar.calendar();
    let plan = base_plan(&p, &cal, SP, d(2026, 3, 10), RiskClass::Regular);
    let s = Subject {
        policy: &p,
        cal: &cal,
        tz: SP,
        plan: &plan,
    };
    let late = local_to_utc(SP, d(2026, 3, 10).and_hms_opt(9, 0, 0).unwrap());
    let fired = fire(&s, Progress::default(), late, &Ledger::default(), &anyone);
    assert!(matches!(
        fired.events[0].state,
        StepState::Skipped {
            reason: SkipReason::StaleReminder,
            ..
        }
    ));
    assert_eq!(fired.send, None);
}

#[test]
fn negativacao_waits_for_its_notice() {
    let p = padrao();
    let cal = p.calendar.calendar();
    let plan = base_plan(&p, &cal, SP, d(2026, 3, 10), RiskClass::Regular);
    let s = Subject {
        policy: &p,
        cal: &cal,
        tz: SP,
        plan: &plan,
    };
    // Everything due at once after a long outage: the notice goes, negativação waits.
    let now = plan.steps[5].send_at + TimeDelta::days(1);
    let fired = fire(&s, Progress::default(), now, &Ledger::default(), &anyone);
    let last = fired.events.last().unwrap();
    assert_eq!(last.name, "aviso_negativacao");
    assert_eq!(last.state, StepState::Sent { merged: false });
    assert_eq!(fired.progress.notice_sent_at, Some(now));
    let mut ledger = Ledger::default();
    ledger.push(Contact {
        at: now,
        template: "aviso_previo_negativacao".into(),
    });
    let next_at = fired.progress.next_at(&plan).unwrap();
    let again = fire(&s, fired.progress, next_at, &ledger, &anyone);
    assert!(matches!(
        again.events.last().unwrap().state,
        StepState::Deferred {
            reason: DeferReason::PriorNotice,
            ..
        }
    ));
    let ready = again.progress.next_at(&plan).unwrap();
    assert_eq!(ready, now + TimeDelta::days(10));
    let done = fire(&s, again.progress, ready, &ledger, &anyone);
    assert_eq!(
        done.events.last().unwrap().state,
        StepState::Escalated {
            level: "negativacao".into()
        }
    );
}

#[test]
fn same_day_invoices_share_one_message() {
    let p = padrao();
    let cal = p.calendar.calendar();
    let a = base_plan(&p, &cal, SP, d(2026, 3, 10), RiskClass::Regular);
    let b = base_plan(&p, &cal, SP, d(2026, 3, 10), RiskClass::Regular);
    let mut invoices = vec![
        SimInvoice {
            subject: Subject {
                policy: &p,
                cal: &cal,
                tz: SP,
                plan: &a,
            },
            progress: Progress::default(),
        },
        SimInvoice {
            subject: Subject {
                policy: &p,
                cal: &cal,
                tz: SP,
                plan: &b,
            },
            progress: Progress::default(),
        },
    ];
    let mut ledger = Ledger::default();
    let events = simulate(
        &mut invoices,
        &mut ledger,
        Some(a.steps[0].send_at),
        &anyone,
    );
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].1.state, StepState::Sent { merged: false });
    assert_eq!(events[1].1.state, StepState::Sent { merged: true });
    assert_eq!(ledger.contacts().len(), 1);
}

#[test]
fn caps_defer_and_never_drop() {
    // Two invoices of one customer due a day apart: D-3 of the second collides with the
    // first's cap on the same day and is deferred.
    let p = Policy::parse("steps:\n  - {name: a, at: D-3, time: '10:00', notify: {channels: [sms], template: aviso_atraso}}\n  - {name: b, at: D-2, time: '10:00', notify: {channels: [sms], template: aviso_atraso_firme}}\n").unwrap();
    let cal = p.calendar.calendar();
    let one = base_plan(&p, &cal, SP, d(2026, 3, 11), RiskClass::Regular);
    let two = base_plan(&p, &cal, SP, d(2026, 3, 10), RiskClass::Regular);
    let mut invoices = vec![
        SimInvoice {
            subject: Subject {
                policy: &p,
                cal: &cal,
                tz: SP,
                plan: &one,
            },
            progress: Progress::default(),
        },
        SimInvoice {
            subject: Subject {
                policy: &p,
                cal: &cal,
                tz: SP,
                plan: &two,
            },
            progress: Progress::default(),
        },
    ];
    let mut ledger = Ledger::default();
    let events = simulate(&mut invoices, &mut ledger, None, &anyone);
    assert!(events.iter().any(|(_, e)| matches!(
        e.state,
        StepState::Deferred {
            reason: DeferReason::CapPerDay,
            ..
        }
    )));
    let terminal = events
        .iter()
        .filter(|(_, e)| !matches!(e.state, StepState::Deferred { .. }))
        .count();
    assert_eq!(terminal, 4, "every step ends sent or skipped: {events:#?}");
}

fn zones() -> impl Strategy<Value = Tz> {
    prop::sample::select(vec![
        chrono_tz::America::Sao_Paulo,
        chrono_tz::America::Manaus,
        chrono_tz::America::Noronha,
        chrono_tz::America::Rio_Branco,
        chrono_tz::Europe::Lisbon,
        chrono_tz::America::New_York,
        chrono_tz::Asia::Tokyo,
    ])
}

fn policies() -> impl Strategy<Value = Policy> {
    let step = (
        -15i32..60,
        prop::option::of((0u32..24, 0u32..60)),
        0usize..3,
        any::<bool>(),
    );
    (
        prop::collection::btree_map(-15i32..60, step, 1..8),
        0u32..8,
        any::<bool>(),
        any::<bool>(),
        1u32..3,
        2u32..5,
    )
        .prop_map(|(steps, grace, carnaval, sat, per_day, per_7)| {
            let mut p = padrao();
            p.steps = steps
                .into_iter()
                .map(|(at, (_, time, ch, _))| Step {
                    name: format!("s{}", at + 100),
                    at: Offset(at),
                    time: time.map(|(h, m)| NaiveTime::from_hms_opt(h, m, 0).unwrap()),
                    notify: Some(Notify {
                        channels: vec![[Channel::Email, Channel::Sms, Channel::Whatsapp][ch]],
                        template: format!("t{ch}"),
                        prior_notice_of: None,
                    }),
                    escalate: None,
                    offer: None,
                })
                .collect();
            if let Some(last) = p.steps.last().cloned() {
                p.steps.push(Step {
                    name: "esc".into(),
                    at: Offset(last.at.0.max(0) + 1),
                    time: None,
                    notify: None,
                    escalate: Some(Escalate {
                        level: "legal".into(),
                    }),
                    offer: None,
                });
            }
            p.grace_days = grace;
            p.calendar.carnaval = carnaval;
            if !sat {
                p.send_window.saturday = None;
            }
            p.caps = Caps {
                per_day,
                per_7_days: per_7.max(per_day),
            };
            p
        })
}

fn dates() -> impl Strategy<Value = NaiveDate> {
    (0u64..(3 * 366)).prop_map(|n| d(2026, 1, 1).checked_add_days(Days::new(n)).unwrap())
}

fn risks() -> impl Strategy<Value = RiskClass> {
    prop::sample::select(vec![RiskClass::Good, RiskClass::Regular, RiskClass::Risky])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn send_times_respect_window_and_calendar(p in policies(), due in dates(), tz in zones(), risk in risks()) {
        let cal = p.calendar.calendar();
        let plan = base_plan(&p, &cal, tz, due, risk);
        prop_assert!(cal.is_business_day(plan.effective_due_date));
        let mut prev = None;
        for (s, step) in plan.steps.iter().zip(&p.steps) {
            let l = local(s.send_at, tz);
            prop_assert!(p.send_window.contains(s.send_at, tz, &cal), "{} at {l} outside the window", s.name);
            prop_assert!(!cal.is_holiday(l.date()), "{} on a holiday {l}", s.name);
            prop_assert!(l.date().weekday() != chrono::Weekday::Sun);
            if step.at.0 < 0 {
                prop_assert!(l.date() < due, "pre-due {} lands on {l}, due {due}", s.name);
            } else {
                prop_assert!(l.date() >= plan.effective_due_date);
            }
            prop_assert!(prev.is_none_or(|p| p <= s.send_at), "order kept");
            prev = Some(s.send_at);
            prop_assert_eq!(l.second(), 0);
        }
    }

    #[test]
    fn caps_hold_and_every_step_ends(p in policies(), dues in prop::collection::vec(0u64..40, 1..7), tz in zones()) {
        let cal = p.calendar.calendar();
        let plans: Vec<BasePlan> = dues.iter().map(|n| base_plan(&p, &cal, tz, d(2026, 6, 1).checked_add_days(Days::new(*n)).unwrap(), RiskClass::Regular)).collect();
        let mut invoices: Vec<SimInvoice<'_>> = plans.iter().map(|plan| SimInvoice { subject: Subject { policy: &p, cal: &cal, tz, plan }, progress: Progress::default() }).collect();
        let mut ledger = Ledger::default();
        let events = simulate(&mut invoices, &mut ledger, None, &anyone);
        for inv in &invoices {
            prop_assert_eq!(inv.progress.next_at(inv.subject.plan), None, "every régua finishes");
        }
        // Every step of every invoice ends exactly once in a terminal state.
        for (k, plan) in plans.iter().enumerate() {
            for step in &plan.steps {
                let terminal = events.iter().filter(|(i, e)| *i == k && e.index == step.index && !matches!(e.state, StepState::Deferred { .. })).count();
                prop_assert_eq!(terminal, 1, "invoice {} step {}", k, step.name);
            }
        }
        // The caps hold over the customer's ledger, and every send is in the window.
        let contacts = ledger.contacts();
        for c in contacts {
            prop_assert!(p.send_window.contains(c.at, tz, &cal));
            let day = c.at.with_timezone(&tz).date_naive();
            let same_day = contacts.iter().filter(|x| x.at.with_timezone(&tz).date_naive() == day).count();
            prop_assert!(same_day <= p.caps.per_day as usize, "{same_day} on {day}");
            let week = contacts.iter().filter(|x| x.at > c.at - TimeDelta::days(7) && x.at <= c.at).count();
            prop_assert!(week <= p.caps.per_7_days as usize, "{week} in the 7 days to {}", c.at);
        }
        let sent = events.iter().filter(|(_, e)| matches!(e.state, StepState::Sent { merged: false })).count();
        prop_assert_eq!(sent, contacts.len());
    }
}
