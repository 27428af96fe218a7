use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use sextant::cli::backup::{self, BackupArgs};
use sextant::cli::bench_clickhouse::{self, BenchClickHouseArgs};
use sextant::cli::r#gen::{self as generator, GenOptions};
use sextant::cli::load::{self, LoadArgs};
use sextant::cli::maintenance::{self, CheckArgs, CompactArgs};
use sextant::cli::soak::{self, SoakArgs};
use sextant::cli::watch::{self, WatchArgs};
use sextant::config::ServeConfig;
use sextant::{server, telemetry};

// The ingest path allocates many small strings per event (protobuf decoding); mimalloc
// measured faster than glibc malloc for it (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "sextant", version, about = "Metrics-as-a-service: events in over gRPC, business metrics out")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve(Box<ServeConfig>),
    /// Write synthetic users.jsonl and events.jsonl (reference data for tests, demos, benchmarks),
    /// plus touches.jsonl, aliases.jsonl and spend.jsonl for marketing attribution.
    Gen(GenArgs),
    /// Ingest users.jsonl / events.jsonl into a running server through the gRPC API.
    Load(LoadArgs),
    /// Copy a running server's data into a new data directory (a consistent snapshot). To
    /// restore, start a server with `--data-dir` set to that directory.
    Backup(BackupArgs),
    /// Have a running server rewrite its stored data so that deleted users and expired events
    /// leave the disk (AdminService.Compact; needs the server admin key).
    Compact(CompactArgs),
    /// Verify, offline, that every stored record of a data directory reads back; exits
    /// non-zero naming the first that does not.
    Check(CheckArgs),
    /// Mixed ingest and queries from several clients for a fixed time; prints errors and
    /// latency percentiles per call.
    Soak(SoakArgs),
    /// Print a metric's current value live as events arrive (WatchMetric).
    Watch(WatchArgs),
    /// Store `sextant gen` events in a ClickHouse cluster through the backend's exactly-once
    /// write path and time it, then time a funnel read back from it against the embedded
    /// engine's over the same events (drops and recreates --database).
    BenchClickhouse(BenchClickHouseArgs),
    /// Print, one JSON string per line, every SQL statement the ClickHouse backend sends (with
    /// sample values), for tests/reference/clickhouse_sql_vs_chdb.py.
    #[command(hide = true)]
    ClickhouseSql {
        #[arg(long, default_value = "sextant")]
        database: String,
        #[arg(long, default_value = "sextant")]
        cluster: String,
    },
}

#[derive(clap::Args)]
struct GenArgs {
    #[arg(long, default_value_t = 1000)]
    users: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Days covered, starting at --start.
    #[arg(long, default_value_t = 90)]
    days: u32,
    /// First day (UTC), YYYY-MM-DD.
    #[arg(long, default_value = "2026-01-01")]
    start: chrono::NaiveDate,
    /// Share of events written twice with the same event_id.
    #[arg(long, default_value_t = 0.001)]
    dup_rate: f64,
    #[arg(long)]
    out: PathBuf,
}

/// Has the allocator keep freed memory instead of giving it back to the system a second
/// later. `load` frees each batch on another thread than the one that parsed it, and the
/// pages given back were faulted in (and zeroed) again at once: a tenth of its CPU time
/// (BENCHMARKS.md, session 28). A short-lived client's peak is all it holds anyway; the server
/// keeps the default, so memory a query freed goes back.
fn keep_freed_memory() {
    // mimalloc v3's `mi_option_purge_delay`, which its Rust bindings do not name. Set only on
    // a v3 and where the option holds v3's default (1,000 ms, which no other option has):
    // another version's numbering, or a MIMALLOC_PURGE_DELAY the user set, is left alone.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: reads mimalloc's version and reads and sets one of its options, before any
    // thread but this one runs; no memory is touched.
    unsafe {
        if (30_000..40_000).contains(&libmimalloc_sys::mi_version())
            && libmimalloc_sys::mi_option_get(PURGE_DELAY) == 1000
        {
            libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Before the runtime's threads exist: mimalloc's options are not meant to change under
    // running threads.
    if matches!(cli.command, Command::Load(_)) {
        keep_freed_memory();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve(config) => runtime.block_on(serve(*config)),
        Command::Gen(args) => {
            let options = GenOptions {
                users: args.users,
                days: args.days,
                start: args.start,
                seed: args.seed,
                dup_rate: args.dup_rate,
                out: args.out,
            };
            let summary = generator::generate(&options)?;
            println!(
                "wrote {} users and {} distinct events ({} duplicate lines) to {}, and {} anonymous touches",
                summary.users,
                summary.events,
                summary.duplicates,
                options.out.display(),
                summary.touches
            );
            Ok(())
        }
        Command::Backup(args) => {
            telemetry::init_tracing(sextant::config::LogFormat::Text);
            let report = runtime.block_on(backup::run(&args))?;
            println!(
                "backed up {} meta objects and {} log records ({} bytes) to {}",
                report.meta,
                report.log,
                report.bytes,
                args.out.display()
            );
            Ok(())
        }
        Command::Compact(args) => {
            let compacted = runtime.block_on(maintenance::compact(&args))?;
            println!("compacted: {} bytes before, {} bytes after", compacted.bytes_before, compacted.bytes_after);
            Ok(())
        }
        Command::Check(args) => {
            let report = maintenance::check(&args)?;
            println!(
                "{}: {} log records, {} meta objects and {} checkpoint files read back",
                args.data_dir.display(),
                report.log,
                report.meta,
                report.checkpoint_files
            );
            Ok(())
        }
        Command::Soak(args) => {
            telemetry::init_tracing(sextant::config::LogFormat::Text);
            let report = runtime.block_on(soak::run(&args))?;
            println!(
                "{} clients, {:.1} s, {} events accepted ({:.0} events/s)\n",
                args.clients,
                report.elapsed.as_secs_f64(),
                report.events,
                report.events as f64 / report.elapsed.as_secs_f64()
            );
            print!("{}", report.table());
            for (name, stats) in &report.calls {
                if let Some(error) = &stats.first_error {
                    println!("first {name} error: {error}");
                }
            }
            Ok(())
        }
        Command::ClickhouseSql { database, cluster } => {
            for statement in sextant::clickhouse::sql::every_statement(&database, &cluster) {
                println!("{}", serde_json::to_string(&statement)?);
            }
            Ok(())
        }
        Command::BenchClickhouse(args) => {
            telemetry::init_tracing(sextant::config::LogFormat::Text);
            runtime.block_on(bench_clickhouse::run(&args))
        }
        Command::Load(args) => {
            telemetry::init_tracing(sextant::config::LogFormat::Text);
            let report = runtime.block_on(load::run(&args))?;
            print_report(&report);
            Ok(())
        }
        Command::Watch(args) => runtime.block_on(watch::run(&args)),
    }
}

fn print_report(report: &load::LoadReport) {
    println!(
        "users updated {}; events sent {}, accepted {}, duplicates {}, quarantined {}, rejected {}; aliases {}, spend values {}; {:.1} s, {:.0} events/s",
        report.users,
        report.sent,
        report.accepted,
        report.duplicates,
        report.quarantined,
        report.rejected,
        report.aliases,
        report.spend_values,
        report.elapsed.as_secs_f64(),
        report.events_per_second()
    );
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    telemetry::init_tracing(config.log_format);
    let running = server::start(&config).await?;
    println!("sextant listening on {}", running.addr);
    if let Some(url) = &running.web_url {
        // Not println!: a reader that stopped after the first line (a closed pipe) must not
        // make the server panic.
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), "dashboard on {url}");
    }
    if let Some(metrics) = running.metrics_addr {
        println!("prometheus metrics on http://{metrics}/metrics");
    }
    if config.demo {
        seed_demo(&config, &running).await.context("seeding the demo project")?;
    }
    server::shutdown_signal().await;
    running.stop().await
}

/// How the demo loader reaches this server: its bootstrap key (unless SEXTANT_API_KEY is
/// set), and over TLS trusting the server's own certificate.
fn demo_client(config: &ServeConfig, running: &server::RunningServer) -> load::ClientArgs {
    let port = running.addr.port();
    let addr = match &config.tls_cert {
        Some(_) => format!("https://localhost:{port}"),
        None => running.addr.to_string(),
    };
    let api_key = std::env::var("SEXTANT_API_KEY").ok().or_else(|| config.bootstrap_key.clone());
    load::ClientArgs { addr, api_key, ca_cert: config.tls_cert.clone() }
}

/// Fills the `demo` project with generated data through the public API, once.
async fn seed_demo(config: &ServeConfig, running: &server::RunningServer) -> anyhow::Result<()> {
    let has_events = running.engine.project_stats("demo").map(|s| s.events > 0).unwrap_or(false);
    if !has_events {
        let out = config.data_dir.join("demo-gen");
        let options = GenOptions { users: config.demo_users, out: out.clone(), ..GenOptions::default() };
        let summary = tokio::task::spawn_blocking(move || generator::generate(&options)).await??;
        println!("generated {} users and {} events for the demo project", summary.users, summary.events);
        let args = LoadArgs {
            client: demo_client(config, running),
            project: "demo".into(),
            users: Some(out.join("users.jsonl")),
            events: Some(out.join("events.jsonl")),
            touches: Some(out.join("touches.jsonl")),
            aliases: Some(out.join("aliases.jsonl")),
            spend: Some(out.join("spend.jsonl")),
            spend_metric: Some("ad_spend".into()),
            batch: 2000,
            inflight: 8,
        };
        let report = load::run(&args).await?;
        print_report(&report);
        std::fs::remove_dir_all(&out).ok();
    }
    let created = sextant::web::demo::seed(running.engine.clone(), "demo").await?;
    if created > 0 {
        println!("created {created} demo metrics, goals and experiments");
    }
    if let Some(url) = &running.web_url {
        println!("\ndashboard: {url}?project=demo");
    }
    let addr = running.addr;
    println!(
        "\ndemo project ready. Try:\n  grpcurl -plaintext -d '{{\"project\":\"demo\"}}' {addr} sextant.v1.ProjectService/GetProjectStats\n  grpcurl -plaintext -d '{{\"project\":\"demo\",\"user_id\":\"u42_0\"}}' {addr} sextant.v1.UserService/GetUser\n  grpcurl -plaintext {addr} list\nCtrl-C stops the server."
    );
    Ok(())
}
