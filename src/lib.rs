//! Sextant: a metrics-as-a-service backend. Events in over gRPC; North Star metrics, goals,
//! funnels, retention and experiment readouts out.

pub mod cli;
pub mod clickhouse;
pub mod config;
pub mod core;
pub mod error;
pub mod grpc;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod web;

/// Code generated from `proto/sextant/v1`.
pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("sextant.v1");

    /// Descriptor set of every Sextant proto, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("sextant_descriptor");
}
