//! Metrics (SPEC §4, §9): definitions, evaluation over a project's events, formulas, live
//! feeds and anomaly detection.

pub mod anomaly;
pub mod definition;
pub mod evaluate;
pub mod formula;
pub mod live;
pub mod scan;
