//! The `tidemark` binary: parse the command line, set up logging, run, exit with a status.

mod cli;
mod progress;

use std::process::ExitCode;
use std::time::Duration;

use tokio::time::Instant;

use anyhow::{Context, bail};
use clap::Parser;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use cli::{Cli, Command, LogFormat, Simulated};
use tidemark::app::{App, consumer_name};
use tidemark::config::Config;
use tidemark::queue::jobs::SyncRequest;
use tidemark::report;
use tidemark::retry::{Retrier, Transient};
use tidemark::simulators::confluence::{ConfluenceSim, SimConfig};
use tidemark::simulators::gdrive::{GdriveSim, SimConfig as GdriveSimConfig};
use tidemark::state::{RunRecord, RunStatus};
use tidemark::types::{SourceId, SyncMode};

/// How long in-flight work may take to finish after SIGTERM; below Kubernetes' default 30 s grace period.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);

/// Exit codes beyond 0 and 1 (1, as for any error, is "failed"): `enqueue
/// --wait`'s outcomes, and `verify`'s drift.
/// Documented in README.md and `enqueue --help`.
mod exit {
    /// The run completed, but some pages were dead-lettered.
    pub const COMPLETED_WITH_ERRORS: u8 = 2;
    /// Redis answered, but no run serving the request ended within `--timeout`.
    pub const TIMED_OUT: u8 = 3;
    /// Redis could not be reached within `--timeout`: the request could not be
    /// enqueued, or the run's outcome could not be read when time ran out.
    pub const REDIS_UNREACHABLE: u8 = 4;
    /// `verify` found drift between the sink, the state and the source.
    pub const DRIFT: u8 = 5;
    /// `query` found no document the reader may read.
    pub const NO_HITS: u8 = 6;
    /// Bad arguments (sysexits' EX_USAGE; clap's default 2 would read as "completed with errors").
    pub const USAGE: u8 = 64;
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(exit::USAGE)
            } else {
                ExitCode::SUCCESS // --help, --version
            };
        }
    };
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
            eprintln!("error: {}", tidemark::redact::text(&one_line(&e)));
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

/// An error and its causes on one line, each cause once: many errors (pools,
/// Redis) repeat their cause in their own message, and the chain repeats it
/// again, so `{:#}` printed "Connection refused" four times.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

/// `tidemark dlq ...`: list, show, replay, purge dead letters.
async fn dlq_command(app: &App, action: &cli::DlqAction) -> anyhow::Result<ExitCode> {
    use cli::DlqAction;
    use tidemark::queue::{dlq, streams};
    let stream = app.keys.dead_letters();
    let read = |id: &str| {
        let (stream, id) = (stream.clone(), id.to_owned());
        async move {
            streams::entry(&app.pool, &stream, &id)
                .await
                .context("reading the dead-letter stream")?
                .with_context(|| format!("no dead letter {id:?} (see `tidemark dlq list`)"))
        }
    };
    match action {
        DlqAction::List { limit, json } => {
            let entries = streams::newest(&app.pool, &stream, *limit)
                .await
                .context("reading the dead-letter stream")?;
            let letters: Vec<dlq::DeadLetter> = entries.iter().map(|e| dlq::describe(e, &app.keys)).collect();
            if *json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else if letters.is_empty() {
                println!("no dead letters");
            } else {
                for l in &letters {
                    let at = [l.source.as_deref(), l.run.as_deref(), l.document.as_deref()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(" ");
                    let page = l.page.map(|p| format!(" page {p}")).unwrap_or_default();
                    println!("{}  {}  {at}{page}: {}", l.id, l.origin, l.reason);
                }
            }
        }
        DlqAction::Show { id } => {
            let letter = dlq::describe(&read(id).await?, &app.keys);
            println!("{}", serde_json::to_string_pretty(&letter)?);
        }
        DlqAction::Replay { ids } => {
            for id in ids {
                let entry = read(id).await?;
                let redo = dlq::redo_of(&entry, &app.keys)
                    .map_err(|why| anyhow::anyhow!("dead letter {id} cannot be replayed: {why}"))?;
                let request = dlq::replay_request(&redo);
                tidemark::queue::enqueue(&app.pool, &app.keys, &request)
                    .await
                    .context("enqueueing the replay")?;
                streams::delete(&app.pool, &stream, &[id.as_str()])
                    .await
                    .context("removing the replayed dead letter")?;
                let what = if request.targets.is_empty() {
                    format!("a {} sync", request.mode)
                } else {
                    format!("a run of {} document(s)", request.targets.len())
                };
                println!(
                    "replayed {id} as {what} of {}: request {}",
                    request.source, request.request_id
                );
            }
        }
        DlqAction::Purge { ids, all } => {
            let removed = if *all {
                streams::clear(&app.pool, &stream).await
            } else if ids.is_empty() {
                anyhow::bail!("name the dead letters to purge, or --all");
            } else {
                let named: Vec<&str> = ids.iter().map(String::as_str).collect();
                streams::delete(&app.pool, &stream, &named).await
            }
            .context("removing dead letters")?;
            println!("removed {removed} dead letter(s)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What a process serves on `[api] listen`, when set.
#[derive(Clone, Copy)]
enum Http {
    /// The whole API (coordinators, standalone).
    Api,
    /// Probes and metrics only (workers).
    Probes,
}

/// Serves `what` beside the process's loops when `[api] listen` is set.
fn spawn_http(tasks: &mut JoinSet<anyhow::Result<()>>, app: &App, shutdown: &CancellationToken, what: Http) {
    if let Some(addr) = app.config.api_listen {
        if matches!(what, Http::Api) && app.config.api.tokens.is_empty() {
            tracing::warn!(%addr, "the HTTP API has no tokens ([api] tokens_file or tokens_env): anyone who can reach it may request syncs");
        }
        let app = app.clone();
        let s = shutdown.clone();
        tasks.spawn(async move {
            match what {
                Http::Api => tidemark::api::serve(app, addr, s).await,
                Http::Probes => tidemark::api::serve_probes(app, addr, s).await,
            }
            .with_context(|| format!("HTTP on {addr}"))
        });
    }
}

/// Waits for every task. The first failure (say, the API port is taken) stops
/// the others through `shutdown`, so the process exits non-zero instead of
/// running half-alive; the rest still drain before that error is returned.
async fn join_all(mut tasks: JoinSet<anyhow::Result<()>>, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        let r = r.context("task panicked").and_then(|r| r);
        if let Err(e) = r {
            shutdown.cancel();
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// How waiting for a request's run ended.
enum Waited {
    /// A run serving it ended as completed, completed with errors, or failed.
    Ended(Box<RunRecord>),
    /// Redis answered, and no run had ended by the deadline.
    TimedOut,
    /// The request was dead-lettered before any run served it, for this reason.
    Refused(String),
    /// Redis was unreachable when the deadline passed (the last error).
    Unreachable(String),
}

/// Polls the request's outcome until a run serving it has ended or `deadline`
/// passes. Redis faults on the way are waited out with the shared backoff; they
/// never become an outcome. An `abandoned` run is not one either: the request
/// stays pending and is served by the run that takes it over.
async fn wait_for_outcome(
    app: &App,
    source: &SourceId,
    request_id: &str,
    deadline: Instant,
    progress: &mut progress::Progress,
) -> anyhow::Result<Waited> {
    const POLL: Duration = Duration::from_millis(200);
    let state = app.state();
    let mut delays = app.config.redis.retry.delays();
    let mut unreachable: Option<String> = None;
    loop {
        match state.request_refused(source, request_id).await {
            Ok(Some(reason)) => return Ok(Waited::Refused(reason)),
            Ok(None) => {}
            // Reported by the outcome read just below.
            Err(_) => {}
        }
        match state.request_outcome(source, request_id).await {
            Ok(outcome) => {
                if unreachable.take().is_some() {
                    tracing::info!(redis = %app.redis_addr(), "redis reachable again; still waiting for the run");
                }
                delays.reset();
                if let Some(rec) = &outcome {
                    progress.update(rec);
                }
                if let Some(rec) = outcome
                    && matches!(
                        rec.status,
                        RunStatus::Completed | RunStatus::CompletedWithErrors | RunStatus::Failed
                    )
                {
                    return Ok(Waited::Ended(Box::new(rec)));
                }
            }
            Err(e) if e.is_transient() => {
                if unreachable.is_none() {
                    tracing::warn!(redis = %app.redis_addr(), error = %e, "redis unreachable; still waiting for the run, retrying with backoff");
                }
                unreachable = Some(e.to_string());
            }
            Err(e) => return Err(e).context("reading the run's outcome"),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(match unreachable {
                Some(e) => Waited::Unreachable(e),
                None => Waited::TimedOut,
            });
        }
        let pause = if unreachable.is_some() {
            delays.next_delay()
        } else {
            POLL
        };
        tokio::time::sleep(pause.min(left)).await;
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
            let mut tasks = JoinSet::new();
            spawn_http(&mut tasks, &app, &shutdown, Http::Api);
            let coordinator = app.coordinator(consumer_name("coordinator"));
            let s = shutdown.clone();
            tasks.spawn(async move { Ok(coordinator.run(s, DRAIN_TIMEOUT).await?) });
            join_all(tasks, &shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker { concurrency } => {
            let mut app = load(&cli)?;
            if let Some(n) = concurrency {
                app.config.sync.worker_concurrency =
                    std::num::NonZeroUsize::new(*n).context("--concurrency must be at least 1")?;
            }
            let shutdown = tidemark::shutdown::on_signals();
            let mut tasks = JoinSet::new();
            spawn_http(&mut tasks, &app, &shutdown, Http::Probes);
            let worker = app.worker(consumer_name("worker"));
            let s = shutdown.clone();
            tasks.spawn(async move { Ok(worker.run(s, DRAIN_TIMEOUT).await?) });
            join_all(tasks, &shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Standalone { workers } => {
            let app = load(&cli)?;
            let shutdown = tidemark::shutdown::on_signals();
            let mut tasks = JoinSet::new();
            spawn_http(&mut tasks, &app, &shutdown, Http::Api);
            let coordinator = app.coordinator(consumer_name("coordinator"));
            let s = shutdown.clone();
            tasks.spawn(async move { Ok(coordinator.run(s, DRAIN_TIMEOUT).await?) });
            for _ in 0..*workers {
                let worker = app.worker(consumer_name("worker"));
                let s = shutdown.clone();
                tasks.spawn(async move { Ok(worker.run(s, DRAIN_TIMEOUT).await?) });
            }
            join_all(tasks, &shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Enqueue {
            source,
            full,
            allow_mass_delete,
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
            let mut request = SyncRequest::new(id.clone(), mode, "cli");
            request.allow_mass_delete = *allow_mass_delete;
            let deadline = Instant::now() + Duration::from_secs(*timeout);
            let stop = CancellationToken::new();
            let mut retrier = Retrier::new(app.config.redis.retry, &stop, "enqueueing the request").until(deadline);
            // A duplicate XADD after an unknown outcome is harmless: both entries
            // carry the same request id, the second is coalesced or served again,
            // and the answer is the first run that completed.
            loop {
                match tidemark::queue::enqueue(&app.pool, &app.keys, &request).await {
                    Ok(_) => break,
                    Err(e) => {
                        if let Err(e) = retrier.failed(e).await {
                            if e.is_transient() {
                                eprintln!(
                                    "error: could not reach redis at {} within {timeout}s: {e}",
                                    app.redis_addr()
                                );
                                return Ok(ExitCode::from(exit::REDIS_UNREACHABLE));
                            }
                            return Err(e).context("enqueueing the request");
                        }
                    }
                }
            }
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
            let mut progress = progress::Progress::new(*json);
            let waited = wait_for_outcome(&app, &id, &request.request_id, deadline, &mut progress).await;
            progress.finish();
            let record = match waited? {
                Waited::Ended(record) => record,
                Waited::TimedOut => {
                    eprintln!(
                        "error: no run of {source} ended within {timeout}s (request {})",
                        request.request_id
                    );
                    return Ok(ExitCode::from(exit::TIMED_OUT));
                }
                Waited::Refused(reason) => {
                    if *json {
                        let failed =
                            serde_json::json!({"request_id": request.request_id, "status": "failed", "error": reason});
                        println!("{failed}");
                    }
                    eprintln!(
                        "error: request {} was dead-lettered, no run served it: {reason}",
                        request.request_id
                    );
                    return Ok(ExitCode::FAILURE);
                }
                Waited::Unreachable(e) => {
                    eprintln!(
                        "error: redis at {} unreachable when the {timeout}s timeout ran out; \
                         the outcome of request {} is unknown: {e}",
                        app.redis_addr(),
                        request.request_id
                    );
                    return Ok(ExitCode::from(exit::REDIS_UNREACHABLE));
                }
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
                RunStatus::CompletedWithErrors => ExitCode::from(exit::COMPLETED_WITH_ERRORS),
                _ => ExitCode::FAILURE,
            })
        }
        Command::Status {
            source,
            json,
            runs,
            watch,
        } => {
            let app = load(&cli)?;
            let id = source.as_ref().map(|s| SourceId::new(s.clone())).transpose()?;
            // A source is one the config names, or one that ran before (removed since).
            if let Some(id) = &id
                && !app.sources.contains_key(id)
            {
                let known = app.state().known_sources().await.context("reading the known sources")?;
                if !known.contains(id) {
                    let mut configured: Vec<&str> = app.config.sources.iter().map(|s| s.id.as_str()).collect();
                    configured.sort_unstable();
                    anyhow::bail!(
                        "unknown source {:?} (configured: {}; none by that name has ever run)",
                        id.as_str(),
                        configured.join(", ")
                    );
                }
            }
            let shutdown = tidemark::shutdown::on_signals();
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
            loop {
                let (sources, queues) = report::collect_status(&app, id.as_ref(), *runs)
                    .await
                    .context("reading status")?;
                match (*json, watch.is_some()) {
                    (true, false) => {
                        let v = serde_json::json!({"sources": sources, "queues": queues});
                        println!("{}", serde_json::to_string_pretty(&v)?);
                    }
                    // Watching: one JSON document per line, for `jq` and log shippers.
                    (true, true) => println!("{}", serde_json::json!({"sources": sources, "queues": queues})),
                    (false, _) => {
                        if watch.is_some() {
                            if terminal {
                                print!("\x1b[2J\x1b[H");
                            }
                            println!("{}", chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC"));
                        }
                        print!("{}", report::status_text(&sources, &queues));
                    }
                }
                use std::io::Write;
                std::io::stdout().flush()?;
                let Some(every) = watch else { break };
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(*every)) => {}
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dlq { action } => {
            let app = load(&cli)?;
            dlq_command(&app, action).await
        }
        Command::Query {
            source,
            words,
            principals,
            with_link,
            limit,
            json,
        } => {
            for p in principals {
                tidemark::permissions::check(p).map_err(|e| anyhow::anyhow!("--as: {e}"))?;
            }
            let app = load(&cli)?;
            let id = SourceId::new(source.clone())?;
            let query = tidemark::sinks::search::Query {
                source: id.clone(),
                words: words.clone(),
                principals: tidemark::permissions::reader_principals(principals, *with_link),
                limit: *limit,
            };
            let sink = app
                .sinks
                .sink(&id)
                .with_context(|| format!("source {source} feeds no configured sink"))?;
            let hits = sink
                .search(&query)
                .await
                .with_context(|| format!("searching {source}"))?
                .with_context(|| format!("no sink of source {source} can be searched (a webhook keeps no copy)"))?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&hits)?);
            } else {
                for hit in &hits {
                    let place = hit.breadcrumb.join(" / ");
                    println!("{}\t{}\t{}", hit.title, hit.url.as_deref().unwrap_or(&hit.id.0), place);
                }
            }
            Ok(if hits.is_empty() {
                ExitCode::from(exit::NO_HITS)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Verify {
            source,
            with_source,
            repair,
            json,
        } => {
            let app = load(&cli)?;
            let id = SourceId::new(source.clone())?;
            let report = tidemark::verify::verify(&app, &id, *with_source)
                .await
                .with_context(|| format!("verifying {source}"))?;
            let repaired = if *repair {
                tidemark::verify::repair(&app, &id, &report)
                    .await
                    .with_context(|| format!("repairing {source}"))?
            } else {
                None
            };
            if *json {
                let v = serde_json::json!({"report": report, "repair": repaired});
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", report.text());
                if let Some(r) = &repaired {
                    println!(
                        "repair: {} document(s) marked; request {} enqueued ({})",
                        r.documents,
                        r.request_id,
                        if r.targeted { "targeted" } else { "incremental run" }
                    );
                }
            }
            Ok(if report.drift() {
                ExitCode::from(exit::DRIFT)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Simulate { service } => match service {
            Simulated::Confluence {
                listen,
                pages,
                space_key,
                rate_limit,
                timezone,
                clock_skew_secs,
                attachments,
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
                    attachments: *attachments,
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
            Simulated::Gdrive {
                listen,
                files,
                folder_id,
                drive_id,
                rate_limit,
            } => {
                let sim = GdriveSim::new(GdriveSimConfig {
                    root_folder_id: folder_id.clone(),
                    files: *files,
                    drive_id: drive_id.clone(),
                    rate_limit_per_sec: *rate_limit,
                    ..GdriveSimConfig::default()
                });
                let (addr, handle) = sim
                    .serve(*listen)
                    .await
                    .with_context(|| format!("listening on {listen}"))?;
                println!("google drive simulator: folder {folder_id} with {files} files at http://{addr}");
                tidemark::shutdown::on_signals().cancelled().await;
                handle.abort();
                Ok(ExitCode::SUCCESS)
            }
        },
    }
}
