//! The sink contract, tested once for every sink (issue 10): each sink runs
//! [`conformance::check`] against a fresh instance of itself.
//!
//! A sink killed between two writes, with the next run converging, is an
//! end-to-end property: `failover::sink_write_without_state_write_is_redone_after_takeover`
//! shows it for the directory sink.

pub mod conformance;

use std::sync::Arc;

use tidemark::sinks::directory::DirectorySink;

/// The directory sink (one JSON file per document) keeps the contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_sink_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::check("directory", Arc::new(DirectorySink::new(dir.path()))).await;
}

/// The PostgreSQL sink keeps the contract, on a server of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sink_conforms() {
    let server = crate::harness::postgres::PgServer::start();
    let sink = tidemark::sinks::postgres::PostgresSink::connect(&server.url(), 4)
        .await
        .expect("connect and migrate");
    conformance::check("postgres", Arc::new(sink)).await;
}

/// Syncs into PostgreSQL end to end, then kills the database (SIGKILL) once an
/// incremental run has applied its first page, and starts it again a second
/// later: the pages that met the dead database are retried (or, past their
/// deliveries, redone by the next run), and the knowledge base ends equal to
/// the source. Nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_mid_run_loses_nothing() {
    use tidemark::sinks::Sink;
    use tidemark::state::RunStatus;
    use tidemark::types::{DocumentId, SyncMode};

    let mut pg = crate::harness::postgres::PgServer::start();
    let env = crate::harness::Env::start(crate::harness::Options {
        pages: 60,
        page_size: 5,
        sink_toml: Some(format!("kind = \"postgres\"\nurl = \"{}\"\npool_size = 4", pg.url())),
        ..crate::harness::Options::default()
    })
    .await;
    env.coordinator("c1");
    env.worker("w1");
    let full = env.sync(SyncMode::Full).await;
    assert_eq!((full.status, full.upserted), (RunStatus::Completed, 60), "{full:?}");
    let reader = tidemark::sinks::postgres::PostgresSink::connect(&pg.url(), 2)
        .await
        .expect("connect");
    let matches_source = |held: std::collections::HashMap<DocumentId, String>| {
        let pages = env.sim.pages();
        pages.len() == held.len()
            && pages
                .iter()
                .all(|p| held.get(&DocumentId(p.id.clone())) == Some(&p.version.to_string()))
    };
    assert!(matches_source(reader.versions(&env.source).await.expect("versions")));

    let pages = env.sim.pages();
    for p in &pages[..20] {
        env.sim
            .update_page(&p.id, None, Some("<p>edited while the database was down</p>"));
    }
    // Slow fetches, so the database dies while the run is between pages.
    env.sim.set_latency(std::time::Duration::from_millis(150));
    let request = env.enqueue(SyncMode::Incremental, "test").await;
    let state = env.app.state();
    crate::harness::wait_until(
        "the run applied its first page",
        std::time::Duration::from_secs(30),
        || {
            let (state, source, request) = (state.clone(), env.source.clone(), request.clone());
            async move {
                matches!(
                    state.request_outcome(&source, &request).await,
                    Ok(Some(r)) if r.pages_done >= 1
                )
            }
        },
    )
    .await;
    pg.kill();
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    tokio::task::block_in_place(|| pg.restart());
    let run = env.wait(&request).await;
    assert!(run.status.is_terminal(), "{run:?}");
    if run.status != RunStatus::Completed {
        // Pages that used up their deliveries while the database was down are redone.
        let again = env.sync(SyncMode::Incremental).await;
        assert_eq!(again.status, RunStatus::Completed, "{again:?}");
    }
    let reader = tidemark::sinks::postgres::PostgresSink::connect(&pg.url(), 2)
        .await
        .expect("reconnect");
    let held = reader.versions(&env.source).await.expect("versions");
    let stale: Vec<_> = env
        .sim
        .pages()
        .into_iter()
        .filter(|p| held.get(&DocumentId(p.id.clone())) != Some(&p.version.to_string()))
        .map(|p| p.id)
        .collect();
    assert!(
        matches_source(held),
        "stale or missing in the sink: {stale:?}; run: {run:?}"
    );
    let edited = reader
        .get(&env.source, &DocumentId(pages[3].id.clone()))
        .await
        .expect("get")
        .expect("held");
    assert_eq!(edited.content, "edited while the database was down");
}
