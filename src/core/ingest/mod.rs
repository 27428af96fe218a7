//! Ingestion: per-event validation and tracking-plan enforcement (`validate`), and the single
//! writer thread that deduplicates, appends and group-commits (`writer`).

mod validate;
mod writer;

pub use validate::*;
pub use writer::*;
