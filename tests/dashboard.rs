//! The live dashboard in a real headless Chromium (Debian's `chromium`):
//! with a `read` token it shows the source, its in-flight run's progress, the
//! last run, the queues and the dead letters; without one it asks for a token
//! and shows no data. A screenshot is saved as a test artifact
//! (`target/test-artifacts/dashboard.png`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tidemark::config::{ApiToken, Scope, Secret};
use tidemark::state::RunStatus;
use tidemark::types::SyncMode;
use tokio_util::sync::CancellationToken;

use crate::harness::points::{Director, When};
use crate::harness::{Env, Options};

const READ_TOKEN: &str = "dashboard-read-token-0123456789abcdef";

/// Runs headless Chromium on `url` with `args` (`--dump-dom`, `--screenshot=…`)
/// after letting the page's script run for a few seconds of virtual time;
/// returns what it printed.
fn chromium(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--window-size=1280,900",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium must be installed (make test installs Debian's chromium package)");
    assert!(
        out.status.success(),
        "chromium {args:?} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_live_runs_queues_and_dead_letters_in_chromium() {
    // The paused page is kept fresh every third of the idle timeout; with
    // Chromium starting on a loaded 2-core machine, 1 s was too little, the
    // page was claimed again, and the run finished before the dump.
    let mut env = Env::start(Options {
        job_idle_timeout_ms: 10_000,
        ..Options::default()
    })
    .await;
    let (director, mut paused) = Director::new(true);
    let director = Arc::new(director);
    env.app = env.app.clone().with_hooks(director.clone());
    env.app.config.api.tokens = vec![ApiToken {
        name: "dashboard".into(),
        scope: Scope::Read,
        secret: Secret(READ_TOKEN.as_bytes().to_vec()),
    }];
    env.coordinator("c1");
    env.worker("w1");
    let full = env.sync(SyncMode::Full).await;
    assert_eq!(full.status, RunStatus::Completed, "{full:?}");

    // A malformed request: dead-lettered with its reason.
    env.xadd_raw(&env.app.keys.requests(), &[("bogus", b"1")]);
    // A document dead-lettered with a receiver's HTML answer as its reason:
    // the page must show it as text.
    env.xadd_raw(
        &env.app.keys.dead_letters(),
        &[
            ("origin", b"document"),
            ("source", b"eng"),
            ("document", b"p-7"),
            ("reason", b"HTTP 422: <img src=x onerror=alert(1)><b>refused</b>"),
        ],
    );
    crate::harness::wait_until("the bad request is dead-lettered", Duration::from_secs(20), || async {
        crate::queue::dead_letters(&env).len() >= 2
    })
    .await;

    // A second full run, paused before its second page: one page of three done.
    director.arm(&env.source, When::PageStart(1));
    let request = env.enqueue(SyncMode::Full, "dashboard-test").await;
    let pause = tokio::time::timeout(Duration::from_secs(30), paused.recv())
        .await
        .expect("the run reaches its second page")
        .expect("director alive");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let stop = CancellationToken::new();
    tokio::spawn(tidemark::api::serve_on(listener, env.app.clone(), stop.clone()));
    let page = format!("http://127.0.0.1:{port}/dashboard");

    let with_token = format!("{page}#token={READ_TOKEN}");
    let dom = {
        let url = with_token.clone();
        tokio::task::spawn_blocking(move || chromium(&url, &["--dump-dom"]))
            .await
            .expect("chromium thread")
    };
    for expected in [
        "data-source=\"eng\"",
        ">60<",
        "page 1 / 3",
        "width: 33%",
        "class=\"status running\"",
        "class=\"status completed\"",
        "jobs waiting (lag)",
        "dead letters",
        "tm:requests",
        "live, updated",
    ] {
        assert!(dom.contains(expected), "the dashboard lacks {expected:?}:\n{dom}");
    }
    assert!(
        dom.contains("HTTP 422: &lt;img src=x onerror=alert(1)&gt;&lt;b&gt;refused&lt;/b&gt;"),
        "a dead letter's reason is shown as text:\n{dom}"
    );
    assert!(
        !dom.contains("<img src=x") && !dom.contains("<b>refused"),
        "text from the API was rendered as HTML:\n{dom}"
    );

    let shot = artifacts().join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    {
        let (url, arg) = (with_token.clone(), format!("--screenshot={}", shot.display()));
        tokio::task::spawn_blocking(move || chromium(&url, &[&arg]))
            .await
            .expect("chromium thread");
    }
    let png = std::fs::read(&shot).expect("a screenshot was written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());

    // No token: the page asks for one and shows nothing of the API's.
    let anonymous = tokio::task::spawn_blocking(move || chromium(&page, &["--dump-dom"]))
        .await
        .expect("chromium thread");
    assert!(anonymous.contains("token needed"), "{anonymous}");
    assert!(!anonymous.contains("data-source="), "{anonymous}");

    pause.resume();
    let run = env.wait(&request).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    stop.cancel();
}
