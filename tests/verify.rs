//! `tidemark verify` (issue 8, point 2), run as the real binary: each kind of
//! drift is reported with its count and ids and a nonzero exit; the sink-vs-state
//! check makes no source call; `--repair` enqueues the run that fixes it all.

use std::process::Command;

use serde_json::Value;
use tidemark::sinks::Sink;
use tidemark::sinks::directory::DirectorySink;
use tidemark::state::RunStatus;
use tidemark::types::{DocumentId, SyncMode};

use crate::harness::{Env, Options};

/// Runs `tidemark verify eng <args> --json`; returns the exit code and the JSON.
fn verify(env: &Env, args: &[&str]) -> (i32, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidemark"))
        .args(["verify", "eng", "--json"])
        .args(args)
        .arg("--config")
        .arg(&env.config_path)
        .output()
        .expect("run tidemark verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().expect("exited"), json)
}

/// kind -> (count, ids) of a report's findings.
fn findings(json: &Value) -> Vec<(String, u64, Vec<String>)> {
    json["report"]["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            let ids = f["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|i| i.as_str().expect("id").to_string())
                .collect();
            (
                f["kind"].as_str().expect("kind").to_string(),
                f["count"].as_u64().expect("count"),
                ids,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_each_kind_of_drift_and_repair_fixes_it() {
    let env = Env::start(Options::default()).await;
    let _c = env.coordinator("c1");
    let _w = env.worker("w1");
    assert_eq!(env.sync(SyncMode::Full).await.status, RunStatus::Completed);

    let (code, clean) = verify(&env, &["--source"]);
    assert_eq!(code, 0, "{clean}");
    assert!(findings(&clean).is_empty(), "{clean}");
    assert_eq!(clean["report"]["sinks"][0]["documents"], 60);
    assert_eq!(clean["report"]["source_documents"], 60);

    // Drift of every kind, made behind tidemark's back.
    let pages = env.sim.pages();
    let (lost, altered) = (pages[3].id.clone(), pages[7].id.clone());
    let sink = DirectorySink::new(env.sink_dir.path());
    std::fs::remove_file(sink.doc_path(&env.source, &DocumentId(lost.clone()))).expect("rm");
    let mut doc = sink
        .get(&env.source, &DocumentId(altered.clone()))
        .await
        .expect("sink")
        .expect("held");
    doc.version = "0".into();
    sink.upsert(&doc).await.expect("write");
    let mut stray = doc.clone();
    stray.id = DocumentId("999999".into());
    sink.upsert(&stray).await.expect("write");

    // Sink against state: no source call at all.
    env.sim.reset_calls();
    let (code, cheap) = verify(&env, &[]);
    assert_eq!(code, 5, "drift exits 5: {cheap}");
    assert_eq!(
        env.sim.total_calls(),
        0,
        "a sink-vs-state check costs the source nothing"
    );
    assert_eq!(
        findings(&cheap),
        vec![
            ("state_without_sink".into(), 1, vec![lost.clone()]),
            ("sink_without_state".into(), 1, vec!["999999".into()]),
            ("version_differs_from_state".into(), 1, vec![altered.clone()]),
        ],
        "{cheap}"
    );

    // Against the source too.
    let (code, full) = verify(&env, &["--source"]);
    assert_eq!(code, 5);
    let kinds: Vec<(String, u64, Vec<String>)> = findings(&full).into_iter().skip(3).collect();
    assert_eq!(
        kinds,
        vec![
            ("missing_in_sink".into(), 1, vec![lost.clone()]),
            ("extra_in_sink".into(), 1, vec!["999999".into()]),
            ("version_differs_from_source".into(), 1, vec![altered.clone()]),
        ],
        "{full}"
    );
    assert!(full["report"]["api_calls"].as_u64().expect("calls") > 0);

    // --repair enqueues the targeted run that fixes all three documents.
    let (code, repaired) = verify(&env, &["--repair"]);
    assert_eq!(code, 5, "the report is of the drift found before the repair");
    assert_eq!(repaired["repair"]["documents"], 3, "{repaired}");
    assert_eq!(repaired["repair"]["targeted"], true);
    let request = repaired["repair"]["request_id"].as_str().expect("request").to_string();
    let run = env.wait(&request).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!((run.upserted, run.deleted), (2, 1), "{run:?}");

    let (code, after) = verify(&env, &["--source"]);
    assert_eq!(code, 0, "{after}");
    env.assert_sink_matches_source();
}
