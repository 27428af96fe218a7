//! Metrics (SPEC §4, §9): definitions, evaluation over a project's events, formulas and
//! anomaly detection (live feeds run in `engine::live`).

pub mod anomaly;
pub mod definition;
pub mod evaluate;
pub mod forecast;
pub mod formula;
pub mod scan;
pub mod two_ranges;
