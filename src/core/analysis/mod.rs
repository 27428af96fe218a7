//! Analyses over people's event sequences (SPEC §7): funnels, retention and cohort tables.

pub mod breakdown;
pub mod funnel;
pub mod retention;
