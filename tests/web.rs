//! Web pages as a browser reads them, end to end through a coordinator and a
//! worker: compressed bodies (gzip from a real nginx with `gzip_static always`,
//! brotli), charsets (declared in `Content-Type`, or only in `<meta>`), text
//! instead of markup, links resolved against the URL a redirect ended at, a PDF
//! behind a URL read as text, a size cap, and one URL that times out failing
//! alone while the rest of the source syncs.

use std::io::Write;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use tidemark::simulators::files;
use tidemark::sinks::SinkDocument;
use tidemark::state::RunStatus;
use tidemark::types::SyncMode;

use crate::harness::nginx::Nginx;
use crate::harness::{Env, Options};

fn html(body: &str) -> String {
    format!(
        "<!doctype html><html><head><title>T</title><script>var hidden = 1;</script><style>p {{}}</style></head><body>{body}</body></html>"
    )
}

async fn env_for(urls: &[String], extra: &str) -> Env {
    let quoted: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    let env = Env::start(Options {
        source_toml: Some(format!(
            "[[sources]]\nid = \"eng\"\nkind = \"http\"\n[sources.settings]\nurls = [{}]\n{extra}\n",
            quoted.join(", ")
        )),
        ..Options::default()
    })
    .await;
    env.coordinator("c1");
    env.worker("w1");
    env
}

fn doc<'a>(docs: &'a [SinkDocument], url: &str) -> &'a SinkDocument {
    docs.iter()
        .find(|d| d.id.0 == url)
        .unwrap_or_else(|| panic!("{url} not in the sink: {docs:?}"))
}

/// A gzip-compressed page served by nginx whatever the client asks
/// (`gzip_static always`, only the `.gz` file on disk) is stored as its text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_pages_from_nginx_are_text() {
    let nginx = Nginx::start_with("location /gz/ { gzip_static always; }");
    let dir = nginx.root().join("gz");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(html("<h1>Compressed</h1><p>Served as gzip.</p>").as_bytes())
        .expect("gzip");
    std::fs::write(dir.join("page.html.gz"), gz.finish().expect("gzip")).expect("write");
    let url = nginx.url("/gz/page.html");
    let env = env_for(std::slice::from_ref(&url), "").await;
    let run = env.sync(SyncMode::Full).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    let docs = env.sink_docs();
    assert_eq!(doc(&docs, &url).content, "# Compressed\n\nServed as gzip.");
    assert_eq!(
        doc(&docs, &url).about.raw_html,
        None,
        "raw HTML is kept only if configured"
    );
}

/// Brotli, Latin-1 (declared, or only in `<meta>`), a redirect, a PDF, a page
/// over the size cap, and a URL that times out, in one source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_read_as_a_browser_reads_them() {
    let brotli_body = {
        let mut out = Vec::new();
        let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
        w.write_all(html("<p>Brotli body.</p>").as_bytes()).expect("br");
        drop(w);
        out
    };
    let latin1 = |body: &str| -> Vec<u8> { body.chars().map(|c| c as u8).collect() };
    let declared = latin1(&html("<p>Caf\u{e9} cr\u{e8}me br\u{fb}l\u{e9}e</p>"));
    let meta_only = latin1(
        "<html><head><meta charset=\"iso-8859-1\"><title>M</title></head><body><p>Na\u{ef}ve r\u{e9}sum\u{e9}</p></body></html>",
    );
    let pdf = files::pdf(&["Quarterly numbers", "Page two"]);
    let app = Router::new()
        .route(
            "/br",
            get(move || {
                let b = brotli_body.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/html"), (header::CONTENT_ENCODING, "br")],
                        b,
                    )
                }
            }),
        )
        .route(
            "/latin1",
            get(move || {
                let b = declared.clone();
                async move { ([(header::CONTENT_TYPE, "text/html; charset=ISO-8859-1")], b) }
            }),
        )
        .route(
            "/meta",
            get(move || {
                let b = meta_only.clone();
                async move { ([(header::CONTENT_TYPE, "text/html")], b) }
            }),
        )
        .route("/old", get(|| async { Redirect::permanent("/docs/guide/page.html") }))
        .route(
            "/docs/guide/page.html",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/html")],
                    html("<p>Moved here. See <a href=\"../other.html\">the other page</a>.</p>"),
                )
            }),
        )
        .route(
            "/docs/other.html",
            get(|| async { ([(header::CONTENT_TYPE, "text/html")], html("<h2>Other</h2>")) }),
        )
        .route(
            "/report.pdf",
            get(move || {
                let b = pdf.clone();
                async move { ([(header::CONTENT_TYPE, "application/pdf")], b) }
            }),
        )
        .route(
            "/huge",
            get(|| async { ([(header::CONTENT_TYPE, "text/html")], html(&"x".repeat(50_000))) }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "too late".into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let u = |p: &str| format!("http://{addr}{p}");
    let urls: Vec<String> = [
        "/br",
        "/latin1",
        "/meta",
        "/old",
        "/docs/other.html",
        "/report.pdf",
        "/huge",
        "/slow",
    ]
    .iter()
    .map(|p| u(p))
    .collect();
    let env = env_for(
        &urls,
        "request_timeout_secs = 1\nmax_retries = 0\nmax_page_bytes = 20000\nkeep_raw_html = true",
    )
    .await;

    let run = env.sync(SyncMode::Full).await;
    assert_eq!(run.status, RunStatus::CompletedWithErrors, "{run:?}");
    assert_eq!((run.upserted, run.docs_failed), (7, 1), "{run:?}");
    assert!(run.last_error.contains("/slow"), "{run:?}");
    let docs = env.sink_docs();
    assert_eq!(doc(&docs, &u("/br")).content, "Brotli body.");
    assert_eq!(doc(&docs, &u("/latin1")).content, "Café crème brûlée");
    assert_eq!(doc(&docs, &u("/meta")).content, "Naïve résumé");
    let moved = doc(&docs, &u("/old"));
    assert_eq!(moved.content, "Moved here. See the other page.");
    assert_eq!(
        moved
            .links
            .iter()
            .map(|l| (l.target.0.clone(), l.title.clone()))
            .collect::<Vec<_>>(),
        vec![(u("/docs/other.html"), Some("T".to_owned()))],
        "the link resolves against the URL the redirect ended at"
    );
    let report = doc(&docs, &u("/report.pdf"));
    assert_eq!(
        report.content.split_whitespace().collect::<Vec<_>>(),
        ["Quarterly", "numbers", "Page", "two"]
    );
    assert_eq!(report.about.mime_type.as_deref(), Some("application/pdf"));
    // Kept as configured: the HTML as served, decoded from its charset; nothing for a PDF.
    let latin1 = doc(&docs, &u("/latin1"));
    let raw = latin1.about.raw_html.as_deref().unwrap_or_default();
    assert!(raw.contains("Café crème brûlée") && raw.contains('<'), "{raw:?}");
    assert_eq!(report.about.raw_html, None);
    let huge = doc(&docs, &u("/huge"));
    assert_eq!(huge.content, "");
    assert!(
        huge.about
            .content_note
            .as_deref()
            .is_some_and(|n| n.contains("max_page_bytes")),
        "{huge:?}"
    );
    assert!(
        docs.iter()
            .all(|d| !d.content.contains("hidden") && !d.content.contains('<'))
    );
    assert!(!docs.iter().any(|d| d.id.0 == u("/slow")));
    let failures = env.app.state().failures(&env.source).await.expect("state");
    assert_eq!(failures.len(), 1, "{failures:?}");
}
