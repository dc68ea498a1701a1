//! Confluence page attachments as documents of their own: found by the same
//! search as pages (their page is their `container`), downloaded through the
//! v1 download endpoint, read with the shared extractors, under their page in
//! the breadcrumb, updated by attachment version, deleted with their page at
//! once and, when removed on their own, by the next complete listing.

use tidemark::simulators::confluence::SimConfig;
use tidemark::simulators::files::{self, Stored};
use tidemark::state::RunStatus;
use tidemark::types::SyncMode;

use crate::harness::{Env, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_are_synced_updated_and_deleted() {
    let env = Env::fleet(Options {
        pages: 60,
        source_settings: "sweep_every = 3".into(),
        sim: SimConfig {
            attachments: true,
            ..SimConfig::default()
        },
        ..Options::default()
    })
    .await;
    let seeded = env.sim.attachments();
    let kinds: std::collections::BTreeSet<&str> = seeded.iter().map(|a| a.media_type.as_str()).collect();
    assert!(kinds.len() >= 6, "every stored kind is attached somewhere: {kinds:?}");

    let full = env.sync(SyncMode::Full).await;
    assert_eq!(full.status, RunStatus::Completed, "{full:?}");
    assert_eq!(full.upserted as usize, 60 + seeded.len(), "{full:?}");
    env.assert_sink_matches_source();
    let docs = env.sink_docs();
    for a in &seeded {
        let doc = docs
            .iter()
            .find(|d| d.id.0 == a.id)
            .expect("every attachment is a document");
        assert_eq!(doc.about.mime_type.as_deref(), Some(a.media_type.as_str()), "{}", a.id);
        assert_eq!(doc.about.source_sha256.as_deref(), Some(a.sha256.as_str()), "{}", a.id);
        assert_eq!(doc.about.size_bytes, Some(a.size), "{}", a.id);
        assert_eq!(doc.parent.as_ref().map(|p| p.0.as_str()), Some(a.page_id.as_str()));
        let url = doc.about.url.as_deref().unwrap_or_default();
        assert!(
            url.contains(&format!("/pages/{}/", a.page_id)) && url.contains("preview="),
            "{url}"
        );
        if a.text.is_empty() {
            assert!(
                doc.about.content_note.is_some(),
                "an image says why it has no text: {doc:?}"
            );
        }
    }

    // A new version of one file and a new file on another page: the search
    // finds both; one download each.
    let pdf = seeded
        .iter()
        .find(|a| a.media_type == "application/pdf")
        .expect("a PDF");
    assert!(
        env.sim
            .update_attachment(&pdf.id, files::stored(Stored::Pdf, 900, "Revised report"))
    );
    let page = env.sim.pages()[3].id.clone();
    let added = env
        .sim
        .attach(&page, files::stored(Stored::Docx, 901, "Meeting notes"))
        .expect("attached");
    env.sim.reset_calls();
    let run = env.sync(SyncMode::Incremental).await;
    assert_eq!(
        (run.status, run.docs_processed, run.upserted),
        (RunStatus::Completed, 2, 2),
        "{run:?}"
    );
    assert_eq!(
        run.api_calls,
        6,
        "search, trash, two downloads, the space's permissions and the restriction scan: {:?}",
        env.sim.calls()
    );
    env.assert_sink_matches_source();
    assert!(
        env.sink_docs()
            .iter()
            .any(|d| d.id.0 == added && d.content.contains("Meeting notes"))
    );

    // A page deleted to the trash takes its attachments with it, at once.
    let carrier = seeded
        .iter()
        .find(|a| a.id != pdf.id)
        .map(|a| a.page_id.clone())
        .expect("a page with attachments");
    let on_carrier = env.sim.attachments().iter().filter(|a| a.page_id == carrier).count() as u64;
    assert!(env.sim.delete_page(&carrier));
    let run = env.sync(SyncMode::Incremental).await;
    assert!(
        run.deleted > on_carrier,
        "the page and its {on_carrier} attachment(s): {run:?}"
    );
    env.assert_sink_matches_source();

    // An attachment removed on its own leaves no trace in any search or trash
    // listing of the space: the next complete listing (every 3rd run here) removes it.
    let gone = env.sim.attachments()[0].id.clone();
    assert!(env.sim.delete_attachment(&gone));
    let sweep = env.sync(SyncMode::Incremental).await;
    assert!(sweep.note.contains("complete listing"), "{sweep:?}");
    assert!(env.sink_docs().iter().all(|d| d.id.0 != gone));
    env.assert_sink_matches_source();
}
