//! Send windows in the debtor's time zone (CDC art. 71: collection must not intrude on
//! rest or leisure). Holidays are always closed.

use chrono::{
    DateTime, Datelike, Days, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, TimeZone, Utc,
    Weekday,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::calendar::Calendar;

/// Local opening hours of one day, `from` inclusive, `to` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hours {
    #[serde(with = "hhmm")]
    pub from: NaiveTime,
    #[serde(with = "hhmm")]
    pub to: NaiveTime,
}

/// When messages may be sent. The default is Mon–Fri 08:00–20:00 and Sat 08:00–14:00,
/// never on Sundays or holidays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendWindow {
    #[serde(default)]
    pub weekdays: Option<Hours>,
    #[serde(default)]
    pub saturday: Option<Hours>,
    #[serde(default)]
    pub sunday: Option<Hours>,
}

fn hm(h: u32, m: u32) -> NaiveTime {
    NaiveTime::from_hms_opt(h, m, 0).unwrap_or(NaiveTime::MIN)
}

impl Default for SendWindow {
    fn default() -> Self {
        SendWindow {
            weekdays: Some(Hours {
                from: hm(8, 0),
                to: hm(20, 0),
            }),
            saturday: Some(Hours {
                from: hm(8, 0),
                to: hm(14, 0),
            }),
            sunday: None,
        }
    }
}

/// Converts a local wall time to an instant. A time skipped by a DST jump moves to the
/// first valid minute after it; an ambiguous one takes the earlier instant.
pub fn local_to_utc(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let mut t = local;
    for _ in 0..(3 * 60) {
        if let Some(dt) = tz.from_local_datetime(&t).earliest() {
            return dt.with_timezone(&Utc);
        }
        t += TimeDelta::minutes(1);
    }
    Utc.from_utc_datetime(&local)
}

impl SendWindow {
    /// Problems with the window, as (field, message).
    pub fn check(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, h) in [
            ("weekdays", self.weekdays),
            ("saturday", self.saturday),
            ("sunday", self.sunday),
        ] {
            if let Some(h) = h
                && h.from >= h.to
            {
                out.push((name.to_owned(), "from must be before to".to_owned()));
            }
        }
        if self.weekdays.is_none() && self.saturday.is_none() && self.sunday.is_none() {
            out.push((
                String::new(),
                "a send window must open on some day".to_owned(),
            ));
        }
        out
    }

    /// The hours of `date`, or `None` when nothing may be sent that day.
    pub fn hours(&self, date: NaiveDate, cal: &Calendar) -> Option<Hours> {
        if cal.is_holiday(date) {
            return None;
        }
        let h = match date.weekday() {
            Weekday::Sat => self.saturday,
            Weekday::Sun => self.sunday,
            _ => self.weekdays,
        }?;
        (h.from < h.to).then_some(h)
    }

    /// Whether `at` is inside the window in `tz`.
    pub fn contains(&self, at: DateTime<Utc>, tz: Tz, cal: &Calendar) -> bool {
        let local = at.with_timezone(&tz).naive_local();
        self.hours(local.date(), cal)
            .is_some_and(|h| local.time() >= h.from && local.time() < h.to)
    }

    /// The earliest instant at or after `at` inside the window; `at` when the window
    /// never opens within a year (a window that never opens is rejected on write).
    pub fn next_open(&self, at: DateTime<Utc>, tz: Tz, cal: &Calendar) -> DateTime<Utc> {
        let local = at.with_timezone(&tz).naive_local();
        let mut date = local.date();
        for i in 0..400 {
            if let Some(h) = self.hours(date, cal) {
                if i == 0 {
                    if local.time() < h.from {
                        return local_to_utc(tz, date.and_time(h.from));
                    }
                    if local.time() < h.to {
                        return at;
                    }
                } else {
                    let open = local_to_utc(tz, date.and_time(h.from));
                    if open >= at {
                        return open;
                    }
                }
            }
            match date.checked_add_days(Days::new(1)) {
                Some(d) => date = d,
                None => return at,
            }
        }
        at
    }

    /// The send instant for a step on or before `date` that must not move later: the
    /// latest day on or before `date` with open hours, at `time` clamped into those
    /// hours (a time at or after closing becomes the last minute before it).
    pub fn on_or_before(
        &self,
        date: NaiveDate,
        time: Option<NaiveTime>,
        tz: Tz,
        cal: &Calendar,
    ) -> DateTime<Utc> {
        let day = cal.search(date, false, |d| self.hours(d, cal).is_some());
        let Some(h) = self.hours(day, cal) else {
            return local_to_utc(tz, day.and_time(time.unwrap_or(NaiveTime::MIN)));
        };
        let last = h.to - TimeDelta::minutes(1);
        let t = time.unwrap_or(h.from).clamp(h.from, last.max(h.from));
        local_to_utc(tz, day.and_time(t))
    }

    /// The send instant for a step on or after `date` that must not move earlier.
    pub fn on_or_after(
        &self,
        date: NaiveDate,
        time: Option<NaiveTime>,
        tz: Tz,
        cal: &Calendar,
    ) -> DateTime<Utc> {
        let start = local_to_utc(tz, date.and_time(time.unwrap_or(NaiveTime::MIN)));
        self.next_open(start, tz, cal)
    }
}

/// `"HH:MM"` for times of day.
pub mod hhmm {
    use chrono::NaiveTime;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &NaiveTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.format("%H:%M").to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveTime, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    /// Parses `HH:MM` (24-hour).
    pub fn parse(s: &str) -> Result<NaiveTime, String> {
        NaiveTime::parse_from_str(s, "%H:%M")
            .map_err(|_| format!("{s:?} is not a time of day HH:MM"))
    }

    /// `Option<NaiveTime>` as an optional `"HH:MM"`.
    pub mod option {
        use chrono::NaiveTime;
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(t: &Option<NaiveTime>, s: S) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NaiveTime>, D::Error> {
            match Option::<String>::deserialize(d)? {
                Some(s) => super::parse(&s).map(Some).map_err(serde::de::Error::custom),
                None => Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    const SP: Tz = chrono_tz::America::Sao_Paulo;

    fn local(at: DateTime<Utc>) -> NaiveDateTime {
        at.with_timezone(&SP).naive_local()
    }

    #[test]
    fn next_open_waits_for_the_window() {
        let w = SendWindow::default();
        let cal = Calendar::default();
        // Friday 21:00 → Saturday 08:00.
        let at = local_to_utc(SP, d(2026, 3, 13).and_hms_opt(21, 0, 0).unwrap());
        assert_eq!(
            local(w.next_open(at, SP, &cal)),
            d(2026, 3, 14).and_hms_opt(8, 0, 0).unwrap()
        );
        // Saturday 15:00 → Monday 08:00 (no Sundays).
        let at = local_to_utc(SP, d(2026, 3, 14).and_hms_opt(15, 0, 0).unwrap());
        assert_eq!(
            local(w.next_open(at, SP, &cal)),
            d(2026, 3, 16).and_hms_opt(8, 0, 0).unwrap()
        );
        // Inside stays put.
        let at = local_to_utc(SP, d(2026, 3, 16).and_hms_opt(10, 30, 0).unwrap());
        assert_eq!(w.next_open(at, SP, &cal), at);
        // Carnaval 2026 (Mon 16, Tue 17 Feb) is closed.
        let at = local_to_utc(SP, d(2026, 2, 14).and_hms_opt(19, 0, 0).unwrap());
        assert_eq!(
            local(w.next_open(at, SP, &cal)),
            d(2026, 2, 18).and_hms_opt(8, 0, 0).unwrap()
        );
    }

    #[test]
    fn on_or_before_moves_earlier_and_clamps() {
        let w = SendWindow::default();
        let cal = Calendar::default();
        // Sunday → Saturday, at 10:00; 18:00 on a Saturday clamps to 13:59.
        let t = w.on_or_before(d(2026, 3, 15), Some(hm(10, 0)), SP, &cal);
        assert_eq!(local(t), d(2026, 3, 14).and_hms_opt(10, 0, 0).unwrap());
        let t = w.on_or_before(d(2026, 3, 15), Some(hm(18, 0)), SP, &cal);
        assert_eq!(local(t), d(2026, 3, 14).and_hms_opt(13, 59, 0).unwrap());
        // Good Friday 2026 (3 Apr) → Thursday.
        let t = w.on_or_before(d(2026, 4, 3), None, SP, &cal);
        assert_eq!(local(t), d(2026, 4, 2).and_hms_opt(8, 0, 0).unwrap());
    }

    #[test]
    fn windows_parse_from_hhmm() {
        let w: SendWindow =
            serde_json::from_str(r#"{"weekdays":{"from":"09:00","to":"18:30"}}"#).unwrap();
        assert_eq!(w.weekdays.unwrap().to, hm(18, 30));
        assert!(w.saturday.is_none());
        assert!(
            serde_json::from_str::<SendWindow>(r#"{"weekdays":{"from":"9h","to":"18:30"}}"#)
                .is_err()
        );
        let bad = SendWindow {
            weekdays: Some(Hours {
                from: hm(20, 0),
                to: hm(8, 0),
            }),
            saturday: None,
            sunday: None,
        };
        assert_eq!(bad.check().len(), 1);
    }
}
