//! The filesystem connector end to end: a coordinator and a worker against a
//! real Redis and a real temp directory the tests edit.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use tidemark::state::RunStatus;
use tidemark::types::SyncMode;

use crate::harness::nginx::write_with_mtime;
use crate::harness::{Env, Options};

/// A fixed, old modification time; edits add to it so mtimes always change.
fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// Files of the test tree: two at the root, three nested.
const TREE: &[(&str, &str)] = &[
    ("readme.md", "# Readme"),
    ("notes.txt", "notes"),
    ("guides/intro.md", "intro"),
    ("guides/install/linux.md", "apt-get install"),
    ("guides/install/mac.md", "brew install"),
];

fn seed(root: &Path) {
    for (rel, body) in TREE {
        write_with_mtime(&root.join(rel), body, t0());
    }
    // Hidden: not synced by default.
    write_with_mtime(&root.join(".cache/x.md"), "hidden", t0());
}

async fn env_for(root: &Path) -> Env {
    let toml = format!(
        "[[sources]]\nid = \"eng\"\nkind = \"filesystem\"\n[sources.settings]\nroot = {:?}\n",
        root.display().to_string()
    );
    let env = Env::start(Options {
        source_toml: Some(toml),
        ..Options::default()
    })
    .await;
    env.coordinator("c1");
    env.worker("w1");
    env
}

/// The sink as id -> (title, breadcrumb, content).
fn sink(env: &Env) -> BTreeMap<String, (String, Vec<String>, String)> {
    env.sink_docs()
        .into_iter()
        .map(|d| (d.id.0, (d.title, d.breadcrumb, d.content)))
        .collect()
}

/// A full sync writes every file with its relative path as id, its name as
/// title and its directories as breadcrumbs; an incremental run with nothing
/// changed processes nothing and makes no API calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_breadcrumbs_and_no_op() {
    let dir = tempfile::tempdir().expect("tmp");
    seed(dir.path());
    let env = env_for(dir.path()).await;

    let full = env.sync(SyncMode::Full).await;
    assert_eq!(full.status, RunStatus::Completed, "{full:?}");
    assert_eq!(
        (full.docs_processed, full.upserted, full.api_calls),
        (5, 5, 0),
        "{full:?}"
    );
    let docs = sink(&env);
    let ids: Vec<&str> = docs.keys().map(String::as_str).collect();
    assert_eq!(
        ids,
        vec![
            "guides/install/linux.md",
            "guides/install/mac.md",
            "guides/intro.md",
            "notes.txt",
            "readme.md"
        ]
    );
    let (title, crumbs, content) = &docs["guides/install/linux.md"];
    assert_eq!(title, "linux.md");
    assert_eq!(crumbs, &vec!["guides".to_owned(), "install".to_owned()]);
    assert_eq!(content, "apt-get install");
    assert_eq!(docs["guides/intro.md"].1, vec!["guides".to_owned()]);
    assert!(docs["readme.md"].1.is_empty());

    let noop = env.sync(SyncMode::Incremental).await;
    assert_eq!(noop.status, RunStatus::Completed, "{noop:?}");
    assert_eq!(
        (noop.docs_processed, noop.upserted, noop.unchanged, noop.api_calls),
        (0, 0, 5, 0),
        "{noop:?}"
    );
    assert!(
        noop.note.contains("0 read and hashed"),
        "unchanged files are not read: {}",
        noop.note
    );
}

/// Editing one file processes exactly it; touching another (new mtime, same
/// bytes) has it hashed and found unchanged, so nothing is written; deleting a
/// file deletes it from the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_touch_and_delete() {
    let dir = tempfile::tempdir().expect("tmp");
    seed(dir.path());
    let env = env_for(dir.path()).await;
    env.sync(SyncMode::Full).await;

    write_with_mtime(
        &dir.path().join("guides/intro.md"),
        "intro, revised",
        t0() + Duration::from_secs(60),
    );
    let edit = env.sync(SyncMode::Incremental).await;
    assert_eq!(edit.status, RunStatus::Completed, "{edit:?}");
    assert_eq!(
        (edit.docs_processed, edit.upserted, edit.unchanged),
        (1, 1, 4),
        "{edit:?}"
    );
    assert_eq!(sink(&env)["guides/intro.md"].2, "intro, revised");

    write_with_mtime(&dir.path().join("notes.txt"), "notes", t0() + Duration::from_secs(120));
    let touch = env.sync(SyncMode::Incremental).await;
    assert_eq!(touch.status, RunStatus::Completed, "{touch:?}");
    assert_eq!(
        (touch.docs_processed, touch.upserted, touch.unchanged),
        (0, 0, 5),
        "{touch:?}"
    );
    assert!(
        touch.note.contains("1 read and hashed") && touch.note.contains("1 touched but unchanged"),
        "{}",
        touch.note
    );

    std::fs::remove_file(dir.path().join("readme.md")).expect("rm");
    let del = env.sync(SyncMode::Incremental).await;
    assert_eq!(del.status, RunStatus::Completed, "{del:?}");
    assert_eq!((del.docs_processed, del.deleted, del.upserted), (1, 1, 0), "{del:?}");
    let docs = sink(&env);
    assert_eq!(docs.len(), 4);
    assert!(!docs.contains_key("readme.md"));
}

/// Renaming a file into another directory is reported as a move in the run note;
/// the sink then holds the new id (with its new breadcrumbs) and not the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_is_reported_as_a_move() {
    let dir = tempfile::tempdir().expect("tmp");
    seed(dir.path());
    let env = env_for(dir.path()).await;
    env.sync(SyncMode::Full).await;

    std::fs::create_dir_all(dir.path().join("archive")).expect("mkdir");
    std::fs::rename(
        dir.path().join("guides/install/mac.md"),
        dir.path().join("archive/macos.md"),
    )
    .expect("rename");
    let mv = env.sync(SyncMode::Incremental).await;
    assert_eq!(mv.status, RunStatus::Completed, "{mv:?}");
    assert!(mv.note.contains("1 document(s) moved or renamed"), "{}", mv.note);
    assert!(
        mv.note.contains("guides/install/mac.md -> archive/macos.md"),
        "{}",
        mv.note
    );
    assert_eq!((mv.docs_processed, mv.upserted, mv.deleted), (2, 1, 1), "{mv:?}");
    let docs = sink(&env);
    assert!(!docs.contains_key("guides/install/mac.md"), "old id still in the sink");
    let (title, crumbs, content) = &docs["archive/macos.md"];
    assert_eq!((title.as_str(), content.as_str()), ("macos.md", "brew install"));
    assert_eq!(crumbs, &vec!["archive".to_owned()]);
}

/// The filesystem source keeps no children index (`kids:`): a file's parent
/// is its directory, whose path is part of the file's id, so a directory
/// renamed moves each file under it to a new id, with its new breadcrumbs,
/// and nothing is ever looked up by parent (issue 12.2: the index was about
/// 63 of 304 bytes per held document at a million files).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_renamed_moves_its_files_without_a_children_index() {
    let dir = tempfile::tempdir().expect("tmp");
    seed(dir.path());
    let env = env_for(dir.path()).await;
    assert_eq!(env.sync(SyncMode::Full).await.status, RunStatus::Completed);
    let kids = || -> Vec<String> {
        redis::cmd("KEYS")
            .arg(format!("{}:{{eng}}:kids:*", env.app.config.redis.namespace))
            .query(&mut env.redis.conn())
            .expect("KEYS")
    };
    assert_eq!(kids(), Vec::<String>::new(), "no children index");

    std::fs::rename(dir.path().join("guides/install"), dir.path().join("guides/setup")).expect("rename");
    let mv = env.sync(SyncMode::Incremental).await;
    assert_eq!(mv.status, RunStatus::Completed, "{mv:?}");
    assert_eq!((mv.upserted, mv.deleted), (2, 2), "{mv:?}");
    let docs = sink(&env);
    assert!(
        !docs.contains_key("guides/install/linux.md"),
        "old id still in the sink"
    );
    let (_, crumbs, content) = &docs["guides/setup/linux.md"];
    assert_eq!(crumbs, &vec!["guides".to_owned(), "setup".to_owned()]);
    assert_eq!(content, "apt-get install");
    assert_eq!(kids(), Vec::<String>::new(), "still none");
}

/// A document whose id escapes to a file name far over 255 bytes (a deep path
/// of long directory names) is written like any other, with its id inside the
/// file; its page completes and the next run has nothing to redo (issue 8,
/// point 7: such an id used to poison its page on every run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_with_a_very_long_id_is_synced() {
    let dir = tempfile::tempdir().expect("tmp");
    seed(dir.path());
    let deep = format!("{}/{}/{}/doc.md", "d".repeat(120), "e".repeat(120), "f".repeat(120));
    write_with_mtime(&dir.path().join(&deep), "deep", t0());
    let env = env_for(dir.path()).await;
    let first = env.sync(SyncMode::Full).await;
    assert_eq!(
        (first.status, first.upserted, first.docs_failed),
        (RunStatus::Completed, 6, 0),
        "{first:?}"
    );
    let docs = sink(&env);
    assert_eq!(docs.get(&deep).map(|d| d.2.as_str()), Some("deep"), "{docs:?}");
    let longest = std::fs::read_dir(env.sink_dir.path().join("eng/docs"))
        .expect("sink dir")
        .map(|e| e.expect("entry").file_name().len())
        .max()
        .expect("files");
    assert!(longest <= 255, "file name of {longest} bytes");
    let again = env.sync(SyncMode::Incremental).await;
    assert_eq!(
        (again.status, again.docs_processed),
        (RunStatus::Completed, 0),
        "{again:?}"
    );
}
