//! The domain: no tonic, prost or sled types here.
//!
//! Map, lower floors first (a module imports only from its own floor or below):
//! - `model`, `time`, `page`, `filter`, `bounds`, `cancel`: plain types, calendar buckets,
//!   paging, event selectors, request-size limits, cancellation of long scans.
//! - `store`: a project's events in memory (columnar table, person order, trait groups), the
//!   log record that changes them, and the query seam the analyses read them through.
//! - `catalog`, `auth`: the tracking plan, API keys and roles.
//! - `metric`, `goal`, `cohort`, `analysis`, `experiment`, `framework`: the analyses; each
//!   reads a project's events through the query seam (`store::source::EventSource`) and the
//!   definitions it needs, never the engine.
//! - `ingest`: validation and the single writer.
//! - `engine`: projects, the definitions registry, and the application calls the adapters
//!   make (one per RPC, plus the dashboard's view model), built from the floors below.

pub mod analysis;
pub mod auth;
pub mod bounds;
pub mod cancel;
pub mod catalog;
pub mod cohort;
pub mod engine;
pub mod experiment;
pub mod filter;
pub mod framework;
pub mod goal;
pub mod ingest;
pub mod leb128;
pub mod metric;
pub mod model;
pub mod page;
#[cfg(test)]
pub(crate) mod seam_tests;
pub mod store;
pub mod time;
