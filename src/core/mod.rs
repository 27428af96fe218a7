//! The domain: no tonic or prost types here.

pub mod catalog;
pub mod engine;
pub mod experiment;
pub mod ingest;
pub mod model;
pub mod page;
pub mod table;
pub mod users;
