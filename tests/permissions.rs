//! Permission-aware documents (issue 13): every document carries who may read
//! it, a change of permissions alone is synced without fetching content, and
//! the retrieval side returns a reader only what that reader may read.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use tidemark::sinks::SinkDocument;
use tidemark::state::RunStatus;
use tidemark::types::SyncMode;

use crate::harness::postgres::PgServer;
use crate::harness::{Env, Options};

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A share with an open handbook and a payroll file in a directory only its
/// owner may enter; the owner is Alice, the group `staff`.
fn seed(root: &Path) {
    std::fs::create_dir_all(root.join("hr")).expect("mkdir");
    std::fs::write(root.join("handbook.md"), "The handbook: holidays and expenses.").expect("write");
    std::fs::write(root.join("hr/payroll.md"), "Payroll handbook: every salary.").expect("write");
    chmod(&root.join("handbook.md"), 0o644);
    chmod(&root.join("hr/payroll.md"), 0o644);
    chmod(&root.join("hr"), 0o700);
}

fn source_toml(root: &Path) -> String {
    let meta = std::fs::metadata(root).expect("stat root");
    format!(
        "[[sources]]\nid = \"eng\"\nkind = \"filesystem\"\n[sources.settings]\nroot = {:?}\n\
         [sources.settings.permissions]\nusers = {{ \"{}\" = \"user:Alice@Example.com\" }}\n\
         groups = {{ \"{}\" = \"group:staff\" }}\n",
        root.display().to_string(),
        meta.uid(),
        meta.gid()
    )
}

/// `tidemark query eng WORDS --as ...`: the titles it prints, sorted.
fn query(env: &Env, words: &str, principals: &[&str]) -> Vec<String> {
    query_in(env, "eng", words, principals)
}

/// The titles `tidemark query SOURCE WORDS --as ...` returns, sorted.
fn query_in(env: &Env, source: &str, words: &str, principals: &[&str]) -> Vec<String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidemark"));
    cmd.args(["query", source, words, "--json", "--limit", "1000"]);
    for p in principals {
        cmd.args(["--as", p]);
    }
    let out = cmd
        .arg("--config")
        .arg(&env.config_path)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run tidemark query");
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(6),
        "query failed: {code:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hits: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON hits");
    let mut titles: Vec<String> = hits
        .iter()
        .map(|h| h["title"].as_str().unwrap_or_default().to_owned())
        .collect();
    titles.sort();
    titles
}

fn doc<'a>(docs: &'a [SinkDocument], id: &str) -> &'a SinkDocument {
    docs.iter()
        .find(|d| d.id.0 == id)
        .unwrap_or_else(|| panic!("{id} not in the sink"))
}

async fn start(root: &Path, sink_toml: Option<String>) -> Env {
    let env = Env::start(Options {
        source_toml: Some(source_toml(root)),
        sink_toml,
        ..Options::default()
    })
    .await;
    env.coordinator("c1");
    env.worker("w1");
    env
}

/// Files carry their readers (owner, group and others mapped, the
/// directories above them narrowing them); a directory opened or closed is a
/// change of permissions alone: the next incremental run rewrites its files
/// with their new readers without reading them, and the directory sink's
/// search follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_permissions_follow_the_share_and_filter_searches() {
    let dir = tempfile::tempdir().expect("tmp");
    seed(dir.path());
    let env = start(dir.path(), None).await;
    let run = env.sync(SyncMode::Full).await;
    assert_eq!((run.status, run.upserted), (RunStatus::Completed, 2), "{run:?}");
    let docs = env.sink_docs();
    let handbook = doc(&docs, "handbook.md");
    assert!(
        handbook.permissions.readers.contains(&"anyone".to_owned()),
        "{handbook:?}"
    );
    assert_eq!(handbook.permissions.source["mode"], "0644");
    let payroll = doc(&docs, "hr/payroll.md");
    assert_eq!(
        payroll.permissions.readers,
        vec!["user:alice@example.com"],
        "{payroll:?}"
    );
    assert_eq!(payroll.schema_version, tidemark::sinks::SCHEMA_VERSION);

    assert_eq!(query(&env, "handbook", &["user:bob@example.com"]), vec!["handbook.md"]);
    assert_eq!(query(&env, "handbook", &[]), vec!["handbook.md"], "an anonymous reader");
    assert_eq!(
        query(&env, "handbook", &["user:alice@example.com"]),
        vec!["handbook.md", "payroll.md"]
    );
    assert!(query(&env, "salary", &["user:bob@example.com"]).is_empty());

    // Opened to everyone: the payroll's readers change, its content does not.
    chmod(&dir.path().join("hr"), 0o755);
    let run = env.sync(SyncMode::Incremental).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!((run.permissions_updated, run.upserted), (1, 0), "{run:?}");
    assert!(run.note.contains("new permissions only"), "{}", run.note);
    let docs = env.sink_docs();
    assert!(doc(&docs, "hr/payroll.md").permissions.may_read(&["anyone"]));
    assert_eq!(query(&env, "salary", &["user:bob@example.com"]), vec!["payroll.md"]);

    // Closed again to the group: Bob loses it, Alice and the staff keep it.
    chmod(&dir.path().join("hr"), 0o750);
    let run = env.sync(SyncMode::Incremental).await;
    assert_eq!((run.permissions_updated, run.upserted), (1, 0), "{run:?}");
    assert!(query(&env, "salary", &["user:bob@example.com"]).is_empty());
    assert_eq!(
        query(&env, "salary", &["user:bob@example.com", "group:staff"]),
        vec!["payroll.md"]
    );

    // Nothing changed: nothing planned.
    let run = env.sync(SyncMode::Incremental).await;
    assert_eq!((run.docs_processed, run.permissions_updated), (0, 0), "{run:?}");
}

/// The PostgreSQL sink stores the readers (an indexed array beside the whole
/// permissions), and `tidemark query` over it, like the README's SQL, never
/// returns a restricted document to a reader outside its principals, also
/// when a restriction is nested (a reader must be in every list).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_returns_restricted_documents_only_to_their_readers() {
    let dir = tempfile::tempdir().expect("tmp");
    seed(dir.path());
    // Nested: a group-only file in a directory only Alice and the group may enter.
    std::fs::create_dir_all(dir.path().join("board")).expect("mkdir");
    std::fs::write(
        dir.path().join("board/minutes.md"),
        "Board minutes: the handbook budget.",
    )
    .expect("write");
    chmod(&dir.path().join("board/minutes.md"), 0o640);
    chmod(&dir.path().join("board"), 0o710);
    let pg = PgServer::start();
    let env = start(
        dir.path(),
        Some(format!("kind = \"postgres\"\nurl = \"{}\"\npool_size = 2", pg.url())),
    )
    .await;
    let run = env.sync(SyncMode::Full).await;
    assert_eq!((run.status, run.upserted), (RunStatus::Completed, 3), "{run:?}");

    assert_eq!(query(&env, "handbook", &["user:bob@example.com"]), vec!["handbook.md"]);
    assert_eq!(
        query(&env, "handbook", &["user:alice@example.com"]),
        vec!["handbook.md", "minutes.md", "payroll.md"]
    );
    assert_eq!(
        query(&env, "handbook", &["user:bob@example.com", "group:staff"]),
        vec!["handbook.md", "minutes.md"],
        "the group may enter board/ and read the minutes, not hr/"
    );
    assert_eq!(
        query(&env, "", &["group:other"]),
        vec!["handbook.md"],
        "every readable document"
    );

    // The column a retriever's own SQL filters on, and the function it calls.
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT id FROM documents WHERE source = 'eng' AND readers && $1 \
             AND tidemark_may_read(permissions, $1) ORDER BY id",
            &[&vec!["anyone".to_owned(), "user:alice@example.com".to_owned()]],
        )
        .await
        .expect("query");
    let ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(ids, vec!["board/minutes.md", "handbook.md", "hr/payroll.md"]);
    let rows = client
        .query(
            "SELECT id FROM documents WHERE readers && $1 AND tidemark_may_read(permissions, $1)",
            &[&vec!["anyone".to_owned(), "user:bob@example.com".to_owned()]],
        )
        .await
        .expect("query");
    assert_eq!(rows.len(), 1, "Bob reads the handbook only");
}

/// Issue 13's Done-when for Confluence: a page restricted to one group
/// carries the restriction in the sink after one incremental sync, and so do
/// its children, grandchildren and attachments, with no content fetched
/// (restrictions move no version: nothing but the restriction scan sees
/// them); a query as someone outside the group no longer finds them, as
/// someone in it still does; lifting the restriction is synced the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confluence_restriction_reaches_the_subtree_without_fetching() {
    use tidemark::simulators::confluence::{group_confluence_users, group_engineering, seed_users};
    use tidemark::simulators::files::{self, Stored};

    let env = Env::start(Options {
        pages: 60,
        ..Options::default()
    })
    .await;
    env.coordinator("c1");
    env.worker("w1");
    let pages = env.sim.pages();
    let kids = |id: &str| -> Vec<String> {
        pages
            .iter()
            .filter(|c| c.parent_id.as_deref() == Some(id))
            .map(|c| c.id.clone())
            .collect()
    };
    // An unrestricted page with grandchildren, under nothing restricted.
    let top = pages
        .iter()
        .filter(|p| env.expected_readers(&p.id).len() == 1)
        .filter(|p| env.sim.read_restriction(&p.id).is_some_and(|r| r.is_empty()))
        .max_by_key(|p| kids(&p.id).iter().map(|k| kids(k).len()).sum::<usize>())
        .expect("a page nothing restricts")
        .id
        .clone();
    let mut subtree = vec![top.clone()];
    let mut i = 0;
    while i < subtree.len() {
        subtree.extend(kids(&subtree[i]));
        i += 1;
    }
    assert!(subtree.len() >= 3, "a page with descendants: {subtree:?}");
    let attachment = env
        .sim
        .attach(&subtree[1], files::stored(Stored::Text, 3, "restricted minutes"))
        .expect("attached");
    subtree.push(attachment);

    let full = env.sync(SyncMode::Full).await;
    assert_eq!(full.status, RunStatus::Completed, "{full:?}");
    env.assert_sink_matches_source();
    let everyone = format!("group:{}", group_confluence_users().id);
    let engineering = format!("group:{}", group_engineering().id);
    let readable_by = |who: &str| -> Vec<String> {
        let docs = env.sink_docs();
        subtree
            .iter()
            .filter(|id| doc(&docs, id).permissions.may_read(&[who]))
            .cloned()
            .collect()
    };
    assert_eq!(readable_by(&everyone), subtree, "open to the space before");
    let title = doc(&env.sink_docs(), &top).title.clone();
    let words = title.split_whitespace().next().unwrap_or_default().to_owned();
    let titles = query_in(&env, "eng", &words, &[&everyone]);
    assert!(titles.contains(&title), "{title:?} in {titles:?}");

    // Restricted to engineering: one incremental run, nothing fetched.
    assert!(
        env.sim
            .set_read_restriction(&top, Vec::new(), vec![group_engineering()])
    );
    env.sim.reset_calls();
    let run = env.sync(SyncMode::Incremental).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(run.permissions_updated, subtree.len() as u64, "{run:?}");
    assert_eq!((run.upserted, run.deleted), (0, 0), "{run:?}");
    let calls = env.sim.calls();
    assert!(
        calls
            .keys()
            .all(|k| !k.starts_with("GET /wiki/api/v2/pages") && !k.contains("download")),
        "no content fetched: {calls:?}"
    );
    assert_eq!(run.api_calls, env.sim.total_calls());
    env.assert_sink_matches_source();
    assert!(readable_by(&everyone).is_empty(), "the whole subtree is restricted");
    assert_eq!(readable_by(&engineering), subtree);
    assert!(
        !query_in(&env, "eng", &words, &[&everyone]).contains(&title),
        "a reader outside the group no longer finds it"
    );
    assert!(query_in(&env, "eng", &words, &[&engineering]).contains(&title));
    // A nested restriction narrows below: Alice alone, and she must be in engineering too.
    let nested = subtree[1].clone();
    let alice = format!("user:atlassian:{}", seed_users()[0].account_id);
    assert!(
        env.sim
            .set_read_restriction(&nested, vec![seed_users()[0].clone()], Vec::new())
    );
    let run = env.sync(SyncMode::Incremental).await;
    assert_eq!((run.upserted, run.deleted), (0, 0), "{run:?}");
    env.assert_sink_matches_source();
    let docs = env.sink_docs();
    let p = &doc(&docs, &nested).permissions;
    assert!(p.may_read(&[alice.as_str(), engineering.as_str()]));
    assert!(!p.may_read(&[alice.as_str()]) && !p.may_read(&[engineering.as_str()]));

    // Lifted: likewise one run, nothing fetched, open to the space again.
    assert!(env.sim.set_read_restriction(&top, Vec::new(), Vec::new()));
    assert!(env.sim.set_read_restriction(&nested, Vec::new(), Vec::new()));
    env.sim.reset_calls();
    let run = env.sync(SyncMode::Incremental).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(run.permissions_updated, subtree.len() as u64, "{run:?}");
    assert_eq!((run.upserted, run.deleted), (0, 0), "{run:?}");
    assert!(
        env.sim
            .calls()
            .keys()
            .all(|k| !k.starts_with("GET /wiki/api/v2/pages") && !k.contains("download")),
        "{:?}",
        env.sim.calls()
    );
    env.assert_sink_matches_source();
    assert_eq!(readable_by(&everyone), subtree);
}

/// A document whose last write failed is redone by every run; when its
/// readers change meanwhile, the permissions-only rewrite is a fetch, not a
/// rewrite of the sink's copy (which is older than the source's: the edit
/// that failed to land). The sink ends with the edit *and* the new readers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_document_whose_readers_change_is_fetched_not_rewritten() {
    use tidemark::simulators::confluence::group_engineering;
    use tidemark::sinks::directory::DirectorySink;
    use tidemark::types::DocumentId;

    let env = Env::start(Options::default()).await;
    env.coordinator("c1");
    env.worker("w1");
    let victim = env
        .sim
        .pages()
        .into_iter()
        .find(|p| env.expected_readers(&p.id).len() == 1)
        .expect("an unrestricted page")
        .id;
    assert_eq!(env.sync(SyncMode::Full).await.status, RunStatus::Completed);
    let path = DirectorySink::new(env.sink_dir.path()).doc_path(&env.source, &DocumentId(victim.clone()));
    let old_copy = std::fs::read(&path).expect("the victim's file");

    // Edited at the source, and its file's path taken by a directory: the write fails.
    std::fs::remove_file(&path).expect("rm");
    std::fs::create_dir_all(&path).expect("mkdir");
    assert!(
        env.sim
            .update_page(&victim, None, Some("<p>the edit that failed to land</p>"))
    );
    let failed = env.sync(SyncMode::Incremental).await;
    assert_eq!(
        (failed.status, failed.docs_failed),
        (RunStatus::CompletedWithErrors, 1),
        "{failed:?}"
    );

    // The old copy back in the sink, and the page restricted: no new version, no edit.
    std::fs::remove_dir(&path).expect("rmdir");
    std::fs::write(&path, &old_copy).expect("old copy");
    assert!(
        env.sim
            .set_read_restriction(&victim, Vec::new(), vec![group_engineering()])
    );
    env.sim.reset_calls();
    let run = env.sync(SyncMode::Incremental).await;
    assert_eq!((run.status, run.docs_failed), (RunStatus::Completed, 0), "{run:?}");
    assert!(
        env.sim.calls().contains_key("GET /wiki/api/v2/pages"),
        "fetched: {:?}",
        env.sim.calls()
    );
    env.assert_sink_matches_source();
    let docs = env.sink_docs();
    assert!(doc(&docs, &victim).content.contains("failed to land"));
}
