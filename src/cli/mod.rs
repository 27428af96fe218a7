//! Client tools in the binary: data generator, loader, live watcher, soak test, backup,
//! compaction and the offline data check.

pub mod backup;
pub mod r#gen;
pub mod load;
pub mod load_marketing;
pub mod maintenance;
pub mod soak;
pub mod watch;
