//! Experiments: deterministic assignment (more to come: exposures, statistics, readouts).

pub mod assign;
pub mod stats;
