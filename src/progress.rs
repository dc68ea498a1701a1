//! `enqueue --wait` progress, on stderr so stdout keeps only the result: a
//! bar on a terminal (pages done of those planned so far, documents, API
//! calls, elapsed, ETA; `indicatif`), plain lines otherwise (one per change,
//! at most one a second), JSON lines with `--json`.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tidemark::state::RunRecord;

/// How progress is shown.
pub enum Progress {
    /// A live bar on a terminal.
    Bar(ProgressBar),
    /// A line per change.
    Lines {
        /// JSON lines instead of text.
        json: bool,
        /// The last figures printed, and when.
        last: Option<((u64, u64, bool), Instant)>,
    },
}

impl Progress {
    /// A bar when stderr is a terminal and `json` is off, lines otherwise.
    pub fn new(json: bool) -> Self {
        if json || !std::io::stderr().is_terminal() {
            return Progress::Lines { json, last: None };
        }
        let bar = ProgressBar::new(0);
        let style =
            ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:30}] {pos}/{len} pages, {msg} (ETA {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress::Bar(bar)
    }

    /// Shows `run` as it stands now.
    pub fn update(&mut self, run: &RunRecord) {
        let done = run.pages_done + run.pages_failed + run.pages_superseded;
        let planned = if run.feed_done { "" } else { " (still planning)" };
        match self {
            Progress::Bar(bar) => {
                bar.set_length(run.pages_total);
                bar.set_position(done);
                bar.set_message(format!(
                    "{} documents, {} API calls{planned}",
                    run.docs_processed, run.api_calls
                ));
            }
            Progress::Lines { json, last } => {
                let figures = (done, run.pages_total, run.feed_done);
                let due = last.is_none_or(|(seen, at)| seen != figures && at.elapsed() >= Duration::from_secs(1));
                if !due {
                    return;
                }
                *last = Some((figures, Instant::now()));
                let run_id = &run.run_id.0[..run.run_id.0.len().min(8)];
                if *json {
                    let line = serde_json::json!({
                        "event": "progress", "run_id": run.run_id.0, "status": run.status,
                        "pages_done": done, "pages_total": run.pages_total, "feed_done": run.feed_done,
                        "docs_processed": run.docs_processed, "api_calls": run.api_calls,
                    });
                    eprintln!("{line}");
                } else {
                    eprintln!(
                        "run {run_id}: {done}/{} pages{planned}, {} documents, {} API calls",
                        run.pages_total, run.docs_processed, run.api_calls
                    );
                }
            }
        }
    }

    /// Removes the bar (the result follows on stdout).
    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
