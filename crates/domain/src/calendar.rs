//! The Brazilian business calendar: national holidays (fixed and Easter-based) for any
//! year, optional Carnaval and Corpus Christi, and a tenant's extra holidays.

use std::collections::BTreeSet;

use chrono::{Datelike, Days, NaiveDate, Weekday};
use serde::{Deserialize, Serialize};

/// Easter Sunday of `year` (Gregorian; the anonymous "Meeus/Jones/Butcher" algorithm).
pub fn easter(year: i32) -> Option<NaiveDate> {
    let a = year.rem_euclid(19);
    let b = year.div_euclid(100);
    let c = year.rem_euclid(100);
    let d = b.div_euclid(4);
    let e = b.rem_euclid(4);
    let f = (b + 8).div_euclid(25);
    let g = (b - f + 1).div_euclid(3);
    let h = (19 * a + b - d - g + 15).rem_euclid(30);
    let i = c.div_euclid(4);
    let k = c.rem_euclid(4);
    let l = (32 + 2 * e + 2 * i - h - k).rem_euclid(7);
    let m = (a + 11 * h + 22 * l).div_euclid(451);
    let month = (h + l - 7 * m + 114).div_euclid(31);
    let day = (h + l - 7 * m + 114).rem_euclid(31) + 1;
    NaiveDate::from_ymd_opt(year, u32::try_from(month).ok()?, u32::try_from(day).ok()?)
}

/// Which optional days a calendar closes, and the tenant's own holidays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarConfig {
    /// Carnaval Monday and Tuesday (a *ponto facultativo*, closed by most businesses).
    #[serde(default = "yes")]
    pub carnaval: bool,
    /// Corpus Christi (also optional nationally).
    #[serde(default = "yes")]
    pub corpus_christi: bool,
    /// The tenant's extra holidays (state and municipal ones, company days off).
    #[serde(default)]
    pub extra_holidays: BTreeSet<NaiveDate>,
}

fn yes() -> bool {
    true
}

impl Default for CalendarConfig {
    fn default() -> Self {
        CalendarConfig {
            carnaval: true,
            corpus_christi: true,
            extra_holidays: BTreeSet::new(),
        }
    }
}

/// A named holiday.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holiday {
    pub date: NaiveDate,
    pub name: &'static str,
}

/// The fixed national holidays (Lei 662/1949, 6.802/1980 and 14.759/2023).
const FIXED: [(u32, u32, &str); 9] = [
    (1, 1, "Confraternização Universal"),
    (4, 21, "Tiradentes"),
    (5, 1, "Dia do Trabalho"),
    (9, 7, "Independência do Brasil"),
    (10, 12, "Nossa Senhora Aparecida"),
    (11, 2, "Finados"),
    (11, 15, "Proclamação da República"),
    (11, 20, "Dia Nacional de Zumbi e da Consciência Negra"),
    (12, 25, "Natal"),
];

impl CalendarConfig {
    /// Every national holiday of `year` this calendar closes, in date order (extra
    /// holidays not included). 20 November counts from 2024, when it became national.
    pub fn national_holidays(&self, year: i32) -> Vec<Holiday> {
        let mut out = Vec::new();
        for (month, day, name) in FIXED {
            if month == 11 && day == 20 && year < 2024 {
                continue;
            }
            if let Some(date) = NaiveDate::from_ymd_opt(year, month, day) {
                out.push(Holiday { date, name });
            }
        }
        if let Some(easter) = easter(year) {
            let rel = |days: i64| easter.checked_add_signed(chrono::TimeDelta::days(days));
            if let Some(d) = rel(-2) {
                out.push(Holiday {
                    date: d,
                    name: "Sexta-feira Santa",
                });
            }
            if self.carnaval {
                for (offset, name) in [(-48, "Carnaval (segunda)"), (-47, "Carnaval (terça)")] {
                    if let Some(d) = rel(offset) {
                        out.push(Holiday { date: d, name });
                    }
                }
            }
            if self.corpus_christi
                && let Some(d) = rel(60)
            {
                out.push(Holiday {
                    date: d,
                    name: "Corpus Christi",
                });
            }
        }
        out.sort_by_key(|h| h.date);
        out
    }

    /// Builds the calendar used for date arithmetic.
    pub fn calendar(&self) -> Calendar {
        Calendar {
            config: self.clone(),
        }
    }
}

/// Answers "is this a holiday / business day" for any date.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Calendar {
    config: CalendarConfig,
}

/// How far [`Calendar::next_business_day`] and friends look before giving up; a year
/// without a business day would be a configuration error.
const SEARCH_DAYS: u64 = 366;

impl Calendar {
    pub fn new(config: CalendarConfig) -> Self {
        Calendar { config }
    }

    pub fn is_holiday(&self, date: NaiveDate) -> bool {
        // Called for every candidate day of every step: no allocation here.
        if self.config.extra_holidays.contains(&date) {
            return true;
        }
        let (year, month, day) = (date.year(), date.month(), date.day());
        if FIXED
            .iter()
            .any(|(m, d, _)| *m == month && *d == day && !(month == 11 && day == 20 && year < 2024))
        {
            return true;
        }
        let Some(e) = easter(year) else { return false };
        match (date - e).num_days() {
            -2 => true,
            -48 | -47 => self.config.carnaval,
            60 => self.config.corpus_christi,
            _ => false,
        }
    }

    /// Monday to Friday and not a holiday.
    pub fn is_business_day(&self, date: NaiveDate) -> bool {
        !matches!(date.weekday(), Weekday::Sat | Weekday::Sun) && !self.is_holiday(date)
    }

    /// `date` if it is a business day, else the next one: the *effective* due date of an
    /// invoice due on `date`.
    pub fn next_business_day(&self, date: NaiveDate) -> NaiveDate {
        self.search(date, true, |d| self.is_business_day(d))
    }

    /// The first date from `date` (inclusive), forwards or backwards, where `ok` holds;
    /// `date` itself when none does within a year.
    pub fn search(
        &self,
        date: NaiveDate,
        forwards: bool,
        ok: impl Fn(NaiveDate) -> bool,
    ) -> NaiveDate {
        let mut d = date;
        for _ in 0..SEARCH_DAYS {
            if ok(d) {
                return d;
            }
            let next = if forwards {
                d.checked_add_days(Days::new(1))
            } else {
                d.checked_sub_days(Days::new(1))
            };
            match next {
                Some(n) => d = n,
                None => return date,
            }
        }
        date
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn easter_dates() {
        for (year, month, day) in [
            (2024, 3, 31),
            (2025, 4, 20),
            (2026, 4, 5),
            (2027, 3, 28),
            (2028, 4, 16),
            (2000, 4, 23),
            (2038, 4, 25),
        ] {
            assert_eq!(easter(year), Some(d(year, month, day)), "{year}");
        }
    }

    #[test]
    fn holidays_2026_and_2027() {
        let cal = CalendarConfig::default();
        let dates = |y| -> Vec<NaiveDate> {
            cal.national_holidays(y)
                .into_iter()
                .map(|h| h.date)
                .collect()
        };
        assert_eq!(
            dates(2026),
            vec![
                d(2026, 1, 1),
                d(2026, 2, 16),
                d(2026, 2, 17),
                d(2026, 4, 3),
                d(2026, 4, 21),
                d(2026, 5, 1),
                d(2026, 6, 4),
                d(2026, 9, 7),
                d(2026, 10, 12),
                d(2026, 11, 2),
                d(2026, 11, 15),
                d(2026, 11, 20),
                d(2026, 12, 25),
            ]
        );
        assert_eq!(
            dates(2027),
            vec![
                d(2027, 1, 1),
                d(2027, 2, 8),
                d(2027, 2, 9),
                d(2027, 3, 26),
                d(2027, 4, 21),
                d(2027, 5, 1),
                d(2027, 5, 27),
                d(2027, 9, 7),
                d(2027, 10, 12),
                d(2027, 11, 2),
                d(2027, 11, 15),
                d(2027, 11, 20),
                d(2027, 12, 25),
            ]
        );
        // 20 November became national in 2024.
        assert!(!dates(2023).contains(&d(2023, 11, 20)));
        assert!(dates(2024).contains(&d(2024, 11, 20)));
    }

    #[test]
    fn is_holiday_agrees_with_the_holiday_list() {
        for config in [
            CalendarConfig::default(),
            CalendarConfig {
                carnaval: false,
                corpus_christi: false,
                extra_holidays: BTreeSet::new(),
            },
        ] {
            let cal = config.calendar();
            for year in [2023, 2024, 2026, 2027, 2030] {
                let listed: Vec<NaiveDate> = config
                    .national_holidays(year)
                    .into_iter()
                    .map(|h| h.date)
                    .collect();
                let mut d = NaiveDate::from_ymd_opt(year, 1, 1).unwrap();
                while d.year() == year {
                    assert_eq!(cal.is_holiday(d), listed.contains(&d), "{d}");
                    d = d.succ_opt().unwrap();
                }
            }
        }
    }

    #[test]
    fn optional_days_follow_the_config() {
        let strict = CalendarConfig {
            carnaval: false,
            corpus_christi: false,
            extra_holidays: [d(2026, 1, 25)].into(),
        }
        .calendar();
        assert!(strict.is_business_day(d(2026, 2, 16)));
        assert!(strict.is_business_day(d(2026, 6, 4)));
        assert!(!strict.is_business_day(d(2026, 4, 3)), "good friday stays");
        assert!(strict.is_holiday(d(2026, 1, 25)), "extra holiday");
    }

    #[test]
    fn effective_due_dates() {
        let cal = Calendar::default();
        for (due, effective, why) in [
            (d(2026, 3, 10), d(2026, 3, 10), "a tuesday is itself"),
            (d(2026, 3, 14), d(2026, 3, 16), "saturday moves to monday"),
            (d(2026, 3, 15), d(2026, 3, 16), "sunday moves to monday"),
            (
                d(2026, 2, 16),
                d(2026, 2, 18),
                "carnaval monday moves to ash wednesday",
            ),
            (
                d(2026, 2, 14),
                d(2026, 2, 18),
                "carnaval saturday skips the whole break",
            ),
            (d(2027, 2, 8), d(2027, 2, 10), "carnaval 2027"),
            (d(2026, 4, 3), d(2026, 4, 6), "good friday to monday"),
            (
                d(2026, 11, 20),
                d(2026, 11, 23),
                "consciência negra (friday)",
            ),
            (d(2027, 3, 26), d(2027, 3, 29), "good friday 2027"),
            (d(2026, 12, 25), d(2026, 12, 28), "christmas friday"),
            (d(2027, 1, 1), d(2027, 1, 4), "new year friday"),
        ] {
            assert_eq!(cal.next_business_day(due), effective, "{why}");
        }
    }
}
