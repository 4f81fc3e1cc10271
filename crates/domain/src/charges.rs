//! What an invoice costs on a given day, and how payments settle it.
//!
//! The rules, stated once (they are the product's promise to debtors):
//! - An invoice is **late** on any day after its *effective* due date (the due date, or
//!   the next business day when it falls on a weekend or holiday). Paying on the
//!   effective due date is paying on time.
//! - The **fine** (`fine_bps`) applies once, on the first late day, to the principal
//!   still owed at the end of the effective due date.
//! - **Interest** (`monthly_interest_bps`) is simple and *pro rata die* on a 30-day
//!   month: `principal owed × bps / 10 000 × days / 30`, counted from the effective due
//!   date. It accrues on principal only (never on the fine or on earlier interest).
//!   It is computed exactly with a decimal type for each stretch of days between
//!   payments, and each stretch is rounded **half away from zero to whole cents**.
//! - A payment covers, in order, accrued interest, then the fine, then principal
//!   (Código Civil art. 354). What is left over is the customer's **credit**: never lost.
//! - The balance is always the sum of the ledger: principal, fine and interest lines
//!   in, payments out, any excess moved to credit.

use chrono::NaiveDate;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;

/// The highest late fine on consumer (CPF) debt, in basis points: CDC art. 52 §1
/// caps it at 2%.
pub const MAX_CONSUMER_FINE_BPS: u32 = 200;

/// Whether a late fine of `fine_bps` may be charged on a debt; `consumer` when the
/// debtor is a person (CPF), whom CDC art. 52 §1 protects.
pub fn fine_is_lawful(fine_bps: u32, consumer: bool) -> bool {
    !consumer || fine_bps <= MAX_CONSUMER_FINE_BPS
}

/// What an invoice owes on one day: the summary of a [`Statement`], as messages state
/// it and events carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmountDue {
    /// The day it is computed for, on the tenant's calendar.
    pub on: NaiveDate,
    pub principal_cents: i64,
    pub fine_cents: i64,
    pub interest_cents: i64,
    pub paid_cents: i64,
    pub balance_cents: i64,
    pub days_late: u32,
}

/// An invoice's terms, as far as charges go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Terms {
    pub principal_cents: i64,
    /// The due date, or the next business day when it is not one.
    pub effective_due_date: NaiveDate,
    pub fine_bps: u32,
    pub monthly_interest_bps: u32,
}

/// One payment, dated on the tenant's calendar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payment {
    pub on: NaiveDate,
    pub amount_cents: i64,
}

/// One ledger line; the lines of a statement sum to its balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Line {
    pub on: NaiveDate,
    /// `principal`, `fine`, `interest`, `payment` or `credit`.
    pub kind: &'static str,
    /// Positive adds to what is owed; a payment is negative; `credit` moves an excess
    /// payment off the invoice (positive here, held for the customer).
    pub amount_cents: i64,
}

/// An invoice's account on one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    pub on: NaiveDate,
    pub principal_cents: i64,
    pub fine_cents: i64,
    pub interest_cents: i64,
    /// Every payment dated on or before `on`.
    pub paid_cents: i64,
    /// What is still owed: principal + fine + interest − payments applied.
    pub balance_cents: i64,
    /// Payments beyond what was owed, held as the customer's credit.
    pub credit_cents: i64,
    /// Days after the effective due date (0 when not late).
    pub days_late: u32,
    pub lines: Vec<Line>,
}

impl Statement {
    /// Settled: nothing left to pay.
    pub fn settled(&self) -> bool {
        self.balance_cents == 0
    }

    /// The statement's summary ([`AmountDue`]), without the ledger lines.
    pub fn due(&self) -> AmountDue {
        AmountDue {
            on: self.on,
            principal_cents: self.principal_cents,
            fine_cents: self.fine_cents,
            interest_cents: self.interest_cents,
            paid_cents: self.paid_cents,
            balance_cents: self.balance_cents,
            days_late: self.days_late,
        }
    }
}

/// Why a statement could not be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChargeError {
    #[error("amount overflow")]
    Overflow,
    #[error("negative amount")]
    Negative,
}

/// Interest on `principal` for `days`, rounded half away from zero to whole cents.
pub fn interest(principal_cents: i64, monthly_bps: u32, days: i64) -> Result<i64, ChargeError> {
    if principal_cents <= 0 || monthly_bps == 0 || days <= 0 {
        return Ok(0);
    }
    let exact = Decimal::from(principal_cents)
        .checked_mul(Decimal::from(monthly_bps))
        .and_then(|v| v.checked_mul(Decimal::from(days)))
        .and_then(|v| v.checked_div(Decimal::from(300_000)))
        .ok_or(ChargeError::Overflow)?;
    to_cents(exact)
}

/// The fine on `principal`, rounded half away from zero to whole cents.
pub fn fine(principal_cents: i64, fine_bps: u32) -> Result<i64, ChargeError> {
    if principal_cents <= 0 || fine_bps == 0 {
        return Ok(0);
    }
    let exact = Decimal::from(principal_cents)
        .checked_mul(Decimal::from(fine_bps))
        .and_then(|v| v.checked_div(Decimal::from(10_000)))
        .ok_or(ChargeError::Overflow)?;
    to_cents(exact)
}

fn to_cents(exact: Decimal) -> Result<i64, ChargeError> {
    let rounded = exact.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
    i64::try_from(rounded).map_err(|_| ChargeError::Overflow)
}

/// The running account while walking the ledger in date order.
struct Account {
    principal: i64,
    fine: i64,
    interest: i64,
    /// Interest has been accrued up to the end of this day.
    accrued_to: NaiveDate,
    fined: bool,
    credit: i64,
    paid: i64,
    lines: Vec<Line>,
}

impl Account {
    /// Posts the fine and interest owed by the end of `day`.
    fn accrue(&mut self, terms: &Terms, day: NaiveDate) -> Result<(), ChargeError> {
        let due = terms.effective_due_date;
        if day <= due {
            return Ok(());
        }
        if !self.fined {
            self.fined = true;
            let f = fine(self.principal, terms.fine_bps)?;
            if f > 0 {
                self.fine = add(self.fine, f)?;
                self.lines.push(Line {
                    on: due.succ_opt().unwrap_or(due),
                    kind: "fine",
                    amount_cents: f,
                });
            }
        }
        let from = self.accrued_to.max(due);
        let days = (day - from).num_days();
        if days > 0 {
            let i = interest(self.principal, terms.monthly_interest_bps, days)?;
            if i > 0 {
                self.interest = add(self.interest, i)?;
                self.lines.push(Line {
                    on: day,
                    kind: "interest",
                    amount_cents: i,
                });
            }
            self.accrued_to = day;
        }
        Ok(())
    }

    /// Applies a payment: interest, then fine, then principal; the rest is credit.
    fn pay(&mut self, p: &Payment) -> Result<(), ChargeError> {
        if p.amount_cents < 0 {
            return Err(ChargeError::Negative);
        }
        self.paid = add(self.paid, p.amount_cents)?;
        self.lines.push(Line {
            on: p.on,
            kind: "payment",
            amount_cents: -p.amount_cents,
        });
        let mut left = p.amount_cents;
        for owed in [&mut self.interest, &mut self.fine, &mut self.principal] {
            let take = left.min(*owed);
            *owed -= take;
            left -= take;
        }
        if left > 0 {
            self.credit = add(self.credit, left)?;
            self.lines.push(Line {
                on: p.on,
                kind: "credit",
                amount_cents: left,
            });
        }
        Ok(())
    }
}

fn add(a: i64, b: i64) -> Result<i64, ChargeError> {
    a.checked_add(b).ok_or(ChargeError::Overflow)
}

/// The account of an invoice with `terms` on `on`, from its payments (any order; those
/// dated after `on` are left out). Payments on the same day apply in the order given.
pub fn statement(
    terms: &Terms,
    payments: &[Payment],
    on: NaiveDate,
) -> Result<Statement, ChargeError> {
    if terms.principal_cents < 0 {
        return Err(ChargeError::Negative);
    }
    let mut ordered: Vec<&Payment> = payments.iter().filter(|p| p.on <= on).collect();
    ordered.sort_by_key(|p| p.on);
    let mut acc = Account {
        principal: terms.principal_cents,
        fine: 0,
        interest: 0,
        accrued_to: terms.effective_due_date,
        fined: false,
        credit: 0,
        paid: 0,
        lines: vec![Line {
            on: terms.effective_due_date,
            kind: "principal",
            amount_cents: terms.principal_cents,
        }],
    };
    for p in ordered {
        // A payment on day d settles what was owed by the end of day d - 1 plus the
        // interest of day d itself: pay-on-the-day counts the day.
        acc.accrue(terms, p.on)?;
        acc.pay(p)?;
    }
    acc.accrue(terms, on)?;
    let fine_total: i64 = acc
        .lines
        .iter()
        .filter(|l| l.kind == "fine")
        .map(|l| l.amount_cents)
        .sum();
    let interest_total: i64 = acc
        .lines
        .iter()
        .filter(|l| l.kind == "interest")
        .map(|l| l.amount_cents)
        .sum();
    let days_late = u32::try_from((on - terms.effective_due_date).num_days().max(0)).unwrap_or(0);
    Ok(Statement {
        on,
        principal_cents: terms.principal_cents,
        fine_cents: fine_total,
        interest_cents: interest_total,
        paid_cents: acc.paid,
        balance_cents: add(add(acc.principal, acc.fine)?, acc.interest)?,
        credit_cents: acc.credit,
        days_late,
        lines: acc.lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::CalendarConfig;
    use proptest::prelude::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    fn terms(principal: i64, due: NaiveDate) -> Terms {
        Terms {
            principal_cents: principal,
            effective_due_date: CalendarConfig::default().calendar().next_business_day(due),
            fine_bps: 200,
            monthly_interest_bps: 100,
        }
    }

    #[test]
    fn consumer_fines_are_capped_at_two_percent() {
        assert!(fine_is_lawful(200, true));
        assert!(!fine_is_lawful(201, true));
        assert!(fine_is_lawful(1_000, false));
    }

    #[test]
    fn on_time_owes_the_principal_only() {
        let t = terms(15_990, d(2026, 3, 10));
        let s = statement(&t, &[], d(2026, 3, 10)).unwrap();
        assert_eq!(
            (s.balance_cents, s.fine_cents, s.interest_cents, s.days_late),
            (15_990, 0, 0, 0)
        );
    }

    #[test]
    fn one_day_late_adds_the_fine_and_a_day_of_interest() {
        // 2% of 100.00 = 2.00; 1% a.m. for one day = 100.00 × 0.01 / 30 = 0.0333 → 0.03.
        let t = terms(10_000, d(2026, 3, 10));
        let s = statement(&t, &[], d(2026, 3, 11)).unwrap();
        assert_eq!(
            (s.fine_cents, s.interest_cents, s.balance_cents),
            (200, 3, 10_203)
        );
        assert_eq!(s.days_late, 1);
    }

    #[test]
    fn interest_crosses_month_boundaries_by_calendar_days() {
        // Due Friday 2026-01-30; 2026-03-02 is 31 days later (February has 28).
        let t = terms(300_000, d(2026, 1, 30));
        let s = statement(&t, &[], d(2026, 3, 2)).unwrap();
        // 3000.00 × 1% × 31/30 = 31.00 exactly.
        assert_eq!(s.interest_cents, 3_100);
        assert_eq!(s.days_late, 31);
    }

    #[test]
    fn leap_years_count_29_february() {
        // Due Friday 2028-02-25; 2028-03-01 is 5 days later in a leap year (4 in 2027).
        let t = terms(300_000, d(2028, 2, 25));
        assert_eq!(
            statement(&t, &[], d(2028, 3, 1)).unwrap().interest_cents,
            500
        );
        let t = terms(300_000, d(2027, 2, 25)); // a Thursday
        assert_eq!(
            statement(&t, &[], d(2027, 3, 1)).unwrap().interest_cents,
            400
        );
    }

    #[test]
    fn weekend_due_dates_move_to_monday_and_paying_then_is_on_time() {
        // Due Saturday 2026-03-14: effective Monday 2026-03-16.
        let t = terms(10_000, d(2026, 3, 14));
        assert_eq!(t.effective_due_date, d(2026, 3, 16));
        let s = statement(&t, &[], d(2026, 3, 16)).unwrap();
        assert_eq!((s.balance_cents, s.days_late), (10_000, 0));
        // Tuesday: one day late, counted from Monday, not from Saturday.
        let s = statement(&t, &[], d(2026, 3, 17)).unwrap();
        assert_eq!((s.fine_cents, s.interest_cents, s.days_late), (200, 3, 1));
    }

    #[test]
    fn holidays_move_the_due_date_too() {
        // Due on Tiradentes (Tuesday 2026-04-21): effective Wednesday 22.
        let t = terms(10_000, d(2026, 4, 21));
        assert_eq!(t.effective_due_date, d(2026, 4, 22));
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        // 150 × 100 / 300 000 × 1 day = 0.05 → 0; 4 500 × 100 × 1 / 300 000 = 1.5 → 2.
        assert_eq!(interest(150, 100, 1).unwrap(), 0);
        assert_eq!(interest(4_500, 100, 1).unwrap(), 2);
        assert_eq!(fine(25, 200).unwrap(), 1); // 0.5 → 1
    }

    #[test]
    fn a_partial_payment_covers_interest_then_fine_then_principal() {
        let t = terms(10_000, d(2026, 3, 10));
        // 30 days late: fine 200, interest 100; pay 5 000.
        let p = Payment {
            on: d(2026, 4, 9),
            amount_cents: 5_000,
        };
        let s = statement(&t, &[p], d(2026, 4, 9)).unwrap();
        assert_eq!(s.balance_cents, 10_300 - 5_000);
        // Principal left is 10 000 − (5 000 − 300) = 5 300; interest goes on accruing on it.
        let later = statement(&t, &[p], d(2026, 4, 19)).unwrap();
        assert_eq!(
            later.balance_cents,
            5_300 + interest(5_300, 100, 10).unwrap()
        );
    }

    #[test]
    fn overpayment_becomes_credit() {
        let t = terms(10_000, d(2026, 3, 10));
        let p = Payment {
            on: d(2026, 3, 5),
            amount_cents: 12_000,
        };
        let s = statement(&t, &[p], d(2026, 3, 20)).unwrap();
        assert_eq!((s.balance_cents, s.credit_cents), (0, 2_000));
        assert!(s.settled());
    }

    #[test]
    fn paying_early_avoids_the_fine() {
        let t = terms(10_000, d(2026, 3, 10));
        let p = Payment {
            on: d(2026, 3, 10),
            amount_cents: 10_000,
        };
        let s = statement(&t, &[p], d(2026, 5, 1)).unwrap();
        assert_eq!((s.balance_cents, s.fine_cents, s.interest_cents), (0, 0, 0));
    }

    proptest! {
        #[test]
        fn the_ledger_always_sums_to_the_balance(
            principal in 1i64..10_000_000,
            fine_bps in 0u32..=200,
            interest_bps in 0u32..=1_000,
            due_offset in 0i64..800,
            pays in prop::collection::vec((0i64..400, 1i64..5_000_000), 0..8),
            look in 0i64..500,
        ) {
            let base = d(2026, 1, 1);
            let due = base + chrono::TimeDelta::days(due_offset);
            let t = Terms {
                principal_cents: principal,
                effective_due_date: CalendarConfig::default().calendar().next_business_day(due),
                fine_bps,
                monthly_interest_bps: interest_bps,
            };
            let payments: Vec<Payment> = pays
                .iter()
                .map(|(off, amt)| Payment { on: due + chrono::TimeDelta::days(*off - 100), amount_cents: *amt })
                .collect();
            let on = due + chrono::TimeDelta::days(look);
            let s = statement(&t, &payments, on).unwrap();
            let sum: i64 = s.lines.iter().map(|l| l.amount_cents).sum();
            // Payments out, charges in, excess moved to credit: what is left is the balance.
            prop_assert_eq!(sum, s.balance_cents);
            prop_assert!(s.balance_cents >= 0);
            prop_assert!(s.credit_cents >= 0);
            // Nothing is lost: every cent paid went to charges or to credit.
            prop_assert_eq!(
                s.paid_cents,
                s.principal_cents + s.fine_cents + s.interest_cents - s.balance_cents + s.credit_cents
            );
            // Credit only when nothing is owed.
            prop_assert!(s.credit_cents == 0 || s.balance_cents == 0);
        }

        #[test]
        fn paying_the_balance_settles_it(
            principal in 1i64..10_000_000,
            late in 0i64..400,
        ) {
            let t = terms(principal, d(2026, 6, 10));
            let day = t.effective_due_date + chrono::TimeDelta::days(late);
            let owed = statement(&t, &[], day).unwrap().balance_cents;
            let s = statement(&t, &[Payment { on: day, amount_cents: owed }], day).unwrap();
            prop_assert!(s.settled());
            prop_assert_eq!(s.credit_cents, 0);
            let s = statement(&t, &[Payment { on: day, amount_cents: owed - 1 }], day).unwrap();
            prop_assert_eq!(s.balance_cents, 1);
        }
    }
}
