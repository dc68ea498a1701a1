//! The `tidemark` binary: parse the command line, set up logging, run, exit with a status.

mod cli;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use cli::{Cli, Command, LogFormat, Simulated};
use tidemark::app::{App, consumer_name};
use tidemark::config::Config;
use tidemark::coordinator;
use tidemark::queue::jobs::SyncRequest;
use tidemark::queue::streams;
use tidemark::report::{self, QueueStatus, SourceStatus};
use tidemark::simulators::confluence::{ConfluenceSim, SimConfig};
use tidemark::state::RunStatus;
use tidemark::types::{SourceId, SyncMode};

/// How long in-flight work may take to finish after SIGTERM; below Kubernetes' default 30 s grace period.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(cli: &Cli) -> anyhow::Result<App> {
    let config = Config::load(&cli.config)?;
    App::new(config).context("starting up")
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::CheckConfig => {
            let c = Config::load(&cli.config)?;
            println!("{}: ok, {} source(s)", cli.config.display(), c.sources.len());
            Ok(ExitCode::SUCCESS)
        }
        Command::Coordinator => {
            let app = load(&cli)?;
            let shutdown = tidemark::shutdown::on_signals();
            app.coordinator(consumer_name("coordinator"))
                .run(shutdown, DRAIN_TIMEOUT)
                .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker { concurrency } => {
            let mut app = load(&cli)?;
            if let Some(n) = concurrency {
                app.config.sync.worker_concurrency =
                    std::num::NonZeroUsize::new(*n).context("--concurrency must be at least 1")?;
            }
            let shutdown = tidemark::shutdown::on_signals();
            app.worker(consumer_name("worker")).run(shutdown, DRAIN_TIMEOUT).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Standalone { workers } => {
            let app = load(&cli)?;
            let shutdown = tidemark::shutdown::on_signals();
            let mut tasks = tokio::task::JoinSet::new();
            let coordinator = app.coordinator(consumer_name("coordinator"));
            let s = shutdown.clone();
            tasks.spawn(async move { coordinator.run(s, DRAIN_TIMEOUT).await });
            for _ in 0..*workers {
                let worker = app.worker(consumer_name("worker"));
                let s = shutdown.clone();
                tasks.spawn(async move { worker.run(s, DRAIN_TIMEOUT).await });
            }
            while let Some(r) = tasks.join_next().await {
                r.context("task panicked")??;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Enqueue {
            source,
            full,
            wait,
            timeout,
            json,
        } => {
            let app = load(&cli)?;
            let id = SourceId::new(source.clone())?;
            if app.config.source(&id).is_none() {
                let known: Vec<_> = app.config.sources.iter().map(|s| s.id.to_string()).collect();
                bail!("unknown source {source:?} (configured: {})", known.join(", "));
            }
            let mode = if *full { SyncMode::Full } else { SyncMode::Incremental };
            let request = SyncRequest::new(id.clone(), mode, "cli");
            coordinator::enqueue(&app.pool, &app.keys, &request).await?;
            if !wait {
                if *json {
                    println!(
                        "{}",
                        serde_json::json!({"request_id": request.request_id, "source": source, "mode": mode})
                    );
                } else {
                    println!("enqueued {mode} sync of {source}: request {}", request.request_id);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let record = app
                .state()
                .wait_for_request(
                    &id,
                    &request.request_id,
                    Duration::from_millis(200),
                    Duration::from_secs(*timeout),
                )
                .await?;
            let Some(record) = record else {
                eprintln!(
                    "error: no run of {source} ended within {timeout}s (request {})",
                    request.request_id
                );
                return Ok(ExitCode::from(3));
            };
            if *json {
                println!("{}", serde_json::to_string_pretty(&record)?);
            } else {
                println!("{}", report::run_line(&record));
                if !record.last_error.is_empty() {
                    println!("  last error: {}", record.last_error);
                }
            }
            Ok(match record.status {
                RunStatus::Completed => ExitCode::SUCCESS,
                RunStatus::CompletedWithErrors => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            })
        }
        Command::Status { source, json, runs } => {
            let app = load(&cli)?;
            let state = app.state();
            let ids: Vec<SourceId> = match source {
                Some(s) => vec![SourceId::new(s.clone())?],
                None => {
                    let mut ids: Vec<SourceId> = app.config.sources.iter().map(|s| s.id.clone()).collect();
                    for k in state.known_sources().await? {
                        if !ids.contains(&k) {
                            ids.push(k);
                        }
                    }
                    ids
                }
            };
            let mut sources = Vec::new();
            for id in ids {
                let cp = state.checkpoint(&id).await?;
                sources.push(SourceStatus {
                    source: id.to_string(),
                    documents: state.doc_count(&id).await?,
                    fence: state.current_fence(&id).await?.0,
                    watermark: cp.watermark.map(|w| w.to_rfc3339()),
                    cursor: cp.cursor,
                    runs: state.recent_runs(&id, *runs).await?,
                });
            }
            let queues = QueueStatus {
                requests: streams::group_info(&app.pool, &app.keys.requests(), coordinator::GROUP).await?,
                jobs: streams::group_info(&app.pool, &app.keys.jobs(), tidemark::worker::GROUP).await?,
                dead_letters: streams::group_info(&app.pool, &app.keys.dead_letters(), "-")
                    .await?
                    .length,
            };
            if *json {
                let v = serde_json::json!({"sources": sources, "queues": queues});
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", report::status_text(&sources, &queues));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate { service } => match service {
            Simulated::Confluence {
                listen,
                pages,
                space_key,
                rate_limit,
                timezone,
                clock_skew_secs,
            } => {
                let tz: chrono_tz::Tz = timezone
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--timezone: {timezone:?} is not an IANA timezone"))?;
                let sim = ConfluenceSim::new(SimConfig {
                    space_key: space_key.clone(),
                    pages: *pages,
                    user_timezone: tz,
                    clock_skew: chrono::Duration::seconds(*clock_skew_secs),
                    rate_limit_per_sec: *rate_limit,
                    ..SimConfig::default()
                });
                let (addr, handle) = sim
                    .serve(*listen)
                    .await
                    .with_context(|| format!("listening on {listen}"))?;
                println!("confluence simulator: space {space_key} with {pages} pages at http://{addr}");
                let shutdown = tidemark::shutdown::on_signals();
                shutdown.cancelled().await;
                handle.abort();
                Ok(ExitCode::SUCCESS)
            }
        },
    }
}
