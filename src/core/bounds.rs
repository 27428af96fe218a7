//! Limits on request fields that size work or storage: names and free text, calendar offsets,
//! period indexes, windows and breakdown limits. One place, so the protos and README can name
//! each limit once and every request is bounded before any work starts.

use super::model::Micros;
use super::time::CalendarOffset;
use crate::error::{Error, Result};

/// Names, titles, units and other short labels (metric, goal, cohort, experiment, project and
/// key names, …).
pub const MAX_NAME_CHARS: usize = 200;
/// Descriptions, hypotheses and other free text.
pub const MAX_TEXT_CHARS: usize = 10_000;
/// Calendar offsets: at most 100 years either way, as months or as days.
pub const MAX_OFFSET_MONTHS: i32 = 1_200;
pub const MAX_OFFSET_DAYS: i32 = 36_600;
/// A period index (RETENTION `retention_offset`).
pub const MAX_PERIOD_INDEX: u32 = 1_000;
/// Durations that widen a scan (conversion, rolling, funnel, attribution and CUPED windows).
pub const MAX_WINDOW_DAYS: i64 = 3_660;
/// Breakdown values kept before the rest fold into `$other`.
pub const MAX_BREAKDOWN_LIMIT: u32 = 1_000;

const DAY: Micros = 86_400_000_000;

/// Characters of `value`, counted only when its bytes could exceed `max`.
fn too_long(value: &str, max: usize) -> Option<usize> {
    if value.len() <= max {
        return None;
    }
    let chars = value.chars().count();
    (chars > max).then_some(chars)
}

/// A name or short label: at most `MAX_NAME_CHARS` characters (may be empty).
pub fn check_name(field: &str, value: &str) -> Result<()> {
    match too_long(value, MAX_NAME_CHARS) {
        Some(chars) => Err(Error::invalid(field, format!("{chars} characters, at most {MAX_NAME_CHARS}"))),
        None => Ok(()),
    }
}

/// A description or other free text: at most `MAX_TEXT_CHARS` characters.
pub fn check_text(field: &str, value: &str) -> Result<()> {
    match too_long(value, MAX_TEXT_CHARS) {
        Some(chars) => Err(Error::invalid(field, format!("{chars} characters, at most {MAX_TEXT_CHARS}"))),
        None => Ok(()),
    }
}

/// A calendar offset within ±`MAX_OFFSET_MONTHS` months and ±`MAX_OFFSET_DAYS` days.
pub fn check_offset(field: &str, offset: CalendarOffset) -> Result<()> {
    if offset.months.unsigned_abs() > MAX_OFFSET_MONTHS.unsigned_abs() {
        return Err(Error::invalid(
            format!("{field}.months"),
            format!("{} is beyond ±{MAX_OFFSET_MONTHS}", offset.months),
        ));
    }
    if offset.days.unsigned_abs() > MAX_OFFSET_DAYS.unsigned_abs() {
        return Err(Error::invalid(format!("{field}.days"), format!("{} is beyond ±{MAX_OFFSET_DAYS}", offset.days)));
    }
    Ok(())
}

/// A period index of at most `MAX_PERIOD_INDEX`.
pub fn check_period_index(field: &str, index: u32) -> Result<()> {
    if index > MAX_PERIOD_INDEX {
        return Err(Error::invalid(field, format!("{index} is more than {MAX_PERIOD_INDEX}")));
    }
    Ok(())
}

/// A window of at most `MAX_WINDOW_DAYS` days (positivity is the caller's rule).
pub fn check_window(field: &str, window: Option<Micros>) -> Result<()> {
    if window.is_some_and(|w| w > MAX_WINDOW_DAYS * DAY) {
        return Err(Error::invalid(field, format!("longer than {MAX_WINDOW_DAYS} days")));
    }
    Ok(())
}

/// A breakdown limit as requested (0 means the caller's default), at most `MAX_BREAKDOWN_LIMIT`.
pub fn breakdown_limit(field: &str, limit: u32) -> Result<usize> {
    if limit > MAX_BREAKDOWN_LIMIT {
        return Err(Error::invalid(field, format!("{limit} is more than {MAX_BREAKDOWN_LIMIT}")));
    }
    Ok(limit as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(result: Result<()>) -> String {
        match result {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn limits_are_inclusive_and_name_the_field() {
        assert!(check_name("goal.name", &"é".repeat(MAX_NAME_CHARS)).is_ok(), "characters, not bytes");
        assert_eq!(field(check_name("goal.name", &"x".repeat(MAX_NAME_CHARS + 1))), "goal.name");
        assert!(check_text("d", &"x".repeat(MAX_TEXT_CHARS)).is_ok());
        assert!(check_text("d", &"x".repeat(MAX_TEXT_CHARS + 1)).is_err());
        let offset = |months, days| CalendarOffset { months, days };
        assert!(check_offset("o", offset(-MAX_OFFSET_MONTHS, MAX_OFFSET_DAYS)).is_ok());
        assert_eq!(field(check_offset("o", offset(i32::MIN, 0))), "o.months");
        assert_eq!(field(check_offset("o", offset(0, i32::MAX))), "o.days");
        assert!(check_period_index("r", MAX_PERIOD_INDEX).is_ok() && check_period_index("r", u32::MAX).is_err());
        assert!(check_window("w", Some(MAX_WINDOW_DAYS * DAY)).is_ok());
        assert!(check_window("w", Some(i64::MAX)).is_err() && check_window("w", None).is_ok());
        assert_eq!(breakdown_limit("b", 0).unwrap(), 0);
        assert!(breakdown_limit("b", MAX_BREAKDOWN_LIMIT + 1).is_err());
    }
}
