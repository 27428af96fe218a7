//! Analyses over people's event sequences (SPEC §7, §15): breakdowns, funnels, retention and
//! cohort tables, marketing attribution.

pub mod attribution;
pub mod breakdown;
pub mod funnel;
pub mod retention;
