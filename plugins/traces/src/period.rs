//! `GET /metrics/throughput`'s periods (WIRE.md "Throughput"): a day, the
//! ISO week (Monday to Sunday) containing a day, or a month, as a half-open
//! `[start, end)` of epoch ms in the server's local time zone — one
//! operator's machine, so "today" means the operator's day.

use chrono::{Datelike as _, Days, Local, LocalResult, Months, NaiveDate, TimeZone};

/// A period the route accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// One day.
    Day,
    /// The ISO week containing a day.
    Week,
    /// One month.
    Month,
}

/// The `period` parameter's 400 (WIRE.md's words).
pub const BAD_PERIOD: &str = "query param 'period' must be one of: day, week, month";

impl Period {
    /// `day`, `week` or `month`.
    pub fn parse(s: &str) -> Option<Period> {
        match s {
            "day" => Some(Period::Day),
            "week" => Some(Period::Week),
            "month" => Some(Period::Month),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    /// `[start, end)` in epoch ms for `date` (`YYYY-MM-DD`, or `YYYY-MM` for
    /// a month), or the 400's message for a malformed or impossible date.
    pub fn range(self, date: &str) -> Result<(u64, u64), String> {
        let expected = if self == Period::Month { "YYYY-MM" } else { "YYYY-MM-DD" };
        let bad = || format!("invalid {} date \"{date}\" (expected {expected})", self.name());
        let (first, next) = match self {
            Period::Day | Period::Week => {
                let day = parse_day(date).ok_or_else(bad)?;
                let first = if self == Period::Week {
                    day - Days::new(u64::from(day.weekday().num_days_from_monday()))
                } else {
                    day
                };
                let span = if self == Period::Week { 7 } else { 1 };
                (first, first.checked_add_days(Days::new(span)).ok_or_else(bad)?)
            }
            Period::Month => {
                let first = parse_month(date).ok_or_else(bad)?;
                (first, first.checked_add_months(Months::new(1)).ok_or_else(bad)?)
            }
        };
        Ok((local_midnight(first).ok_or_else(bad)?, local_midnight(next).ok_or_else(bad)?))
    }
}

/// Digits only, in the exact shape: `NaiveDate`'s parser alone would take
/// `2026-1-5` and `+2026-01-05`.
fn shaped(s: &str, groups: &[usize]) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == groups.len()
        && parts.iter().zip(groups).all(|(p, n)| p.len() == *n && p.bytes().all(|b| b.is_ascii_digit()))
}

fn parse_day(s: &str) -> Option<NaiveDate> {
    if !shaped(s, &[4, 2, 2]) {
        return None;
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

fn parse_month(s: &str) -> Option<NaiveDate> {
    if !shaped(s, &[4, 2]) {
        return None;
    }
    let (y, m) = s.split_once('-')?;
    NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, 1)
}

/// The first instant of `day` in the local zone (a day whose midnight a
/// clock change skips starts at the first instant that exists).
fn local_midnight(day: NaiveDate) -> Option<u64> {
    let naive = day.and_hms_opt(0, 0, 0)?;
    let at = match Local.from_local_datetime(&naive) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t,
        LocalResult::None => (1..=180)
            .find_map(|m| Local.from_local_datetime(&(naive + chrono::Duration::minutes(m))).earliest())?,
    };
    u64::try_from(at.timestamp_millis()).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_week_is_the_monday_to_sunday_containing_the_day() {
        // 2026-12-09 is a Wednesday.
        let (start, end) = Period::Week.range("2026-12-09").unwrap();
        assert_eq!((start, end), Period::Week.range("2026-12-07").unwrap());
        assert_eq!(start, Period::Day.range("2026-12-07").unwrap().0);
        assert_eq!(end, Period::Day.range("2026-12-14").unwrap().0);
        assert_ne!(start, Period::Week.range("2026-12-06").unwrap().0, "a Sunday ends the week before");
    }

    #[test]
    fn months_and_days_span_their_calendar() {
        let (start, end) = Period::Month.range("2026-02").unwrap();
        assert_eq!(start, Period::Day.range("2026-02-01").unwrap().0);
        assert_eq!(end, Period::Day.range("2026-03-01").unwrap().0);
        let (a, b) = Period::Day.range("2024-02-29").unwrap();
        assert!(b > a);
    }

    #[test]
    fn malformed_and_impossible_dates_get_the_wire_message() {
        assert_eq!(
            Period::Day.range("2026-02-30").unwrap_err(),
            "invalid day date \"2026-02-30\" (expected YYYY-MM-DD)"
        );
        assert_eq!(
            Period::Week.range("2026-1-05").unwrap_err(),
            "invalid week date \"2026-1-05\" (expected YYYY-MM-DD)"
        );
        assert_eq!(
            Period::Month.range("2026-13").unwrap_err(),
            "invalid month date \"2026-13\" (expected YYYY-MM)"
        );
        assert!(Period::Month.range("2026-12-01").is_err());
        assert!(Period::Day.range("+2026-12-01").is_err());
        assert_eq!(Period::parse("year"), None);
    }
}
