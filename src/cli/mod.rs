//! Client tools in the binary: data generator, loader, live watcher, soak test, backup,
//! compaction, the offline data check and the ClickHouse backend's benchmark.

pub mod backup;
pub mod bench_clickhouse;
pub mod r#gen;
pub mod load;
pub mod load_marketing;
pub mod maintenance;
pub mod soak;
pub mod watch;
