//! Experiments: definitions and lifecycle, deterministic assignment (GrowthBook hashing v2),
//! measurement from stored events, statistics, and readouts with a decision.

pub mod assign;
pub mod definition;
pub mod holdout;
pub mod measure;
pub mod plan;
pub mod readout;
pub mod stats;
