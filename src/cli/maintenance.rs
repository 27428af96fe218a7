//! `sextant compact` (AdminService.Compact on a running server) and `sextant check` (an
//! offline check that every stored record of a data directory reads back).

use std::path::PathBuf;

use anyhow::Context;

use crate::cli::load::ClientArgs;
use crate::core::store::record::decode_record;
use crate::pb;
use crate::pb::admin_service_client::AdminServiceClient;
use crate::storage::{SledStorage, Storage};

#[derive(Debug, Clone, clap::Args)]
pub struct CompactArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Project to compact; every project when not given.
    #[arg(long, default_value = "")]
    pub project: String,
}

pub async fn compact(args: &CompactArgs) -> anyhow::Result<pb::CompactResponse> {
    let (channel, key) = args.client.connect().await?;
    let mut client = AdminServiceClient::with_interceptor(channel, key);
    let request = pb::CompactRequest { project: args.project.clone() };
    Ok(client.compact(request).await.context("compacting")?.into_inner())
}

#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// The data directory of a server that is not running.
    #[arg(long)]
    pub data_dir: PathBuf,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CheckReport {
    pub meta: u64,
    pub log: u64,
    /// Checkpoint files (columns and project states) whose checksums match the manifest.
    pub checkpoint_files: u64,
}

/// Opens the store (sled verifies its own checksums) and decodes every log record and meta
/// object, then checks every checkpoint file against the manifest's checksums; the first that
/// does not read back is the error, naming it.
pub fn check(args: &CheckArgs) -> anyhow::Result<CheckReport> {
    anyhow::ensure!(args.data_dir.is_dir(), "{} is not a directory", args.data_dir.display());
    let storage = SledStorage::open_existing(&args.data_dir)
        .with_context(|| format!("opening {} (is a server running on it?)", args.data_dir.display()))?;
    let mut report = CheckReport::default();
    storage
        .replay(None, &mut |value| {
            decode_record(value)?;
            report.log += 1;
            Ok(())
        })
        .with_context(|| format!("log record {} of {}", report.log, args.data_dir.display()))?;
    for (key, value) in storage.scan_meta("")? {
        serde_json::from_slice::<serde_json::Value>(&value)
            .with_context(|| format!("meta object {key} of {}", args.data_dir.display()))?;
        report.meta += 1;
    }
    let segments = args.data_dir.join("segments");
    if let Some(manifest) = crate::core::store::segment::Manifest::read(&segments)? {
        report.checkpoint_files = manifest.verify(&segments)? as u64;
    }
    Ok(report)
}
