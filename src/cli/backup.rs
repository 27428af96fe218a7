//! `sextant backup`: streams a running server's snapshot (AdminService.Backup) into a new
//! data directory. The directory is a complete sled database: a server started on it answers
//! as the original did at the time of the backup.

use std::path::PathBuf;

use anyhow::Context;

use crate::cli::load::ClientArgs;
use crate::core::store::record::decode_record;
use crate::pb;
use crate::pb::admin_service_client::AdminServiceClient;
use crate::storage::{SledStorage, Storage, Tree};

#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Directory to write; must be new or empty.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct BackupReport {
    pub meta: u64,
    pub log: u64,
    pub bytes: u64,
}

pub async fn run(args: &BackupArgs) -> anyhow::Result<BackupReport> {
    let (channel, key) = args.client.connect().await?;
    let mut client = AdminServiceClient::with_interceptor(channel, key).max_decoding_message_size(64 * 1024 * 1024);
    let out = args.out.clone();
    let storage = tokio::task::spawn_blocking(move || SledStorage::create_empty(&out))
        .await?
        .with_context(|| format!("opening {}", args.out.display()))?;
    let storage = std::sync::Arc::new(storage);
    let mut stream = client.backup(pb::BackupRequest::default()).await.context("starting the backup")?.into_inner();
    let mut report = BackupReport::default();
    while let Some(chunk) = stream.message().await.context("reading the backup")? {
        let storage = storage.clone();
        let counts = tokio::task::spawn_blocking(move || -> anyhow::Result<BackupReport> {
            let mut counts = BackupReport::default();
            for entry in chunk.entries {
                let tree = match pb::BackupTree::try_from(entry.tree) {
                    Ok(pb::BackupTree::Meta) => Tree::Meta,
                    Ok(pb::BackupTree::Log) => Tree::Log,
                    _ => anyhow::bail!("backup entry of unknown tree {}", entry.tree),
                };
                if tree == Tree::Log {
                    // A log value that does not decode would stop the restored server at start.
                    decode_record(&entry.value)?;
                }
                storage.restore(tree, &entry.key, &entry.value)?;
                match tree {
                    Tree::Meta => counts.meta += 1,
                    Tree::Log => counts.log += 1,
                }
                counts.bytes += (entry.key.len() + entry.value.len()) as u64;
            }
            Ok(counts)
        })
        .await??;
        report.meta += counts.meta;
        report.log += counts.log;
        report.bytes += counts.bytes;
    }
    tokio::task::spawn_blocking(move || storage.sync()).await??;
    Ok(report)
}
