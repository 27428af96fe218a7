//! The domain: no tonic or prost types here.

pub mod anomaly;
pub mod catalog;
pub mod engine;
pub mod experiment;
pub mod filter;
pub mod formula;
pub mod goal;
pub mod goals;
pub mod ingest;
pub mod live;
pub mod metric;
pub mod metrics;
pub mod model;
pub mod page;
pub mod query;
pub mod table;
pub mod time;
pub mod users;
