//! The sink contract, tested once for every sink (issue 10): each sink runs
//! [`conformance::check`] against a fresh instance of itself.
//!
//! A sink killed between two writes, with the next run converging, is an
//! end-to-end property: `failover::sink_write_without_state_write_is_redone_after_takeover`
//! shows it for the directory sink.

pub mod conformance;
mod webhook;

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

/// A page is one round trip to PostgreSQL, counted on the wire by a proxy:
/// fifty upserts and five deletions, fence raised and checked, in one
/// statement. A page holding a document the database cannot store (a NUL
/// character) is applied again document by document: that one fails alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writes_a_page_in_one_round_trip() {
    use tidemark::sinks::{Change, Error, Sink, Written};
    use tidemark::types::{DocumentId, FencingToken};

    let server = crate::harness::postgres::PgServer::start();
    let wire = crate::harness::postgres::RoundTrips::proxy(server.port);
    let sink = tidemark::sinks::postgres::PostgresSink::connect(&wire.url(), 1)
        .await
        .expect("connect and migrate");
    let s = tidemark::types::SourceId::new("wire").expect("source id");
    sink.register_token(&s, FencingToken(1)).await.expect("register");
    let doc = |i: usize, content: &str| conformance::doc(&s, &format!("doc-{i}"), "1", content, 1);
    // The first page on a connection also prepares the statement.
    let first: Vec<_> = (0..5).map(|i| doc(i, "to be deleted")).collect();
    let changes: Vec<Change<'_>> = first.iter().map(Change::Put).collect();
    sink.apply(&s, FencingToken(1), &changes).await.expect("first page");

    let page: Vec<_> = (5..55).map(|i| doc(i, &format!("text of document {i}"))).collect();
    let gone: Vec<DocumentId> = first.iter().map(|d| d.id.clone()).collect();
    let mut changes: Vec<Change<'_>> = page.iter().map(Change::Put).collect();
    changes.extend(gone.iter().map(Change::Delete));
    let before = wire.count();
    let applied = sink.apply(&s, FencingToken(1), &changes).await.expect("page");
    assert_eq!(wire.count() - before, 1, "round trips for a page of 55 changes");
    assert!(applied.iter().all(|r| matches!(r, Ok(Written::Changed))), "{applied:?}");
    assert_eq!(sink.versions(&s).await.expect("versions").len(), 50);

    let bad = [doc(60, "fine"), doc(61, "a NUL \u{0} inside"), doc(62, "fine too")];
    let changes: Vec<Change<'_>> = bad.iter().map(Change::Put).collect();
    let applied = sink.apply(&s, FencingToken(1), &changes).await.expect("page");
    assert!(matches!(applied[0], Ok(Written::Changed)), "{applied:?}");
    assert!(
        matches!(&applied[1], Err(Error::Rejected { id, .. }) if id.0 == "doc-61"),
        "{applied:?}"
    );
    assert!(matches!(applied[2], Ok(Written::Changed)), "{applied:?}");
    assert_eq!(sink.versions(&s).await.expect("versions").len(), 52);
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

/// A long document of headed sections, paragraphs of varied length.
fn long_text(sections: usize, paragraphs: usize) -> String {
    let mut out = String::new();
    for s in 0..sections {
        out.push_str(&format!("# Part {s}\n\n"));
        for p in 0..paragraphs {
            let words = 10 + (s * 11 + p * 7) % 35;
            let line: Vec<String> = (0..words).map(|w| format!("term{s}-{p}-{w}")).collect();
            out.push_str(&line.join(" "));
            out.push('\n');
        }
    }
    out
}

/// `(hash, occurrence) -> (seq, content, written_at)` of a document's chunk rows.
async fn chunk_rows(
    url: &str,
    source: &str,
    id: &str,
) -> std::collections::HashMap<(String, i32), (i32, String, chrono::DateTime<chrono::Utc>)> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .query(
            "SELECT chunk_hash, occurrence, seq, content, written_at FROM chunks WHERE source = $1 AND document_id = $2",
            &[&source, &id],
        )
        .await
        .expect("chunks")
        .into_iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3), r.get(4))))
        .collect()
}

/// With chunks configured, PostgreSQL holds exactly the chunks of each
/// document's current text: a one-paragraph edit inserts only the chunks whose
/// text changed and leaves the others' rows untouched (an embedding stored
/// beside them stays valid); a rewrite that keeps the text (a new breadcrumb)
/// touches no chunk; a stale page changes none; a deletion removes them all;
/// and a sink that stops chunking leaves no stale chunks behind on its next write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_chunks_follow_their_documents() {
    use tidemark::sinks::chunks::{ChunkConfig, split};
    use tidemark::sinks::{Change, Sink, Written};
    use tidemark::types::FencingToken;

    let server = crate::harness::postgres::PgServer::start();
    let config = ChunkConfig { size: 400, overlap: 40 };
    let sink = tidemark::sinks::postgres::PostgresSink::connect(&server.url(), 2)
        .await
        .expect("connect")
        .with_chunks(config);
    let s = tidemark::types::SourceId::new("chunked").expect("source id");
    sink.register_token(&s, FencingToken(1)).await.expect("register");
    let text = long_text(4, 40);
    let v1 = conformance::doc(&s, "manual", "1", &text, 1);
    let other = conformance::doc(&s, "other", "1", "# Short\nOne paragraph.", 1);
    sink.apply(&s, FencingToken(1), &[Change::Put(&v1), Change::Put(&other)])
        .await
        .expect("page");
    let before = chunk_rows(&server.url(), "chunked", "manual").await;
    let expected = split(&text, &config);
    assert!(expected.len() >= 40, "{} chunks", expected.len());
    assert_eq!(before.len(), expected.len());
    for c in &expected {
        let row = &before[&(c.hash.clone(), c.occurrence as i32)];
        assert_eq!((row.0, &row.1), (c.seq as i32, &c.text));
    }

    // One paragraph edited in the middle.
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[70].push_str(" plus a sentence added by the edit");
    let edited_text = lines.join("\n") + "\n";
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let v2 = conformance::doc(&s, "manual", "2", &edited_text, 1);
    assert_eq!(sink.upsert(&v2).await.expect("upsert"), Written::Changed);
    let after = chunk_rows(&server.url(), "chunked", "manual").await;
    let expected = split(&edited_text, &config);
    assert_eq!(after.len(), expected.len());
    let new: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    assert!(
        (1..=3).contains(&new.len()),
        "{} chunks rewritten for one paragraph",
        new.len()
    );
    for (key, row) in &after {
        if let Some(old) = before.get(key) {
            assert_eq!(old.2, row.2, "an unchanged chunk's row is not rewritten");
        }
    }

    // The same text under a new breadcrumb: the document is rewritten, no chunk is.
    let mut moved = v2.clone();
    moved.breadcrumb = vec!["Elsewhere".into()];
    moved.content_hash = "moved".into();
    assert_eq!(sink.upsert(&moved).await.expect("upsert"), Written::Changed);
    assert_eq!(chunk_rows(&server.url(), "chunked", "manual").await, after);

    // A stale page changes no chunk.
    sink.register_token(&s, FencingToken(2)).await.expect("register");
    let stale = conformance::doc(&s, "manual", "3", "# Stale\nnothing", 1);
    assert!(sink.upsert(&stale).await.is_err());
    assert_eq!(chunk_rows(&server.url(), "chunked", "manual").await, after);

    // Deleted: its chunks go with it; the other document's stay.
    sink.delete(&s, &v1.id, FencingToken(2)).await.expect("delete");
    assert!(chunk_rows(&server.url(), "chunked", "manual").await.is_empty());
    assert_eq!(chunk_rows(&server.url(), "chunked", "other").await.len(), 1);

    // Chunking turned off: the next write of a document drops its chunks.
    let plain = tidemark::sinks::postgres::PostgresSink::connect(&server.url(), 1)
        .await
        .expect("connect");
    let other_v2 = conformance::doc(&s, "other", "2", "# Short\nEdited.", 2);
    plain.upsert(&other_v2).await.expect("upsert");
    assert!(chunk_rows(&server.url(), "chunked", "other").await.is_empty());
}

/// The directory sink with chunks writes them into each document's file.
#[tokio::test]
async fn directory_sink_writes_chunks_into_each_file() {
    use tidemark::sinks::chunks::{ChunkConfig, split};
    use tidemark::sinks::{Sink, directory::DirectorySink};

    let dir = tempfile::tempdir().expect("tempdir");
    let config = ChunkConfig { size: 300, overlap: 30 };
    let sink = DirectorySink::new(dir.path()).with_chunks(config);
    let s = tidemark::types::SourceId::new("files").expect("source id");
    let text = long_text(2, 20);
    let doc = conformance::doc(&s, "guide", "1", &text, 1);
    sink.upsert(&doc).await.expect("upsert");
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sink.doc_path(&s, &doc.id)).expect("read")).expect("json");
    let chunks = file["chunks"].as_array().expect("chunks");
    let expected = split(&text, &config);
    assert_eq!(chunks.len(), expected.len());
    for (stored, c) in chunks.iter().zip(&expected) {
        assert_eq!(stored["text"], c.text.as_str());
        assert_eq!(stored["hash"], c.hash.as_str());
        assert_eq!(stored["seq"], c.seq);
    }
    assert_eq!(
        sink.get(&s, &doc.id).await.expect("get"),
        Some(doc),
        "the document reads back as written"
    );
}

/// One source feeding two sinks (`[sink]` and a `[[sinks]]` PostgreSQL entry
/// with chunks): every change reaches both; `verify` checks each on its own;
/// a sink that lost its documents (or was added later) is found by `verify`
/// and refilled by `--repair`, the other sink untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_feeds_two_sinks_and_verify_checks_each() {
    use tidemark::sinks::Sink;
    use tidemark::state::RunStatus;
    use tidemark::types::{DocumentId, SyncMode};
    use tidemark::verify::{DriftKind, repair, verify};

    let pg = crate::harness::postgres::PgServer::start();
    let env = crate::harness::Env::fleet(crate::harness::Options {
        pages: 60,
        page_size: 10,
        more_sinks: format!(
            "[[sinks]]\nname = \"kb\"\nkind = \"postgres\"\nurl = \"{}\"\npool_size = 2\n[sinks.chunks]\nsize = 400",
            pg.url()
        ),
        source_fields: "sinks = [\"default\", \"kb\"]".into(),
        ..crate::harness::Options::default()
    })
    .await;
    let kb = tidemark::sinks::postgres::PostgresSink::connect(&pg.url(), 1)
        .await
        .expect("connect");
    let both_match_the_source = || async {
        let pages = env.sim.pages();
        let expected: std::collections::HashMap<DocumentId, String> = pages
            .iter()
            .map(|p| (DocumentId(p.id.clone()), p.version.to_string()))
            .collect();
        let files: std::collections::HashMap<DocumentId, String> =
            env.sink_docs().into_iter().map(|d| (d.id, d.version)).collect();
        assert_eq!(files, expected, "the directory sink");
        assert_eq!(
            kb.versions(&env.source).await.expect("versions"),
            expected,
            "PostgreSQL"
        );
    };
    let full = env.sync(SyncMode::Full).await;
    assert_eq!((full.status, full.upserted), (RunStatus::Completed, 60), "{full:?}");
    both_match_the_source().await;

    let pages = env.sim.pages();
    for p in &pages[3..6] {
        env.sim.update_page(&p.id, None, Some("<p>edited for both sinks</p>"));
    }
    let parents: std::collections::HashSet<&str> = pages.iter().filter_map(|p| p.parent_id.as_deref()).collect();
    let leaf = pages
        .iter()
        .rev()
        .find(|p| !parents.contains(p.id.as_str()))
        .expect("a leaf");
    env.sim.delete_page(&leaf.id);
    let inc = env.sync(SyncMode::Incremental).await;
    assert_eq!(inc.status, RunStatus::Completed, "{inc:?}");
    both_match_the_source().await;
    let edited = kb
        .get(&env.source, &DocumentId(pages[4].id.clone()))
        .await
        .expect("get")
        .expect("held");
    assert_eq!(edited.content, "edited for both sinks");

    let report = verify(&env.app, &env.source, false).await.expect("verify");
    let names: Vec<&str> = report.sinks.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["default", "kb"]);
    assert!(!report.drift(), "{}", report.text());

    // PostgreSQL loses the source's documents (a restore from an old backup,
    // or a sink added after the first sync): verify names that sink alone.
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
        .execute("DELETE FROM documents WHERE source = $1", &[&env.source.as_str()])
        .await
        .expect("delete");
    let report = verify(&env.app, &env.source, false).await.expect("verify");
    let lost: Vec<_> = report
        .findings
        .iter()
        .map(|f| (f.kind, f.sink.clone(), f.count))
        .collect();
    assert_eq!(
        lost,
        [(DriftKind::StateWithoutSink, Some("kb".to_owned()), 59)],
        "{}",
        report.text()
    );
    let fix = repair(&env.app, &env.source, &report)
        .await
        .expect("repair")
        .expect("something to repair");
    let run = env.wait(&fix.request_id).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    both_match_the_source().await;
    assert!(!verify(&env.app, &env.source, false).await.expect("verify").drift());
}
