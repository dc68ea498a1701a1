//! The HTTP connector end to end: a coordinator and a worker against a real
//! Redis and a real nginx serving a temp directory the tests edit.
//!
//! nginx's ETag is built from mtime and size, so every rewrite sets a distinct
//! mtime (std's `File::set_modified`) to make sure the ETag moves.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use tidemark::sources::http::{HttpSettings, HttpSource};
use tidemark::sources::{ApiCalls, Checkpoint, DocMeta, Source};
use tidemark::state::RunStatus;
use tidemark::types::{DocumentId, SourceId, SyncMode};

use crate::harness::nginx::Nginx;
use crate::harness::{Env, Options};

/// A fixed, old modification time; edits add to it so ETags always change.
fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn page(title: &str, links: &[&str]) -> String {
    let anchors: String = links.iter().map(|l| format!("<a href=\"{l}\">{l}</a> ")).collect();
    format!("<html><head><title>{title}</title></head><body><p>{title}</p>{anchors}</body></html>")
}

/// Serves `n` pages `p0.html`..: each links to the next one.
fn serve_pages(nginx: &Nginx, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let name = format!("p{i}.html");
            let next = format!("p{}.html", (i + 1) % n);
            nginx.write(&name, &page(&format!("Page {i}"), &[&next]), t0());
            nginx.url(&name)
        })
        .collect()
}

fn source_toml(settings: &str) -> String {
    format!("[[sources]]\nid = \"eng\"\nkind = \"http\"\n[sources.settings]\n{settings}\n")
}

fn url_list(urls: &[String]) -> String {
    let quoted: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!("urls = [{}]", quoted.join(", "))
}

/// The sink as id -> (title, content).
fn sink(env: &Env) -> BTreeMap<String, (String, String)> {
    env.sink_docs()
        .into_iter()
        .map(|d| (d.id.0, (d.title, d.content)))
        .collect()
}

/// Full sync of 6 pages; an incremental run with nothing changed is all 304s
/// (6 HEADs, 0 processed); rewriting one page processes exactly that page
/// (6 HEADs + 1 GET); deleting a page deletes it from the sink through its 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_probes_edits_and_deletions() {
    let nginx = Nginx::start();
    let urls = serve_pages(&nginx, 6);
    let env = Env::start(Options {
        source_toml: Some(source_toml(&url_list(&urls))),
        ..Options::default()
    })
    .await;
    env.coordinator("c1");
    env.worker("w1");

    let full = env.sync(SyncMode::Full).await;
    assert_eq!(full.status, RunStatus::Completed, "{full:?}");
    assert_eq!((full.docs_processed, full.upserted), (6, 6), "{full:?}");
    assert_eq!(full.api_calls, 12, "6 HEADs + 6 GETs: {full:?}");
    let docs = sink(&env);
    assert_eq!(docs.len(), 6);
    assert_eq!(docs[&urls[2]].0, "Page 2");
    // Readable text, not markup: the title and the body's words.
    assert!(
        docs[&urls[2]].1.contains("Page 2") && !docs[&urls[2]].1.contains('<'),
        "{:?}",
        docs[&urls[2]]
    );

    let noop = env.sync(SyncMode::Incremental).await;
    assert_eq!(noop.status, RunStatus::Completed, "{noop:?}");
    assert_eq!(
        (noop.docs_processed, noop.upserted, noop.unchanged),
        (0, 0, 6),
        "every probe should be a 304: {noop:?}"
    );
    assert_eq!(noop.api_calls, 6, "one conditional HEAD per page: {noop:?}");
    assert!(noop.note.contains("6 not modified"), "{}", noop.note);

    nginx.write("p3.html", &page("Page 3 edited", &[]), t0() + Duration::from_secs(100));
    let edit = env.sync(SyncMode::Incremental).await;
    assert_eq!(edit.status, RunStatus::Completed, "{edit:?}");
    assert_eq!(
        (edit.docs_processed, edit.upserted, edit.unchanged),
        (1, 1, 5),
        "{edit:?}"
    );
    assert_eq!(edit.api_calls, 7, "6 HEADs + 1 GET: {edit:?}");
    assert_eq!(sink(&env)[&urls[3]].0, "Page 3 edited");

    let again = env.sync(SyncMode::Incremental).await;
    assert_eq!(again.docs_processed, 0, "the edited page is a 304 again: {again:?}");

    nginx.remove("p4.html");
    let del = env.sync(SyncMode::Incremental).await;
    assert_eq!(del.status, RunStatus::Completed, "{del:?}");
    assert_eq!((del.docs_processed, del.deleted), (1, 1), "{del:?}");
    assert!(del.note.contains("1 gone (404/410)"), "{}", del.note);
    let docs = sink(&env);
    assert_eq!(docs.len(), 5);
    assert!(!docs.contains_key(&urls[4]), "deleted page still in the sink");
}

/// A sitemap index is followed one level; a URL added to a child sitemap is
/// created on the next incremental run and nothing else is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sitemap_addition_is_created() {
    let nginx = Nginx::start();
    let urls = serve_pages(&nginx, 4);
    let sitemap = |urls: &[String]| {
        let entries: String = urls.iter().map(|u| format!("<url><loc>{u}</loc></url>")).collect();
        format!(
            "<?xml version=\"1.0\"?><urlset xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">{entries}</urlset>"
        )
    };
    nginx.write(
        "index.xml",
        &format!(
            "<sitemapindex><sitemap><loc>{}</loc></sitemap><sitemap><loc>{}</loc></sitemap></sitemapindex>",
            nginx.url("a.xml"),
            nginx.url("b.xml")
        ),
        t0(),
    );
    nginx.write("a.xml", &sitemap(&urls[..2]), t0());
    nginx.write("b.xml", &sitemap(&urls[2..3]), t0());
    let env = Env::start(Options {
        source_toml: Some(source_toml(&format!("sitemap = {:?}", nginx.url("index.xml")))),
        ..Options::default()
    })
    .await;
    env.coordinator("c1");
    env.worker("w1");

    let full = env.sync(SyncMode::Full).await;
    assert_eq!(full.status, RunStatus::Completed, "{full:?}");
    assert_eq!((full.docs_processed, full.upserted), (3, 3), "{full:?}");
    assert!(full.note.contains("3 URL(s) from 2 child sitemap(s)"), "{}", full.note);

    nginx.write("b.xml", &sitemap(&urls[2..4]), t0() + Duration::from_secs(10));
    let inc = env.sync(SyncMode::Incremental).await;
    assert_eq!(inc.status, RunStatus::Completed, "{inc:?}");
    assert_eq!((inc.docs_processed, inc.upserted, inc.unchanged), (1, 1, 3), "{inc:?}");
    let docs = sink(&env);
    assert_eq!(docs.len(), 4);
    assert_eq!(docs[&urls[3]].0, "Page 3");

    // Dropped from the sitemap (the page itself still served): deleted by the complete listing.
    nginx.write("a.xml", &sitemap(&urls[..1]), t0() + Duration::from_secs(20));
    let dropped = env.sync(SyncMode::Incremental).await;
    assert_eq!((dropped.docs_processed, dropped.deleted), (1, 1), "{dropped:?}");
    assert!(!sink(&env).contains_key(&urls[1]));
}

/// With nginx killed, the run fails with an error naming the request and nothing
/// is deleted: the sink still holds every page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_fails_the_run_and_deletes_nothing() {
    let mut nginx = Nginx::start();
    let urls = serve_pages(&nginx, 3);
    let env = Env::start(Options {
        source_toml: Some(source_toml(&format!("{}\nmax_retries = 1", url_list(&urls)))),
        ..Options::default()
    })
    .await;
    env.coordinator("c1");
    env.worker("w1");
    let full = env.sync(SyncMode::Full).await;
    assert_eq!(full.upserted, 3, "{full:?}");

    nginx.kill();
    let down = env.sync(SyncMode::Incremental).await;
    assert_eq!(down.status, RunStatus::Failed, "{down:?}");
    assert!(
        down.last_error.contains("source eng: HEAD http://127.0.0.1:")
            && down.last_error.contains("Connection refused")
            && down.last_error.contains("temporarily unavailable"),
        "{}",
        down.last_error
    );
    assert_eq!((down.docs_processed, down.deleted), (0, 0), "{down:?}");
    assert_eq!(
        down.api_calls,
        2 * 3,
        "each of the 3 probes in flight: a try and a retry: {down:?}"
    );
    let docs = sink(&env);
    assert_eq!(docs.len(), 3, "an outage must not delete: {:?}", docs.keys());
}

/// Fetching through the connector against nginx: content, `<title>`, the ETag
/// version, and `<a href>` links to every page of the same site (itself
/// excluded), whether or not it is in the synced set: the set can change without
/// the linking page changing, so membership is decided when links are resolved.
#[tokio::test]
async fn fetch_reports_same_site_links() {
    let nginx = Nginx::start();
    nginx.write(
        "docs/a.html",
        &page("A", &["b.html#top", "../c.html", "/elsewhere.html", "a.html"]),
        t0(),
    );
    nginx.write("docs/b.html", &page("B", &[]), t0());
    nginx.write("c.html", "<p>no title</p>", t0());
    let urls: Vec<url::Url> = ["docs/a.html", "docs/b.html", "c.html", "gone.html"]
        .iter()
        .map(|p| url::Url::parse(&nginx.url(p)).expect("url"))
        .collect();
    let src = HttpSource::new(
        SourceId::new("web").expect("id"),
        HttpSettings::new(urls.clone()),
        reqwest::Client::new(),
        &tidemark::gate::Gates::local(),
    )
    .expect("source");
    let want: Vec<DocMeta> = urls
        .iter()
        .map(|u| DocMeta {
            id: DocumentId(u.as_str().to_owned()),
            version: String::new(),
            title: String::new(),
            parent: None,
            modified_at: None,
            ..DocMeta::default()
        })
        .collect();
    let calls = ApiCalls::default();
    let got = src.fetch(&want, &calls).await.expect("fetch");
    assert_eq!(calls.get(), 4);
    assert_eq!(got.missing, vec![DocumentId(urls[3].as_str().to_owned())]);
    let a = &got.docs[0];
    assert_eq!(a.meta.title, "A");
    assert!(a.meta.version.starts_with("etag:\""), "{:?}", a.meta.version);
    assert!(a.meta.modified_at.is_some());
    let links: HashSet<&str> = a.links.iter().map(|d| d.0.as_str()).collect();
    let elsewhere = nginx.url("elsewhere.html");
    assert_eq!(
        links,
        HashSet::from([urls[1].as_str(), urls[2].as_str(), elsewhere.as_str()])
    );
    assert_eq!(got.docs[2].meta.title, "/c.html", "no <title>: the URL path");

    // The feed's conditional HEAD with the fetched version is a 304: the held version comes back.
    let held: std::collections::HashMap<_, _> = got
        .docs
        .iter()
        .map(|d| (d.meta.id.clone(), d.meta.version.clone()))
        .collect();
    let mut feed = src
        .open_feed(
            &Checkpoint::default(),
            SyncMode::Incremental,
            std::sync::Arc::new(tidemark::sources::HeldMap::from(held.clone())),
            calls.clone(),
        )
        .await
        .expect("open");
    let page = feed.next_page().await.expect("probe").expect("page");
    assert!(feed.next_page().await.expect("end").is_none());
    assert_eq!(page.observations.len(), 3, "gone.html is left out");
    for obs in &page.observations {
        match obs {
            tidemark::sources::Observation::Present(m) => assert_eq!(Some(&m.version), held.get(&m.id)),
            other => panic!("unexpected {other:?}"),
        }
    }
    let end = feed.end();
    assert!(end.complete_listing);
    assert!(
        end.note
            .as_deref()
            .is_some_and(|n| n.contains("3 not modified, 0 changed or new, 1 gone"))
    );
}

/// Regression (found by the convergence test, seed 2): a page linking to a URL
/// that enters the sitemap later shows the link's title once the target is
/// synced, and loses it again when the target leaves, without the linking page
/// changing or being fetched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_follow_their_target_in_and_out_of_the_sitemap() {
    let nginx = Nginx::start();
    nginx.write("a.html", &page("A", &["b.html"]), t0());
    nginx.write("b.html", &page("B", &[]), t0());
    let (a, b) = (nginx.url("a.html"), nginx.url("b.html"));
    let sitemap = |urls: &[&String]| {
        let entries: String = urls.iter().map(|u| format!("<url><loc>{u}</loc></url>")).collect();
        format!("<urlset xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">{entries}</urlset>")
    };
    nginx.write("sitemap.xml", &sitemap(&[&a]), t0());
    let env = Env::start(Options {
        source_toml: Some(source_toml(&format!("sitemap = {:?}", nginx.url("sitemap.xml")))),
        ..Options::default()
    })
    .await;
    env.coordinator("c1");
    env.worker("w1");
    let link_of_a = |env: &Env| {
        let doc = env.sink_docs().into_iter().find(|d| d.id.0 == a).expect("a synced");
        doc.links.into_iter().map(|l| (l.target.0, l.title)).collect::<Vec<_>>()
    };

    env.sync(SyncMode::Full).await;
    assert_eq!(link_of_a(&env), vec![(b.clone(), None)], "b is not synced yet");

    nginx.write("sitemap.xml", &sitemap(&[&a, &b]), t0() + Duration::from_secs(10));
    let entered = env.sync(SyncMode::Incremental).await;
    assert_eq!(
        (entered.docs_processed, entered.dependents_updated),
        (1, 1),
        "{entered:?}"
    );
    assert_eq!(link_of_a(&env), vec![(b.clone(), Some("B".to_owned()))]);

    nginx.write("sitemap.xml", &sitemap(&[&a]), t0() + Duration::from_secs(20));
    let left = env.sync(SyncMode::Incremental).await;
    assert_eq!((left.deleted, left.dependents_updated), (1, 1), "{left:?}");
    assert_eq!(link_of_a(&env), vec![(b, None)]);
}
