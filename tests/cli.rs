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

/// `check-config` on a file with several mistakes exits non-zero and names every one, with its key path.
#[test]
fn check_config_names_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
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
    )
    .unwrap();
    let (code, _, err) = tidemark(&["check-config", "--config", path.to_str().unwrap()]);
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
