//! Goals (SPEC §5): stored definitions and the progress computation.

pub mod definition;
pub mod progress;
