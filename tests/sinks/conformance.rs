//! What every sink must do, as one suite (`check`), so a new sink is held to
//! exactly the contract the directory sink keeps (`src/sinks/mod.rs`, README
//! "The document contract"):
//!
//! - an upsert of the same version and content hash is a no-op (`Unchanged`),
//!   a new version replaces the document, `get` reads back what was written;
//! - a delete removes the document; deleting it again, or deleting what was
//!   never there, is `Unchanged`;
//! - a registered token refuses every older write and delete, even when the run
//!   that registered it never wrote, and a token is never registered backwards;
//! - fences and documents are per source;
//! - hostile ids and titles (slashes, `..`, 300 characters, emoji, control
//!   characters short of NUL) are stored and read back as themselves, none
//!   colliding with another;
//! - a 10 MB document round-trips;
//! - two writers adding different documents of one source at once lose nothing;
//! - `versions` lists exactly what is held;
//! - a page applied at once (`Sink::apply`) answers each change in order as
//!   the single calls would, and a stale token refuses the whole page, leaving
//!   nothing of it written.

use std::sync::Arc;

use tidemark::permissions::Permissions;
use tidemark::sinks::{About, Change, Error, Link, SCHEMA_VERSION, Sink, SinkDocument, Written};
use tidemark::types::{DocumentId, FencingToken, SourceId};

fn source(name: &str) -> SourceId {
    SourceId::new(name).expect("a valid source id")
}

/// A document of `source` with `id`, written under `token`.
pub fn doc(source: &SourceId, id: &str, version: &str, content: &str, token: u64) -> SinkDocument {
    SinkDocument {
        schema_version: SCHEMA_VERSION,
        source: source.clone(),
        id: DocumentId(id.to_owned()),
        title: format!("Title of {id}"),
        breadcrumb: vec!["Root".into(), "Guide / part 2".into()],
        parent: Some(DocumentId("parent".into())),
        version: version.to_owned(),
        content: content.to_owned(),
        about: About {
            url: Some(format!("https://example.net/{id}")),
            mime_type: Some("text/html".into()),
            size_bytes: Some(content.len() as u64),
            ..About::default()
        },
        // Who may read, with a nested list and the source's form: stored and read back whole.
        permissions: Permissions::new(
            ["group:eng", "user:alice@example.com"],
            serde_json::json!({"mode": "0640"}),
        )
        .also_require(["group:eng", "group:staff", "user:alice@example.com"])
        .also_require(["group:staff", "group:contractors"]),
        content_hash: format!("hash-{version}-{}", content.len()),
        fencing_token: FencingToken(token),
        links: vec![Link {
            target: DocumentId("other".into()),
            title: Some("Other".into()),
        }],
    }
}

fn is_stale(r: &Result<Written, Error>) -> bool {
    matches!(r, Err(Error::StaleFence(_)))
}

/// Runs every check against `sink`, each on sources of its own; panics naming
/// the sink (`label`) and the broken rule.
pub async fn check(label: &str, sink: Arc<dyn Sink>) {
    idempotent_upserts(label, sink.as_ref()).await;
    deletions(label, sink.as_ref()).await;
    fencing(label, sink.as_ref()).await;
    per_source(label, sink.as_ref()).await;
    hostile_ids(label, sink.as_ref()).await;
    large_document(label, sink.as_ref()).await;
    concurrent_writers(label, Arc::clone(&sink)).await;
    pages(label, sink.as_ref()).await;
}

async fn idempotent_upserts(label: &str, sink: &dyn Sink) {
    let s = source("conf-upsert");
    sink.register_token(&s, FencingToken(1)).await.expect("register");
    let v1 = doc(&s, "page-1", "1", "first text", 1);
    assert_eq!(
        sink.upsert(&v1).await.expect("upsert"),
        Written::Changed,
        "{label}: a new document"
    );
    assert_eq!(
        sink.upsert(&v1).await.expect("upsert"),
        Written::Unchanged,
        "{label}: the same version and hash again is a no-op"
    );
    assert_eq!(
        sink.get(&s, &v1.id).await.expect("get"),
        Some(v1.clone()),
        "{label}: read back"
    );
    let v2 = doc(&s, "page-1", "2", "second, longer text", 1);
    assert_eq!(
        sink.upsert(&v2).await.expect("upsert"),
        Written::Changed,
        "{label}: a new version"
    );
    assert_eq!(
        sink.get(&s, &v1.id).await.expect("get"),
        Some(v2),
        "{label}: the new version replaced the old"
    );
    let held = sink.versions(&s).await.expect("versions");
    assert_eq!(held.len(), 1, "{label}: {held:?}");
    assert_eq!(held.get(&v1.id).map(String::as_str), Some("2"), "{label}");
}

async fn deletions(label: &str, sink: &dyn Sink) {
    let s = source("conf-delete");
    sink.register_token(&s, FencingToken(1)).await.expect("register");
    let d = doc(&s, "gone", "1", "soon gone", 1);
    sink.upsert(&d).await.expect("upsert");
    assert_eq!(
        sink.delete(&s, &d.id, FencingToken(1)).await.expect("delete"),
        Written::Changed,
        "{label}"
    );
    assert_eq!(sink.get(&s, &d.id).await.expect("get"), None, "{label}: deleted");
    assert_eq!(
        sink.delete(&s, &d.id, FencingToken(1)).await.expect("delete"),
        Written::Unchanged,
        "{label}: deleting again changes nothing"
    );
    assert_eq!(
        sink.delete(&s, &DocumentId("never-there".into()), FencingToken(1))
            .await
            .expect("delete"),
        Written::Unchanged,
        "{label}: deleting what was never there changes nothing"
    );
    assert!(sink.versions(&s).await.expect("versions").is_empty(), "{label}");
}

async fn fencing(label: &str, sink: &dyn Sink) {
    let s = source("conf-fence");
    sink.register_token(&s, FencingToken(10)).await.expect("register");
    sink.upsert(&doc(&s, "kept", "1", "by run 10", 10))
        .await
        .expect("upsert");
    // Run 11 registers and never writes: run 10's queued jobs must still be refused.
    sink.register_token(&s, FencingToken(11)).await.expect("register");
    assert!(
        is_stale(&sink.upsert(&doc(&s, "late", "1", "stale write", 10)).await),
        "{label}: a write under an older token than the registered one is refused"
    );
    assert!(
        is_stale(&sink.delete(&s, &DocumentId("kept".into()), FencingToken(10)).await),
        "{label}: a delete under an older token is refused"
    );
    assert!(
        sink.register_token(&s, FencingToken(9)).await.is_err(),
        "{label}: a token is never registered backwards"
    );
    assert_eq!(
        sink.get(&s, &DocumentId("late".into())).await.expect("get"),
        None,
        "{label}"
    );
    assert!(
        sink.get(&s, &DocumentId("kept".into())).await.expect("get").is_some(),
        "{label}"
    );
    // The newer run writes; the older one still cannot.
    sink.upsert(&doc(&s, "kept", "2", "by run 11", 11))
        .await
        .expect("upsert");
    assert!(
        is_stale(&sink.upsert(&doc(&s, "kept", "3", "run 10 again", 10)).await),
        "{label}"
    );
    assert_eq!(
        sink.get(&s, &DocumentId("kept".into()))
            .await
            .expect("get")
            .map(|d| d.version),
        Some("2".into()),
        "{label}"
    );
}

async fn per_source(label: &str, sink: &dyn Sink) {
    let (a, b) = (source("conf-src-a"), source("conf-src-b"));
    sink.register_token(&a, FencingToken(50)).await.expect("register");
    sink.register_token(&b, FencingToken(2)).await.expect("register");
    sink.upsert(&doc(&a, "same-id", "1", "from a", 50))
        .await
        .expect("upsert a");
    // Another source's high fence does not refuse this one's writes.
    sink.upsert(&doc(&b, "same-id", "7", "from b", 2))
        .await
        .expect("upsert b");
    let got_a = sink
        .get(&a, &DocumentId("same-id".into()))
        .await
        .expect("get")
        .expect("a");
    let got_b = sink
        .get(&b, &DocumentId("same-id".into()))
        .await
        .expect("get")
        .expect("b");
    assert_eq!(
        (got_a.content.as_str(), got_b.content.as_str()),
        ("from a", "from b"),
        "{label}"
    );
    sink.delete(&b, &DocumentId("same-id".into()), FencingToken(2))
        .await
        .expect("delete b");
    assert!(
        sink.get(&a, &DocumentId("same-id".into()))
            .await
            .expect("get")
            .is_some(),
        "{label}: deleting in one source leaves the other's document"
    );
}

async fn hostile_ids(label: &str, sink: &dyn Sink) {
    let s = source("conf-hostile");
    sink.register_token(&s, FencingToken(1)).await.expect("register");
    let long = "x".repeat(300);
    let ids = [
        "a/b",
        "a%2Fb",
        "a_b",
        "..",
        ".",
        "../../etc/passwd",
        "https://example.net/docs/page.html?x=1&y=2#top",
        long.as_str(),
        "Déploiement 🚀 設計",
        "CON",
        "trailing.",
        " spaced ",
        "tab\tand\nnewline",
    ];
    for (i, id) in ids.iter().enumerate() {
        let mut d = doc(
            &s,
            id,
            "1",
            &format!("document {i}: bytes \u{1}\u{7f}\u{fffd} and quotes \"'<>&"),
            1,
        );
        d.title = format!("{id} / \"quoted\" .. {i}");
        assert_eq!(
            sink.upsert(&d).await.expect("upsert"),
            Written::Changed,
            "{label}: {id:?}"
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let got = sink
            .get(&s, &DocumentId((*id).to_owned()))
            .await
            .expect("get")
            .unwrap_or_else(|| panic!("{label}: {id:?} not read back"));
        assert_eq!(got.id.0, *id, "{label}");
        assert!(
            got.content.starts_with(&format!("document {i}:")),
            "{label}: {id:?} collided: {got:?}"
        );
    }
    let held = sink.versions(&s).await.expect("versions");
    assert_eq!(
        held.len(),
        ids.len(),
        "{label}: every hostile id is its own document: {held:?}"
    );
    for id in ids {
        sink.delete(&s, &DocumentId(id.to_owned()), FencingToken(1))
            .await
            .expect("delete");
    }
    assert!(sink.versions(&s).await.expect("versions").is_empty(), "{label}");
}

async fn large_document(label: &str, sink: &dyn Sink) {
    let s = source("conf-large");
    sink.register_token(&s, FencingToken(1)).await.expect("register");
    let paragraph = "A paragraph of a very long report, repeated. ".repeat(20) + "\n\n";
    let content = paragraph.repeat(10 * 1024 * 1024 / paragraph.len() + 1);
    assert!(content.len() >= 10 * 1024 * 1024);
    let d = doc(&s, "big", "1", &content, 1);
    assert_eq!(sink.upsert(&d).await.expect("upsert"), Written::Changed, "{label}");
    let got = sink.get(&s, &d.id).await.expect("get").expect("held");
    assert_eq!(
        got.content.len(),
        content.len(),
        "{label}: a 10 MB document round-trips"
    );
    assert!(got == d, "{label}: the 10 MB document reads back unchanged");
}

async fn concurrent_writers(label: &str, sink: Arc<dyn Sink>) {
    let s = source("conf-concurrent");
    sink.register_token(&s, FencingToken(3)).await.expect("register");
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (sink, s) = (Arc::clone(&sink), s.clone());
            tokio::spawn(async move {
                for i in 0..40 {
                    let d = doc(&s, &format!("w{w}-doc{i}"), "1", &format!("writer {w} doc {i}"), 3);
                    sink.upsert(&d).await.expect("upsert");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    assert_eq!(
        sink.versions(&s).await.expect("versions").len(),
        80,
        "{label}: two writers at once lose nothing"
    );
}

async fn pages(label: &str, sink: &dyn Sink) {
    let s = source("conf-page");
    sink.register_token(&s, FencingToken(3)).await.expect("register");
    let kept = doc(&s, "kept", "1", "unchanged", 3);
    let edited = doc(&s, "edited", "1", "before", 3);
    let doomed = doc(&s, "doomed", "1", "to delete", 3);
    for d in [&kept, &edited, &doomed] {
        sink.upsert(d).await.expect("upsert");
    }
    let edited_v2 = doc(&s, "edited", "2", "after the edit", 3);
    let created = doc(&s, "created", "1", "new", 3);
    let absent = DocumentId("never-there".into());
    let page = [
        Change::Put(&kept),
        Change::Put(&edited_v2),
        Change::Put(&created),
        Change::Delete(&doomed.id),
        Change::Delete(&absent),
    ];
    let applied = sink.apply(&s, FencingToken(3), &page).await.expect("apply");
    let applied: Vec<Written> = applied.into_iter().map(|r| r.expect("each change")).collect();
    assert_eq!(
        applied,
        [
            Written::Unchanged,
            Written::Changed,
            Written::Changed,
            Written::Changed,
            Written::Unchanged
        ],
        "{label}: each change of a page answered in order"
    );
    assert_eq!(sink.get(&s, &edited.id).await.expect("get"), Some(edited_v2), "{label}");
    assert_eq!(sink.get(&s, &created.id).await.expect("get"), Some(created), "{label}");
    assert_eq!(sink.get(&s, &doomed.id).await.expect("get"), None, "{label}");
    assert!(
        sink.apply(&s, FencingToken(3), &[])
            .await
            .expect("empty page")
            .is_empty(),
        "{label}: an empty page"
    );

    // Run 4 takes over; a page of run 3 still in flight writes nothing at all.
    sink.register_token(&s, FencingToken(4)).await.expect("register");
    let late = doc(&s, "late", "1", "stale", 3);
    let late_edit = doc(&s, "kept", "9", "stale edit", 3);
    let stale_page = [Change::Put(&late), Change::Put(&late_edit), Change::Delete(&edited.id)];
    assert!(
        matches!(
            sink.apply(&s, FencingToken(3), &stale_page).await,
            Err(Error::StaleFence(_))
        ),
        "{label}: a page under an older token is refused"
    );
    let held = sink.versions(&s).await.expect("versions");
    let mut ids: Vec<&str> = held.keys().map(|id| id.0.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["created", "edited", "kept"],
        "{label}: nothing of the stale page landed"
    );
    assert_eq!(held.get(&kept.id).map(String::as_str), Some("1"), "{label}");
}
