//! Dependency tracking: when a document is renamed, moved or deleted, the
//! documents that depend on it (descendants' breadcrumbs, linking documents'
//! link titles) are rewritten in the sink from the sink's own copy — no
//! content is fetched from the source for them.

use tidemark::state::RunStatus;
use tidemark::types::SyncMode;

use crate::harness::{Env, Options};

fn link(id: &str) -> String {
    format!(r#"<a href="/wiki/spaces/ENG/pages/{id}">see</a>"#)
}

/// A renamed parent with 50 descendants: its own page is fetched, and all 50
/// breadcrumbs are rewritten with zero content fetches for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_parent_rewrites_fifty_breadcrumbs_without_fetching() {
    let env = Env::start(Options {
        pages: 5,
        ..Options::default()
    })
    .await;
    let guide = env.sim.create_page("Product Guide", None, "<p>guide</p>");
    for c in 0..10 {
        let child = env
            .sim
            .create_page(&format!("Chapter {c}"), Some(&guide), "<p>chapter</p>");
        for g in 0..4 {
            env.sim
                .create_page(&format!("Section {c}.{g}"), Some(&child), "<p>section</p>");
        }
    }
    env.coordinator("c1");
    env.worker("w1");
    env.sync(SyncMode::Full).await;
    env.assert_sink_matches_source();

    env.sim.update_page(&guide, Some("Product Documentation"), None);
    env.sim.reset_calls();
    let run = env.sync(SyncMode::Incremental).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(
        run.docs_processed, 1,
        "only the renamed page changed at the source: {run:?}"
    );
    assert_eq!((run.dependents, run.dependents_updated), (50, 50), "{run:?}");
    assert_eq!(
        env.sim.calls().get("GET /wiki/api/v2/pages"),
        Some(&1),
        "one content fetch, for the renamed page itself: {:?}",
        env.sim.calls()
    );
    let crumbs: Vec<_> = env
        .sink_docs()
        .into_iter()
        .filter(|d| d.title.starts_with("Section"))
        .collect();
    assert_eq!(crumbs.len(), 40);
    assert!(crumbs.iter().all(|d| d.breadcrumb[0] == "Product Documentation"));
    env.assert_sink_matches_source();
}

/// Links follow their targets: renaming the target rewrites the link title in
/// every linking document, deleting it marks the links broken, all without
/// fetching the linking documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_follow_renames_and_deletions() {
    let env = Env::start(Options {
        pages: 3,
        ..Options::default()
    })
    .await;
    let b = env.sim.create_page("Document B", None, "<p>b</p>");
    let a1 = env.sim.create_page("Document A1", None, &link(&b));
    let a2 = env
        .sim
        .create_page("Document A2", None, &format!("{} and {}", link(&b), link(&a1)));
    env.coordinator("c1");
    env.worker("w1");
    env.sync(SyncMode::Full).await;
    env.assert_sink_matches_source();

    env.sim.update_page(&b, Some("Document B v2"), None);
    env.sim.reset_calls();
    let renamed = env.sync(SyncMode::Incremental).await;
    assert_eq!(
        (renamed.docs_processed, renamed.dependents_updated),
        (1, 2),
        "{renamed:?}"
    );
    assert_eq!(env.sim.calls().get("GET /wiki/api/v2/pages"), Some(&1));
    env.assert_sink_matches_source();

    env.sim.delete_page(&b);
    let deleted = env.sync(SyncMode::Incremental).await;
    assert_eq!((deleted.deleted, deleted.dependents_updated), (1, 2), "{deleted:?}");
    let a2_doc = env.sink_docs().into_iter().find(|d| d.id.0 == a2).unwrap();
    assert!(
        a2_doc.links.iter().any(|l| l.target.0 == b && l.title.is_none()),
        "{a2_doc:?}"
    );
    env.assert_sink_matches_source();
}

/// Documents linking to each other in a cycle are each refreshed once when both
/// are renamed, and the run ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_cycles_terminate() {
    let env = Env::start(Options {
        pages: 2,
        ..Options::default()
    })
    .await;
    let x = env.sim.create_page("X", None, "<p>x</p>");
    let y = env.sim.create_page("Y", None, &link(&x));
    env.sim.update_page(&x, None, Some(&link(&y)));
    env.coordinator("c1");
    env.worker("w1");
    env.sync(SyncMode::Full).await;
    env.sync(SyncMode::Incremental).await;
    env.assert_sink_matches_source();
    env.sim.update_page(&x, Some("X renamed"), None);
    env.sim.update_page(&y, Some("Y renamed"), None);
    let run = env.sync(SyncMode::Incremental).await;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.docs_processed, 2);
    env.assert_sink_matches_source();
}

/// A full sync of a space whose pages link to one another (by URL, by
/// `ri:content-id` and by title only, as real spaces do), with hostile titles
/// and deep trees, writes each document exactly once: every link title is
/// resolved before the first write, whichever page of the run writes the
/// target. The links expected are the ones the simulator seeded, with the
/// targets' titles; title-only links name no id and are not links to resolve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_of_linked_pages_writes_each_document_once() {
    let env = Env::five_hundred_pages().await;
    let seeded = env.sim.seeded_links();
    let linking = seeded.values().filter(|l| !l.is_empty()).count();
    assert!(linking > 250, "most seeded pages link to others: {linking}");
    let pages = env.sim.pages();
    assert!(pages.iter().any(|p| p.title.contains('/')) && pages.iter().any(|p| p.title.len() >= 240));

    let full = env.sync(SyncMode::Full).await;
    assert_eq!(full.status, RunStatus::Completed, "{full:?}");
    assert_eq!(full.upserted, 500, "{full:?}");
    assert_eq!(
        (full.dependents, full.dependents_updated),
        (0, 0),
        "no document written twice: {full:?}"
    );
    let titles: std::collections::HashMap<&str, &str> =
        pages.iter().map(|p| (p.id.as_str(), p.title.as_str())).collect();
    for doc in env.sink_docs() {
        let got: Vec<(String, Option<String>)> = doc.links.into_iter().map(|l| (l.target.0, l.title)).collect();
        let want: Vec<(String, Option<String>)> = seeded[&doc.id.0]
            .iter()
            .map(|t| (t.clone(), titles.get(t.as_str()).map(|t| (*t).to_owned())))
            .collect();
        assert_eq!(got, want, "links of {}", doc.id.0);
    }
    env.assert_sink_matches_source();

    // Renaming a linked page rewrites exactly its linkers, again without fetching them.
    let (target, linkers) = seeded
        .keys()
        .map(|id| {
            let linkers: Vec<&String> = seeded.iter().filter(|(_, l)| l.contains(id)).map(|(k, _)| k).collect();
            (id.clone(), linkers)
        })
        .max_by_key(|(_, l)| l.len())
        .expect("a linked page");
    assert!(env.sim.update_page(&target, Some("Renamed target"), None));
    let run = env.sync(SyncMode::Incremental).await;
    assert_eq!(run.docs_processed, 1, "{run:?}");
    assert!(
        run.dependents_updated >= linkers.len() as u64,
        "{run:?} vs {}",
        linkers.len()
    );
    env.assert_sink_matches_source();
}
