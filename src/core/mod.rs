//! The domain: no tonic, prost or sled types here.
//!
//! Map, lower floors first (a module imports only from its own floor or below):
//! - `model`, `time`, `page`, `filter`: plain types, calendar buckets, paging, event selectors.
//! - `store`: a project's events in memory (columnar table, person order, trait groups).
//! - `catalog`, `auth`: the tracking plan, API keys and roles.
//! - `metric`, `goal`, `cohort`, `analysis`, `experiment`: the analyses; each reads a project
//!   view and the definitions it needs, never the engine.
//! - `ingest`: validation and the single writer; `expiry`: data retention.
//! - `engine`: projects, the definitions registry, and the application calls the gRPC adapter
//!   makes (one per RPC), built from the floors below.

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
pub mod metric;
pub mod model;
pub mod page;
pub mod store;
pub mod time;
