//! The binary's edge: bad configuration and bad arguments give clear errors
//! naming what was wrong, and a non-zero exit.

use std::process::Command;

fn tidemark(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(args)
        .output()
        .expect("run tidemark");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `tidemark check-config` on a config file holding `toml`.
fn check_config(toml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidemark.toml");
    std::fs::write(&path, toml).unwrap();
    tidemark(&["check-config", "--config", path.to_str().unwrap()])
}

/// `check-config` on a file with several mistakes exits non-zero and names every one, with its key path.
#[test]
fn check_config_names_every_problem() {
    let (code, _, err) = check_config(
        r#"
[redis]
url = "http://localhost"
[sink]
kind = "directory"
[[sources]]
id = "eng"
kind = "jira"
[[sources]]
id = "eng"
kind = "confluence"
[sources.settings]
base_url = "ftp://x"
space_key = "ENG"
"#,
    );
    assert_ne!(code, 0);
    for needle in [
        "redis.url",
        "sink.path",
        "sources[0].kind: unknown kind \"jira\"",
        "sources[1].id: duplicate",
        "sources[1].settings.base_url",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

/// A missing config file and a TOML syntax error are reported with the file name.
#[test]
fn unreadable_or_malformed_config_is_named() {
    let (code, _, err) = tidemark(&["check-config", "--config", "/nonexistent/tidemark.toml"]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/tidemark.toml"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(&path, "[redis\nurl = ").unwrap();
    let (code, _, err) = tidemark(&["check-config", "--config", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("broken.toml"), "{err}");
}

/// `enqueue` for a source that is not configured fails naming it and the configured ones.
#[test]
fn enqueue_unknown_source_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        r#"
[redis]
url = "redis://127.0.0.1:1"
[sink]
kind = "directory"
path = "/tmp/kb"
[[sources]]
id = "eng"
kind = "confluence"
[sources.settings]
base_url = "https://example.atlassian.net"
space_key = "ENG"
"#,
    )
    .unwrap();
    let (code, _, err) = tidemark(&["enqueue", "marketing", "--config", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        err.contains("unknown source \"marketing\"") && err.contains("eng"),
        "{err}"
    );
}

/// `standalone` (a coordinator and workers in one process) serves `enqueue --wait`,
/// whose JSON carries the run's figures, and `status --json` reports the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_enqueue_wait_and_status() {
    let mut env = crate::harness::Env::start(crate::harness::Options::default()).await;
    env.spawn_process(&["standalone", "--workers", "2"]);
    let config = env.config_path.to_str().unwrap().to_owned();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        tidemark(&[
            "enqueue",
            "eng",
            "--full",
            "--wait",
            "--json",
            "--timeout",
            "60",
            "--config",
            &config,
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    let run: serde_json::Value = serde_json::from_str(&out).expect("enqueue --json prints JSON");
    assert_eq!(run["status"], "completed");
    assert_eq!(run["docs_processed"], 60);
    assert_eq!(run["upserted"], 60);
    let config = env.config_path.to_str().unwrap().to_owned();
    let (code, out, _) =
        tokio::task::spawn_blocking(move || tidemark(&["status", "eng", "--json", "--config", &config]))
            .await
            .unwrap();
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).expect("status --json prints JSON");
    assert_eq!(status["sources"][0]["documents"], 60);
    assert_eq!(status["sources"][0]["runs"][0]["status"], "completed");
    env.assert_sink_matches_source();
}

/// No URL password reaches a person: not in config problems, not in a run's
/// errors from a source that cannot be reached (issue 8, point 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_passwords_never_reach_errors() {
    let (code, out, err) = check_config(
        r#"
[redis]
url = "redis://default:s3cret-redis@127.0.0.1:1"
[sink]
kind = "directory"
path = "/tmp/x"
[[sources]]
id = "eng"
kind = "confluence"
[sources.settings]
base_url = "https://bot:s3cret-wiki@example.atlassian.net/wiki"
space_key = "ENG"
"#,
    );
    assert_ne!(code, 0);
    assert!(err.contains("bot:***@example.atlassian.net"), "{err}");
    assert!(!format!("{out}{err}").contains("s3cret"), "{out}{err}");

    // A source URL with credentials that cannot be reached: the run's error names it, redacted.
    let web = "[[sources]]\nid = \"eng\"\nkind = \"http\"\n[sources.settings]\n\
               urls = [\"http://u:s3cret-web@127.0.0.1:1/page\"]\nmax_retries = 0\n";
    let env = crate::harness::Env::start(crate::harness::Options {
        source_toml: Some(web.into()),
        ..Default::default()
    })
    .await;
    let _c = env.coordinator("c1");
    let _w = env.worker("w1");
    let run = env.sync(tidemark::types::SyncMode::Full).await;
    assert!(!run.last_error.is_empty(), "{run:?}");
    assert!(run.last_error.contains("u:***@127.0.0.1"), "{run:?}");
    assert!(!format!("{run:?}").contains("s3cret"), "{run:?}");
}

/// Timeouts that cannot work together are refused at start, by name: an idle
/// XREADGROUP BLOCK as long as the Redis response timeout would time out every
/// idle read (issue 8, point 7).
#[test]
fn timeouts_that_cannot_work_together_are_refused() {
    let (code, _, err) = check_config(
        r#"
[redis]
url = "redis://127.0.0.1:6379"
response_timeout_ms = 2000
[sink]
kind = "directory"
path = "/tmp/x"
[sync]
block_ms = 2000
[[sources]]
id = "eng"
kind = "filesystem"
[sources.settings]
root = "/tmp"
"#,
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("sync.block_ms") && err.contains("response_timeout_ms"),
        "{err}"
    );
}

/// `status` of a source neither configured nor ever run is an error naming
/// the configured ones; an unreachable Redis is one line, each cause once.
#[test]
fn status_of_an_unknown_source_and_redis_down_are_one_clear_line() {
    let redis = crate::harness::redis_server::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidemark.toml");
    let config = |url: &str| {
        format!(
            "[redis]\nurl = \"{url}\"\n[sink]\nkind = \"directory\"\npath = \"/tmp/kb\"\n[[sources]]\nid = \"eng\"\nkind = \"confluence\"\n[sources.settings]\nbase_url = \"https://example.atlassian.net\"\nspace_key = \"ENG\"\n"
        )
    };
    std::fs::write(&path, config(&redis.url())).unwrap();
    let (code, _, err) = tidemark(&["status", "nope", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown source \"nope\" (configured: eng"), "{err}");
    let (code, out, err) = tidemark(&["status", "eng", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("eng"), "{out}");

    let port = crate::harness::redis_server::free_port();
    std::fs::write(&path, config(&format!("redis://127.0.0.1:{port}"))).unwrap();
    let (code, _, err) = tidemark(&["status", "--config", path.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
    assert_eq!(err.matches("Connection refused").count(), 1, "each cause once: {err}");
}

/// `status --watch N` prints the status again every N seconds until
/// interrupted (SIGTERM ends it cleanly); with `--json`, one document a line.
#[test]
fn status_watch_repeats_until_interrupted() {
    use std::io::{BufRead, BufReader};
    let redis = crate::harness::redis_server::RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tidemark.toml");
    std::fs::write(
        &path,
        format!(
            "[redis]\nurl = \"{}\"\n[sink]\nkind = \"directory\"\npath = \"/tmp/kb\"\n[[sources]]\nid = \"eng\"\nkind = \"confluence\"\n[sources.settings]\nbase_url = \"https://example.atlassian.net\"\nspace_key = \"ENG\"\n",
            redis.url()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["status", "--watch", "1", "--json", "--config", path.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run tidemark");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut documents = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while documents.len() < 3 && std::time::Instant::now() < deadline {
        if let Ok(line) = lines_rx.recv_timeout(std::time::Duration::from_millis(200)) {
            let doc: serde_json::Value = serde_json::from_str(&line).expect("one JSON document a line");
            documents.push(doc);
        }
    }
    assert_eq!(documents.len(), 3, "three refreshes within 20 s");
    assert!(
        documents.iter().all(|d| d["sources"][0]["source"] == "eng"),
        "{documents:?}"
    );
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().expect("exits");
    assert_eq!(status.code(), Some(0), "SIGTERM ends the watch cleanly");
}

/// `enqueue --wait` shows the run's progress as it goes (plain lines on a
/// pipe, JSON lines with `--json`), on stderr, and keeps stdout for the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_wait_shows_progress_on_stderr() {
    // 20 page jobs, one at a time per worker, 300 ms a call: a run of about
    // three seconds, so several one-second progress lines.
    let env = crate::harness::Env::fleet(crate::harness::Options {
        pages: 80,
        page_size: 4,
        sync: "worker_concurrency = 1".into(),
        ..crate::harness::Options::default()
    })
    .await;
    env.sim.set_latency(std::time::Duration::from_millis(300));
    let run = |json: bool| {
        let config = env.config_path.clone();
        tokio::task::spawn_blocking(move || {
            let mut args = vec!["enqueue", "eng", "--full", "--wait"];
            if json {
                args.push("--json");
            }
            let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
                .args(&args)
                .arg("--config")
                .arg(&config)
                .env("RUST_LOG", "error")
                .output()
                .expect("run tidemark");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let (code, out, err) = run(false).await.expect("cli");
    assert_eq!(code, Some(0), "{err}");
    let progress: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("run ") && l.contains(" pages"))
        .collect();
    assert!(progress.len() >= 2, "progress lines on stderr: {err}");
    assert!(
        out.starts_with("run ") && out.contains("[full] completed"),
        "the result on stdout: {out}"
    );
    assert!(!out.contains("/20 pages"), "no progress on stdout: {out}");

    let (code, out, err) = run(true).await.expect("cli");
    assert_eq!(code, Some(0), "{err}");
    let events: Vec<serde_json::Value> = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "progress")
        .collect();
    assert!(events.len() >= 2, "JSON progress lines: {err}");
    assert!(
        events
            .iter()
            .all(|e| e["pages_total"].is_u64() && e["docs_processed"].is_u64())
    );
    let result: serde_json::Value = serde_json::from_str(&out).expect("stdout is the run as JSON");
    assert_eq!(result["status"], "completed");
}

/// The configurations shipped for Kubernetes (the base ConfigMap and the
/// managed-Redis-over-TLS overlay) pass `check-config` once the Secret's files
/// exist: what an operator applies is valid as shipped.
#[test]
fn configs_shipped_for_kubernetes_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let configmap = std::fs::read_to_string(root.join("k8s/base/configmap.yaml")).unwrap();
    let base: String = configmap
        .split_once("tidemark.toml: |\n")
        .expect("the ConfigMap holds tidemark.toml")
        .1
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let tls = std::fs::read_to_string(root.join("k8s/overlays/managed-redis-tls/tidemark.toml")).unwrap();
    let cluster = std::fs::read_to_string(root.join("k8s/overlays/redis-cluster/tidemark.toml")).unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let ca = std::fs::read_to_string(root.join("k8s/secret.example.yaml")).unwrap();
    assert!(ca.contains("redis-ca.crt"), "the Secret template names the CA file");
    for (name, value) in [
        ("confluence-token", "token"),
        ("webhook-secret", "secret"),
        ("api-tokens", "ci sync 0123456789abcdef0123456789abcdef\n"),
        ("redis-username", "tidemark\n"),
        ("redis-password", "pw\n"),
    ] {
        std::fs::write(secrets.path().join(name), value).unwrap();
    }
    let generated = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args(["-keyout", "/dev/null", "-days", "1", "-subj", "/CN=ca"])
        .output()
        .expect("openssl");
    std::fs::write(secrets.path().join("redis-ca.crt"), &generated.stdout).unwrap();
    for (label, text) in [("base", base), ("managed-redis-tls", tls), ("redis-cluster", cluster)] {
        let text = text.replace("/etc/tidemark/secrets", secrets.path().to_str().unwrap());
        let (code, out, err) = check_config(&text);
        assert_eq!(code, 0, "{label}: {out}{err}");
    }
}
