//! Per-document failure isolation (issue 8, point 6): a document the sink will
//! never accept fails alone, with its own reason in the run record, `status` and
//! the dead-letter stream; the rest of its page is applied; the checkpoint moves
//! on, and every later run retries the failed document until it succeeds.

use tidemark::report;
use tidemark::sinks::directory::DirectorySink;
use tidemark::state::RunStatus;
use tidemark::types::{DocumentId, SyncMode};

use crate::harness::{Env, Options};
use crate::queue::dead_letters;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unwritable_document_fails_alone_and_is_retried_until_it_succeeds() {
    let env = Env::start(Options::default()).await;
    let _c = env.coordinator("c1");
    let _w = env.worker("w1");
    let state = env.app.state();

    // The victim's file path is taken by a directory: the sink can never write it there.
    let victim = env.sim.pages()[5].id.clone();
    let blocked = DirectorySink::new(env.sink_dir.path()).doc_path(&env.source, &DocumentId(victim.clone()));
    std::fs::create_dir_all(&blocked).expect("mkdir");

    let first = env.sync(SyncMode::Full).await;
    assert_eq!(first.status, RunStatus::CompletedWithErrors, "{first:?}");
    assert_eq!(
        (first.upserted, first.docs_failed, first.pages_failed),
        (59, 1, 0),
        "the other 19 documents of the victim's page were applied: {first:?}"
    );
    assert!(
        first.last_error.contains(&victim) && first.last_error.contains("is a directory"),
        "{first:?}"
    );
    assert_eq!(env.sink_docs().len(), 59);
    assert!(
        state.checkpoint(&env.source).await.expect("state").watermark.is_some(),
        "a document that failed alone does not hold the checkpoint back"
    );

    // Visible in status, with its own reason, as permanent.
    let (sources, _) = report::collect_status(&env.app, Some(&env.source), 1)
        .await
        .expect("status");
    let failed = &sources[0].failed_documents;
    assert_eq!(failed.keys().collect::<Vec<_>>(), vec![&victim], "{failed:?}");
    assert!(!failed[&victim].retryable);
    assert!(report::status_text(&sources, &report::queue_status(&env.app).await.expect("queues")).contains(&victim));
    // And in the dead-letter stream, as a document, not as a page.
    let dl = dead_letters(&env);
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(dl[0]["origin"], "document");
    assert_eq!(dl[0]["document"], victim);
    assert_eq!(dl[0]["retryable"], "false");

    // The next run retries it (and nothing else), and still cannot.
    let second = env.sync(SyncMode::Incremental).await;
    assert_eq!(second.status, RunStatus::CompletedWithErrors, "{second:?}");
    assert_eq!(
        (second.docs_processed, second.docs_failed, second.upserted),
        (1, 1, 0),
        "{second:?}"
    );

    // Fixed: the run after that writes it and forgets the failure.
    std::fs::remove_dir(&blocked).expect("rmdir");
    let third = env.sync(SyncMode::Incremental).await;
    assert_eq!(third.status, RunStatus::Completed, "{third:?}");
    assert_eq!(
        (third.docs_processed, third.upserted, third.docs_failed),
        (1, 1, 0),
        "{third:?}"
    );
    assert!(state.failures(&env.source).await.expect("state").is_empty());
    env.assert_sink_matches_source();
    let fourth = env.sync(SyncMode::Incremental).await;
    assert_eq!(
        (fourth.status, fourth.docs_processed),
        (RunStatus::Completed, 0),
        "{fourth:?}"
    );
}

/// A document the source cannot hand over fails alone, at the fetch: Drive
/// refuses to export a Google Doc over 10 MB (403 `exportSizeLimitExceeded`,
/// per the `files.export` reference). The rest of its page is applied, the
/// failure is permanent and names the file, and once the document shrinks the
/// next incremental run writes it and forgets the failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unfetchable_document_fails_alone_and_is_retried_until_it_succeeds() {
    use tidemark::simulators::gdrive::{DOC_MIME, EXPORT_LIMIT_BYTES, SimConfig};

    let (env, sim) = crate::gdrive::start(
        SimConfig {
            files: 30,
            ..SimConfig::default()
        },
        "",
    )
    .await;
    let huge = "x".repeat(EXPORT_LIMIT_BYTES + 1);
    let victim = sim
        .create_file("Huge export", "root-folder", DOC_MIME, &huge)
        .expect("created");

    let first = env.sync(SyncMode::Full).await;
    assert_eq!(first.status, RunStatus::CompletedWithErrors, "{first:?}");
    assert_eq!(
        (first.upserted, first.docs_failed, first.pages_failed),
        (30, 1, 0),
        "{first:?}"
    );
    assert!(
        first.last_error.contains(&victim) && first.last_error.contains("exportSizeLimitExceeded"),
        "{first:?}"
    );
    assert!(env.sink_docs().iter().all(|d| d.id.0 != victim));
    let failures = env.app.state().failures(&env.source).await.expect("state");
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(!failures[&DocumentId(victim.clone())].retryable, "{failures:?}");

    assert!(sim.update_file(&victim, None, Some("small now")));
    let second = env.sync(SyncMode::Incremental).await;
    assert_eq!(second.status, RunStatus::Completed, "{second:?}");
    assert_eq!((second.upserted, second.docs_failed), (1, 0), "{second:?}");
    assert!(
        env.sink_docs()
            .iter()
            .any(|d| d.id.0 == victim && d.content == "small now")
    );
    assert!(env.app.state().failures(&env.source).await.expect("state").is_empty());
}
