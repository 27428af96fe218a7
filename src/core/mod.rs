//! The domain: no tonic or prost types here.

pub mod anomaly;
pub mod auth;
pub mod catalog;
pub mod cohort;
pub mod dashboard;
pub mod data_retention;
pub mod engine;
pub mod experiment;
pub mod experiments;
pub mod filter;
pub mod formula;
pub mod funnel;
pub mod goal;
pub mod goals;
pub mod ingest;
pub mod live;
pub mod metric;
pub mod metrics;
pub mod model;
pub mod page;
pub mod person_order;
pub mod query;
pub mod retention;
pub mod table;
pub mod time;
pub mod users;
