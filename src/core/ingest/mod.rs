//! Ingestion: per-event validation and tracking-plan enforcement (`validate`), and the single
//! writer thread that deduplicates, appends and group-commits (`writer`).

mod ids;
mod validate;
mod writer;

pub use ids::{KeySet, SeenCut, SeenIds, SharedIds, cut as cut_seen};
pub use validate::*;
pub use writer::*;
