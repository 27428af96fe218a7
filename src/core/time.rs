//! Calendar buckets in a time zone: local midnights, ISO weeks, months and quarters, with
//! daylight-saving transitions handled by converting local boundaries back to instants.

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use crate::core::model::Micros;
use crate::error::{Error, Result, echo};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Granularity {
    Hour,
    #[default]
    Day,
    Week,
    Month,
    Quarter,
    Total,
}

impl Granularity {
    /// The granularity of a series to follow or compare bucket by bucket: TOTAL, a single
    /// bucket, is refused.
    pub fn series(self, field: &str) -> Result<Granularity> {
        match self {
            Granularity::Total => {
                Err(Error::invalid(field, "TOTAL is a single bucket; use HOUR, DAY, WEEK, MONTH or QUARTER"))
            }
            granularity => Ok(granularity),
        }
    }
}

/// Periods that can enclose a bucket for period-to-date values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CalendarPeriod {
    Week,
    Month,
    Quarter,
    Year,
}

/// A calendar offset: months first, then days, in local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct CalendarOffset {
    pub months: i32,
    pub days: i32,
}

impl CalendarOffset {
    pub fn is_zero(&self) -> bool {
        self.months == 0 && self.days == 0
    }
}

pub fn parse_zone(field: &str, zone: &str) -> Result<Tz> {
    if zone.is_empty() {
        return Ok(Tz::UTC);
    }
    zone.parse::<Tz>().map_err(|_| Error::invalid(field, format!("unknown IANA time zone {zone}", zone = echo(zone))))
}

fn local(t: Micros, tz: Tz) -> NaiveDateTime {
    DateTime::<Utc>::from_timestamp_micros(t).unwrap_or_default().with_timezone(&tz).naive_local()
}

/// The instant of a local wall-clock time. A time skipped by a DST jump maps to the first
/// instant after the gap; an ambiguous one to its earlier instant.
pub fn instant(naive: NaiveDateTime, tz: Tz) -> Micros {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => t.timestamp_micros(),
        LocalResult::Ambiguous(earlier, _) => earlier.timestamp_micros(),
        LocalResult::None => {
            // Walk forward in 15-minute steps to the first wall-clock time after the gap.
            let mut probe = naive;
            for _ in 0..24 {
                let Some(later) = probe.checked_add_signed(Duration::minutes(15)) else { break };
                probe = later;
                if let Some(t) = tz.from_local_datetime(&probe).earliest() {
                    return t.timestamp_micros();
                }
            }
            naive.and_utc().timestamp_micros()
        }
    }
}

fn midnight(date: NaiveDate) -> NaiveDateTime {
    date.and_time(NaiveTime::MIN)
}

fn first_of_month(year: i32, month: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, 1).unwrap_or_default()
}

/// `date` plus `months` calendar months, clamped to the month's last day; None outside the
/// calendar's range.
fn add_months(date: NaiveDate, months: i64) -> Option<NaiveDate> {
    let total = i64::from(date.year()).checked_mul(12)?.checked_add(i64::from(date.month0()))?.checked_add(months)?;
    let year = i32::try_from(total.div_euclid(12)).ok()?;
    let month = total.rem_euclid(12) as u32 + 1;
    let first = NaiveDate::from_ymd_opt(year, month, 1)?;
    let days_in_month =
        first.checked_add_months(chrono::Months::new(1)).and_then(|d| d.pred_opt()).map_or(31, |d| d.day());
    NaiveDate::from_ymd_opt(year, month, date.day().min(days_in_month))
}

/// `date` plus `days` days; None outside the calendar's range.
fn add_days(date: NaiveDate, days: i64) -> Option<NaiveDate> {
    date.checked_add_signed(Duration::try_days(days)?)
}

/// Shifts an instant back by a calendar offset in local time (months, then days). Offsets are
/// bounded at validation (`bounds::check_offset`); beyond the calendar this saturates, never panics.
pub fn shift_back(t: Micros, offset: CalendarOffset, tz: Tz) -> Micros {
    if offset.is_zero() {
        return t;
    }
    let naive = local(t, tz);
    let date = add_months(naive.date(), -i64::from(offset.months)).and_then(|d| add_days(d, -i64::from(offset.days)));
    match date {
        Some(date) => instant(date.and_time(naive.time()), tz),
        None if offset.months > 0 || (offset.months == 0 && offset.days > 0) => Micros::MIN,
        None => Micros::MAX,
    }
}

/// The start of the bucket `n` buckets after the one starting at `start`: `next` applied `n`
/// times, in one calendar step. Saturates beyond the calendar.
pub fn advance(start: Micros, granularity: Granularity, n: u32, tz: Tz) -> Micros {
    let date = local(start, tz).date();
    let n = i64::from(n);
    let following = match granularity {
        Granularity::Hour => return start.saturating_add(n.saturating_mul(3_600_000_000)),
        Granularity::Day | Granularity::Total => add_days(date, n),
        Granularity::Week => add_days(date, 7 * n),
        Granularity::Month => add_months(date, n),
        Granularity::Quarter => add_months(date, 3 * n),
    };
    following.map_or(Micros::MAX, |d| instant(midnight(d), tz))
}

const DAY_MICROS: Micros = 86_400_000_000;

/// The start of a trailing window of `length` ending at `end`: whole days are local calendar
/// days in `tz` (7 days before a local midnight is the local midnight a week earlier, 167 or
/// 169 hours across a DST change); a remainder of less than a day is subtracted as is.
pub fn days_before(end: Micros, length: Micros, tz: Tz) -> Micros {
    // Clamped far beyond any stored window (validation allows 100 years) so dates stay valid.
    let days = CalendarOffset { months: 0, days: (length / DAY_MICROS).clamp(0, 10_000_000) as i32 };
    shift_back(end, days, tz) - length % DAY_MICROS
}

/// The number of local calendar days from `from` to `to` when both are the start of a local
/// day in `tz` (midnight, or the end of a DST gap that skips it); `None` otherwise.
pub fn whole_days_between(from: Micros, to: Micros, tz: Tz) -> Option<i32> {
    let starts_day = |t: Micros| floor(t, Granularity::Day, tz) == t;
    if !starts_day(from) || !starts_day(to) {
        return None;
    }
    i32::try_from((local(to, tz).date() - local(from, tz).date()).num_days()).ok()
}

/// The start of the bucket of `granularity` containing `t`.
pub fn floor(t: Micros, granularity: Granularity, tz: Tz) -> Micros {
    let naive = local(t, tz);
    let date = naive.date();
    let start = match granularity {
        Granularity::Hour => naive.date().and_hms_opt(naive.hour(), 0, 0).unwrap_or(naive),
        Granularity::Day | Granularity::Total => midnight(date),
        Granularity::Week => {
            midnight(add_days(date, -i64::from(date.weekday().num_days_from_monday())).unwrap_or(date))
        }
        Granularity::Month => midnight(first_of_month(date.year(), date.month())),
        Granularity::Quarter => midnight(first_of_month(date.year(), date.month0() / 3 * 3 + 1)),
    };
    instant(start, tz)
}

/// The start of the calendar period enclosing `t`.
pub fn period_floor(t: Micros, period: CalendarPeriod, tz: Tz) -> Micros {
    match period {
        CalendarPeriod::Week => floor(t, Granularity::Week, tz),
        CalendarPeriod::Month => floor(t, Granularity::Month, tz),
        CalendarPeriod::Quarter => floor(t, Granularity::Quarter, tz),
        CalendarPeriod::Year => {
            let date = local(t, tz).date();
            instant(midnight(first_of_month(date.year(), 1)), tz)
        }
    }
}

/// The start of the next bucket after the one starting at `start`.
pub fn next(start: Micros, granularity: Granularity, tz: Tz) -> Micros {
    let naive = local(start, tz);
    let date = naive.date();
    let following = match granularity {
        // Hours step in absolute time: a repeated or skipped local hour is still one hour.
        Granularity::Hour => return start.saturating_add(3_600_000_000),
        Granularity::Day | Granularity::Total => add_days(date, 1),
        Granularity::Week => add_days(date, 7),
        Granularity::Month => add_months(date, 1),
        Granularity::Quarter => add_months(date, 3),
    };
    following.map_or(Micros::MAX, |d| instant(midnight(d), tz))
}

/// Bucket boundaries covering [from, to): `bounds[i]..bounds[i+1]` is bucket i. The first
/// bucket starts at the floor of `from`; TOTAL is the single bucket [from, to).
pub fn bucket_bounds(
    from: Micros,
    to: Micros,
    granularity: Granularity,
    tz: Tz,
    max_buckets: usize,
) -> Result<Vec<Micros>> {
    if to <= from {
        return Err(Error::invalid("range", "to must be after from"));
    }
    if granularity == Granularity::Total {
        return Ok(vec![from, to]);
    }
    let mut bounds = vec![floor(from, granularity, tz)];
    while *bounds.last().unwrap_or(&to) < to {
        let last = *bounds.last().unwrap_or(&to);
        bounds.push(next(last, granularity, tz).max(last.saturating_add(1)));
        if bounds.len() > max_buckets + 1 {
            return Err(Error::invalid("range", format!("more than {max_buckets} buckets; use a coarser granularity")));
        }
    }
    Ok(bounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Micros {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros()
    }

    fn show(t: Micros, tz: Tz) -> String {
        DateTime::<Utc>::from_timestamp_micros(t).unwrap().with_timezone(&tz).to_rfc3339()
    }

    #[test]
    fn days_follow_local_midnight_across_dst() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // DST starts in Berlin on Sunday 2026-03-29 (02:00 -> 03:00): that day has 23 hours.
        let bounds = bucket_bounds(
            at("2026-03-28T00:00:00+01:00"),
            at("2026-03-31T00:00:00+02:00"),
            Granularity::Day,
            berlin,
            100,
        )
        .unwrap();
        let shown: Vec<String> = bounds.iter().map(|&b| show(b, berlin)).collect();
        assert_eq!(
            shown,
            vec![
                "2026-03-28T00:00:00+01:00",
                "2026-03-29T00:00:00+01:00",
                "2026-03-30T00:00:00+02:00",
                "2026-03-31T00:00:00+02:00"
            ]
        );
        assert_eq!(bounds[2] - bounds[1], 23 * 3_600_000_000);
    }

    #[test]
    fn weeks_start_on_monday_and_quarters_on_the_first_month() {
        let utc = Tz::UTC;
        // 2026-01-01 is a Thursday; its ISO week starts Monday 2025-12-29.
        assert_eq!(show(floor(at("2026-01-01T12:00:00Z"), Granularity::Week, utc), utc), "2025-12-29T00:00:00+00:00");
        assert_eq!(
            show(floor(at("2026-05-17T12:00:00Z"), Granularity::Quarter, utc), utc),
            "2026-04-01T00:00:00+00:00"
        );
        assert_eq!(show(floor(at("2026-05-17T12:00:00Z"), Granularity::Month, utc), utc), "2026-05-01T00:00:00+00:00");
        assert_eq!(show(next(at("2026-11-01T00:00:00Z"), Granularity::Quarter, utc), utc), "2027-02-01T00:00:00+00:00");
        let ny: Tz = "America/New_York".parse().unwrap();
        // 2026-01-01T03:00Z is still Dec 31 in New York.
        assert_eq!(show(floor(at("2026-01-01T03:00:00Z"), Granularity::Day, ny), ny), "2025-12-31T00:00:00-05:00");
    }

    #[test]
    fn calendar_offsets_clamp_to_month_ends() {
        let utc = Tz::UTC;
        let shifted = shift_back(at("2026-03-31T10:00:00Z"), CalendarOffset { months: 1, days: 0 }, utc);
        assert_eq!(show(shifted, utc), "2026-02-28T10:00:00+00:00");
        let shifted = shift_back(at("2026-03-31T10:00:00Z"), CalendarOffset { months: 12, days: 7 }, utc);
        assert_eq!(show(shifted, utc), "2025-03-24T10:00:00+00:00");
        assert_eq!(add_months(NaiveDate::from_ymd_opt(2026, 12, 15).unwrap(), 1), NaiveDate::from_ymd_opt(2027, 1, 15));
        assert_eq!(add_months(NaiveDate::from_ymd_opt(2024, 3, 31).unwrap(), -1), NaiveDate::from_ymd_opt(2024, 2, 29));
    }

    #[test]
    fn extreme_offsets_saturate_instead_of_panicking() {
        let utc = Tz::UTC;
        let t = at("2026-03-31T10:00:00Z");
        for (months, days) in [(0, i32::MAX), (0, i32::MIN), (i32::MAX, 0), (i32::MIN, 0), (i32::MIN, i32::MIN)] {
            let shifted = shift_back(t, CalendarOffset { months, days }, utc);
            let back = months > 0 || (months == 0 && days > 0);
            assert_eq!(shifted, if back { Micros::MIN } else { Micros::MAX }, "{months} months, {days} days");
        }
        for g in [Granularity::Hour, Granularity::Day, Granularity::Week, Granularity::Month, Granularity::Quarter] {
            assert_eq!(advance(t, g, u32::MAX, utc), Micros::MAX, "{g:?}");
            let _ = floor(Micros::MIN, g, utc);
            let _ = next(Micros::MAX, g, utc);
            let _ = floor(Micros::MAX, g, utc);
        }
    }

    #[test]
    fn advance_is_next_repeated() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        for g in [Granularity::Hour, Granularity::Day, Granularity::Week, Granularity::Month, Granularity::Quarter] {
            let start = floor(at("2026-01-31T12:00:00Z"), g, berlin);
            let mut stepped = start;
            for n in 0..400u32 {
                assert_eq!(advance(start, g, n, berlin), stepped, "{g:?} × {n}");
                stepped = next(stepped, g, berlin);
            }
        }
    }

    #[test]
    fn trailing_days_are_local_calendar_days_across_dst() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let week = 7 * DAY_MICROS;
        // Spring: the week before 2026-03-31 00:00 CEST holds the 23-hour day: 167 hours.
        let end = at("2026-03-31T00:00:00+02:00");
        assert_eq!(show(days_before(end, week, berlin), berlin), "2026-03-24T00:00:00+01:00");
        // Autumn: the week before 2026-10-27 00:00 CET holds the 25-hour day: 169 hours.
        let end = at("2026-10-27T00:00:00+01:00");
        assert_eq!(show(days_before(end, week, berlin), berlin), "2026-10-20T00:00:00+02:00");
        // Without DST, and a remainder below a day, plain durations.
        let tokyo: Tz = "Asia/Tokyo".parse().unwrap();
        let end = at("2026-03-31T00:00:00+09:00");
        assert_eq!(days_before(end, week + 3_600_000_000, tokyo), end - week - 3_600_000_000);
    }

    #[test]
    fn whole_days_between_local_midnights_only() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let (from, to) = (at("2026-03-23T00:00:00+01:00"), at("2026-03-30T00:00:00+02:00"));
        assert_eq!(whole_days_between(from, to, berlin), Some(7));
        assert_eq!(whole_days_between(from, to, Tz::UTC), None, "not midnights in UTC");
        assert_eq!(whole_days_between(from + 1, to, berlin), None);
        assert_eq!(whole_days_between(to, from, berlin), Some(-7));
    }

    #[test]
    fn a_local_midnight_inside_a_dst_gap_maps_to_the_end_of_the_gap() {
        // Santiago skipped 2026-09-06 00:00 -> 01:00 local.
        let santiago: Tz = "America/Santiago".parse().unwrap();
        let day = floor(at("2026-09-06T12:00:00-03:00"), Granularity::Day, santiago);
        assert_eq!(show(day, santiago), "2026-09-06T01:00:00-03:00");
    }

    #[test]
    fn bucket_limits_and_bad_ranges() {
        let utc = Tz::UTC;
        assert!(bucket_bounds(10, 10, Granularity::Day, utc, 10).is_err());
        assert!(bucket_bounds(0, 86_400_000_000 * 20, Granularity::Day, utc, 10).is_err());
        assert_eq!(bucket_bounds(5, 99, Granularity::Total, utc, 10).unwrap(), vec![5, 99]);
    }
}
