//! Command-line definitions (clap); no behaviour lives here.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// tidemark: incremental sync of knowledge-base sources.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, short, global = true, env = "TIDEMARK_CONFIG", default_value = "tidemark.toml")]
    pub config: PathBuf,
    /// Log format.
    #[arg(long, global = true, env = "TIDEMARK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a coordinator: take sync requests, lock, read change feeds, enqueue page jobs.
    Coordinator,
    /// Run a worker: process page jobs.
    Worker {
        /// Pages in flight (overrides sync.worker_concurrency).
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// Run a coordinator and N workers in one process, over the same streams.
    Standalone {
        /// Worker loops to run.
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
    /// Ask for a sync of SOURCE.
    ///
    /// Redis faults are waited out with backoff, up to --timeout. Exit codes:
    /// 0 the run completed; 1 the run failed (or tidemark could not start: bad
    /// configuration, unknown source); 2 it completed with errors (some pages
    /// dead-lettered); 3 --wait timed out (Redis answered, no run ended in
    /// time); 4 Redis could not be reached within --timeout (the request was not
    /// enqueued, or its outcome could not be read when time ran out); 64 bad arguments.
    Enqueue {
        /// Source id.
        source: String,
        /// Full re-sync instead of incremental.
        #[arg(long)]
        full: bool,
        /// Confirm that this run may delete more than the source's `max_delete_share`.
        #[arg(long)]
        allow_mass_delete: bool,
        /// Block until the run serving this request ends; print its figures.
        #[arg(long)]
        wait: bool,
        /// Give up after this many seconds: waiting for the run (exit 3) or for
        /// an unreachable Redis (exit 4), enqueueing included.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show sources' checkpoints, documents, recent runs, and queue figures.
    Status {
        /// Only this source.
        source: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Runs to show per source.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Show it again every this many seconds until interrupted (a terminal
        /// is cleared first; JSON prints one document per line).
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
        watch: Option<u64>,
    },
    /// Compare the sink with the state (and the source): report drift by kind.
    /// Exit 0: no drift; 5: drift found; 1: could not check.
    Verify {
        /// Source id.
        source: String,
        /// Also list the source (one full listing, no content fetched) and compare.
        #[arg(long = "source")]
        with_source: bool,
        /// Enqueue the run that repairs what was found (drifted documents are
        /// marked unsettled, then fetched again or deleted).
        #[arg(long)]
        repair: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Search what a source's sink holds, as a given reader: only documents
    /// that reader may read come back (the retrieval side of permissions).
    /// Exit 0 with hits, 6 with none, 1 if the sink cannot be searched.
    Query {
        /// Source id.
        source: String,
        /// Words every document found contains (empty: every document the reader may read).
        #[arg(default_value = "")]
        words: String,
        /// A principal the reader holds (`user:alice@example.com`, `group:eng`);
        /// repeat for each. `anyone` and the domain of each user's email are added.
        #[arg(long = "as", value_name = "PRINCIPAL")]
        principals: Vec<String>,
        /// The reader holds the documents' links: `anyone_with_link` and
        /// `domain_with_link:` documents are theirs too.
        #[arg(long)]
        with_link: bool,
        /// At most this many documents.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read and act on the dead-letter stream (requests and page jobs that
    /// could not be processed, documents that failed alone).
    Dlq {
        /// What to do.
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Validate the configuration file and exit.
    CheckConfig,
    /// Run a simulator of a third-party API.
    Simulate {
        /// Which service.
        #[command(subcommand)]
        service: Simulated,
    },
}

/// Simulated services.
#[derive(Debug, Subcommand)]
pub enum Simulated {
    /// Confluence Cloud REST API (v2 pages and trash, v1 CQL search, attachment downloads).
    Confluence {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// Pages to seed.
        #[arg(long, default_value_t = 500)]
        pages: usize,
        /// Space key.
        #[arg(long, default_value = "ENG")]
        space_key: String,
        /// Requests per second before 429s.
        #[arg(long)]
        rate_limit: Option<u32>,
        /// The simulated user's timezone (IANA), used by CQL date literals.
        #[arg(long, default_value = "UTC")]
        timezone: String,
        /// Seconds the simulated server's clock is ahead (negative: behind).
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        clock_skew_secs: i64,
        /// Attach files (PDF, Office, text, HTML, images) to one page in four.
        #[arg(long)]
        attachments: bool,
    },
    /// Google Drive API v3 (changes, files, export), with a folder tree to sync.
    Gdrive {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8091")]
        listen: SocketAddr,
        /// Files to seed in the synced folder tree.
        #[arg(long, default_value_t = 500)]
        files: usize,
        /// Id of the synced folder (the connector's `folder_id`).
        #[arg(long, default_value = "root-folder")]
        folder_id: String,
        /// Simulate a shared drive with this id.
        #[arg(long)]
        drive_id: Option<String>,
        /// Requests per second before 403 userRateLimitExceeded.
        #[arg(long)]
        rate_limit: Option<u32>,
    },
}

/// `tidemark dlq` actions.
#[derive(Debug, Subcommand)]
pub enum DlqAction {
    /// The newest dead letters: id, origin, source, reason.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON (one array, bodies decoded).
        #[arg(long)]
        json: bool,
    },
    /// One dead letter with its original message decoded.
    Show {
        /// The dead letter's id (from `list`).
        id: String,
    },
    /// Redo dead letters and remove them: a request is enqueued again (under a
    /// new id, without any mass-deletion confirmation), a page job or a failed
    /// document becomes a targeted run of its documents.
    Replay {
        /// Dead-letter ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Remove dead letters.
    Purge {
        /// Dead-letter ids.
        ids: Vec<String>,
        /// Remove every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}
