//! Ingestion: per-event validation and tracking-plan enforcement (`validate`), and the single
//! writer thread that deduplicates, appends and group-commits (`writer`).

mod ids;
mod validate;
mod writer;

pub use ids::{KeySet, SeenIds, SharedIds, save as save_seen};
pub use validate::*;
pub use writer::*;
