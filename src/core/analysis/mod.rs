//! Analyses over people's event sequences (SPEC §7, §15, §16): breakdowns, funnels, retention
//! and cohort tables, marketing attribution, the SaaS revenue bridge.

pub mod attribution;
pub mod breakdown;
pub mod funnel;
pub mod retention;
pub mod revenue;
