//! End-to-end Google Drive scenarios: a coordinator and a worker against a real
//! Redis and the Drive simulator, checked against the simulator's files. Each
//! "yes" of the connector's capability table is proven here or in its unit tests.

use std::collections::BTreeMap;

use tidemark::queue::{self, jobs::SyncRequest};
use tidemark::simulators::files;
use tidemark::simulators::gdrive::{DOC_MIME, GdriveSim, SHEET_MIME, SLIDES_MIME, SimConfig, SimFile};
use tidemark::sources::gdrive::{Kind, version_string};
use tidemark::state::RunStatus;
use tidemark::types::SyncMode;

use crate::harness::{Env, Options, words};

/// Starts the simulator, then an environment whose source `eng` is that drive
/// folder (plus `extra` settings lines), with one coordinator and one worker.
pub(crate) async fn start(cfg: SimConfig, extra: &str) -> (Env, GdriveSim) {
    let sim = GdriveSim::new(cfg);
    let (addr, _task) = sim
        .serve("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("simulator binds");
    (drive_env(&format!("http://{addr}"), extra).await, sim)
}

/// An environment whose source `eng` is the drive folder `root-folder` at
/// API root `base_url` (plus `extra` settings lines), with one coordinator and one worker.
pub(crate) async fn drive_env(base_url: &str, extra: &str) -> Env {
    let source = format!(
        "[[sources]]\nid = \"eng\"\nkind = \"gdrive\"\n[sources.settings]\nbase_url = \"{base_url}\"\nfolder_id = \"root-folder\"\n{extra}\n"
    );
    let env = Env::start(Options {
        pages: 0,
        page_size: 50,
        source_toml: Some(source),
        ..Options::default()
    })
    .await;
    env.coordinator("c1");
    env.worker("w1");
    env
}

/// The version the sink must carry for `file`: the version of its content,
/// which sharing does not move (Drive's own `version` does: "every change
/// made to the file on the server"): the SHA-256 of the bytes where Drive
/// stores them (`sha256Checksum`, first 16 hex), else `modifiedTime` in
/// milliseconds, tagged with how the file is read.
pub(crate) fn expected_version(file: &SimFile) -> Option<String> {
    let kind = Kind::of_mime(&file.mime_type)?;
    let stored = !file.mime_type.starts_with("application/vnd.google-apps.");
    Some(if stored {
        let sum = tidemark::sources::sha256_hex(&file.content);
        version_string(kind, &format!("s{}", &sum[..16]))
    } else {
        version_string(kind, &format!("m{}", file.modified_time.timestamp_millis()))
    })
}

/// Who may read `file`, from the simulated drive's effective permissions as
/// the Drive reference defines them: users and groups by email, a domain or
/// anyone discoverable or only with the link; every role reads.
pub(crate) fn expected_readers(sim: &GdriveSim, file: &SimFile) -> Vec<String> {
    let mut readers: Vec<String> = sim
        .permissions(&file.id)
        .into_iter()
        .map(|p| {
            let discoverable = p.allow_file_discovery.unwrap_or(false);
            match p.r#type.as_str() {
                "user" => format!("user:{}", p.email_address.unwrap_or_default().to_lowercase()),
                "group" => format!("group:{}", p.email_address.unwrap_or_default().to_lowercase()),
                "domain" if discoverable => format!("domain:{}", p.domain.unwrap_or_default()),
                "domain" => format!("domain_with_link:{}", p.domain.unwrap_or_default()),
                _ if discoverable => "anyone".to_owned(),
                _ => "anyone_with_link".to_owned(),
            }
        })
        .collect();
    readers.sort();
    readers.dedup();
    readers
}

/// The folder names from the synced folder down to `file`'s folder, read off
/// the simulated drive's parents.
pub(crate) fn folder_path(sim: &GdriveSim, file: &SimFile) -> Vec<String> {
    let all: BTreeMap<String, SimFile> = sim.files().into_iter().map(|f| (f.id.clone(), f)).collect();
    let root = sim.root_folder_id();
    let mut path = Vec::new();
    let mut cur = file.parent.clone();
    while let Some(id) = cur {
        let folder = &all[&id];
        path.push(folder.name.clone());
        if id == root {
            break;
        }
        cur = folder.parent.clone();
    }
    path.reverse();
    path
}

type Row = (String, String, Vec<String>, String, Vec<String>);

/// Asserts the sink holds exactly the files of the simulated tree: ids,
/// versions (with their kind tag), titles, folder breadcrumbs, text and readers.
fn assert_sink_matches(env: &Env, sim: &GdriveSim) {
    let expected: BTreeMap<String, Row> = sim
        .files_in_tree()
        .into_iter()
        .filter_map(|f| {
            let version = expected_version(&f)?;
            let crumbs = folder_path(sim, &f);
            let readers = expected_readers(sim, &f);
            Some((f.id, (version, f.name, crumbs, words(&f.text), readers)))
        })
        .collect();
    let got: BTreeMap<String, Row> = env
        .sink_docs()
        .into_iter()
        .map(|d| {
            let row = (
                d.version,
                d.title,
                d.breadcrumb,
                words(&d.content),
                d.permissions.readers,
            );
            (d.id.0, row)
        })
        .collect();
    crate::harness::assert_same_docs("the drive", &expected, &got);
}

/// Asserts every document carries the document contract as Drive's reference
/// defines its parts: `webViewLink` (the Docs editor for Docs Editors files,
/// the viewer for stored files), the file's `mimeType` and `modifiedTime`,
/// the SHA-256 of the exact bytes downloaded or exported, the stored size, and
/// a note (with empty text) for kinds that have no text, such as images.
fn assert_contract(env: &Env, sim: &GdriveSim) {
    use sha2::Digest;
    let files: BTreeMap<String, SimFile> = sim.files_in_tree().into_iter().map(|f| (f.id.clone(), f)).collect();
    let docs = env.sink_docs();
    assert_eq!(docs.len(), files.len());
    for d in docs {
        let f = &files[&d.id.0];
        assert_eq!(d.schema_version, tidemark::sinks::SCHEMA_VERSION);
        let native = f.mime_type.starts_with("application/vnd.google-apps.");
        let url = match f.mime_type.as_str() {
            DOC_MIME => format!("https://docs.google.com/document/d/{}/edit?usp=drivesdk", f.id),
            SHEET_MIME => format!("https://docs.google.com/spreadsheets/d/{}/edit?usp=drivesdk", f.id),
            SLIDES_MIME => format!("https://docs.google.com/presentation/d/{}/edit?usp=drivesdk", f.id),
            _ => format!("https://drive.google.com/file/d/{}/view?usp=drivesdk", f.id),
        };
        assert_eq!(d.permissions.readers, expected_readers(sim, f), "{}", f.name);
        let a = &d.about;
        assert_eq!(a.url.as_deref(), Some(url.as_str()), "{}", f.name);
        assert_eq!(a.mime_type.as_deref(), Some(f.mime_type.as_str()), "{}", f.name);
        assert_eq!(a.modified_at, Some(f.modified_time), "{}", f.name);
        if f.mime_type.starts_with("image/") {
            assert_eq!(d.content, "", "{}", f.name);
            assert!(
                a.content_note.as_deref().is_some_and(|n| n.contains("image/png")),
                "{d:?}"
            );
            assert_eq!(a.source_sha256, None, "nothing was downloaded for {}", f.name);
        } else {
            let sha = hex::encode(sha2::Sha256::digest(&f.content));
            assert_eq!(a.source_sha256.as_deref(), Some(sha.as_str()), "{}", f.name);
            assert_eq!(a.content_note, None, "{}", f.name);
        }
        assert_eq!(
            a.size_bytes,
            Some(f.content.len() as u64),
            "{} (native: {native})",
            f.name
        );
    }
}

fn ids_named(sim: &GdriveSim, name: &str) -> String {
    sim.files()
        .into_iter()
        .find(|f| f.name == name)
        .map(|f| f.id)
        .unwrap_or_else(|| panic!("no file named {name:?}"))
}

/// The problem statement on Drive: 500 files of every kind (Docs, Sheets and
/// Slides; PDF, Word, Excel, PowerPoint, text, Markdown, CSV, HTML and images,
/// each a real file) in nested folders, then 3 created, 2 updated and 1
/// trashed. The full sync holds every file, binary ones included, with its
/// text, URL, type and fingerprint; the incremental run processes exactly the 6
/// documents with at most 7 API calls (one changes.list plus one download or
/// export per upsert), and the sink equals the drive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_files_six_changes() {
    let (env, sim) = start(
        SimConfig {
            files: 500,
            ..SimConfig::default()
        },
        "",
    )
    .await;
    let full = env.sync(SyncMode::Full).await;
    assert_eq!(full.status, RunStatus::Completed, "{full:?}");
    assert_eq!((full.docs_processed, full.upserted), (500, 500), "{full:?}");
    assert_sink_matches(&env, &sim);
    assert_contract(&env, &sim);
    let kinds: std::collections::BTreeSet<String> = sim.files_in_tree().into_iter().map(|f| f.mime_type).collect();
    assert_eq!(kinds.len(), 12, "every kind is seeded: {kinds:?}");

    let folder2 = ids_named(&sim, "Folder 2");
    sim.create_binary(
        "New A.pdf",
        "root-folder",
        tidemark::extract::PDF_MIME,
        &files::pdf(&["Incident review"]),
        "Incident review",
    )
    .expect("a");
    sim.create_file("New B", &folder2, DOC_MIME, "b").expect("b");
    sim.create_binary(
        "New C.docx",
        &folder2,
        tidemark::extract::DOCX_MIME,
        &files::docx(&["Runbook"]),
        "Runbook",
    )
    .expect("c");
    let in_tree = sim.files_in_tree();
    let deck = in_tree
        .iter()
        .find(|f| f.mime_type == tidemark::extract::PPTX_MIME)
        .expect("a deck");
    assert!(sim.update_binary(&deck.id, &files::pptx(&["New roadmap"]), "New roadmap"));
    assert!(sim.update_file(&in_tree[20].id, Some("Renamed"), None));
    let deleted = in_tree[30].id.clone();
    assert!(sim.trash_file(&deleted));
    sim.reset_calls();

    let inc = env.sync(SyncMode::Incremental).await;
    assert_eq!(inc.status, RunStatus::Completed, "{inc:?}");
    assert_eq!(inc.docs_processed, 6, "{inc:?}");
    assert_eq!((inc.upserted, inc.deleted), (5, 1), "{inc:?}");
    assert!(inc.api_calls <= 7, "incremental run made {} API calls", inc.api_calls);
    assert_eq!(inc.api_calls, 6, "one changes.list and one download per upsert");
    assert_eq!(inc.api_calls, sim.total_calls(), "run record and simulator disagree");
    assert_eq!(sim.calls().get("GET /drive/v3/changes"), Some(&1));
    assert!(
        env.sink_docs().iter().all(|d| d.id.0 != deleted),
        "trashed file still in the sink"
    );
    assert_sink_matches(&env, &sim);
    assert_contract(&env, &sim);
}

/// Folder paths follow renames and moves of any folder on the path: renaming
/// a folder rewrites the breadcrumbs of everything under it (nested folders
/// included) with no content fetched, and so do moving a folder and renaming
/// the synced folder itself. Each run is one `changes.list` call, and one
/// `files.list` of the moved folder: moved under a folder shared with a group,
/// its files inherit that sharing (Drive reports the folder's change only), so
/// they are listed again and their permissions rewritten, still not fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_renames_and_moves_rewrite_breadcrumbs_without_fetching() {
    let (env, sim) = start(
        SimConfig {
            files: 60,
            subfolders: 4,
            ..SimConfig::default()
        },
        "",
    )
    .await;
    let full = env.sync(SyncMode::Full).await;
    assert_eq!(full.status, RunStatus::Completed, "{full:?}");
    assert_sink_matches(&env, &sim);
    let crumbs: Vec<Vec<String>> = env.sink_docs().into_iter().map(|d| d.breadcrumb).collect();
    assert!(
        crumbs
            .iter()
            .all(|c| c.first().map(String::as_str) == Some("Knowledge base"))
    );
    assert!(crumbs.iter().any(|c| c.len() == 3), "nested folders: {crumbs:?}");

    // "Folder 1" holds "Folder 2": renaming it changes both folders' documents.
    let folder1 = ids_named(&sim, "Folder 1");
    let under = sim
        .files_in_tree()
        .iter()
        .filter(|f| folder_path(&sim, f).contains(&"Folder 1".to_owned()))
        .count();
    assert!(under > 0);
    assert!(sim.update_file(&folder1, Some("Handbook / 2026 ✓"), None));
    sim.reset_calls();
    let renamed = env.sync(SyncMode::Incremental).await;
    assert_eq!(renamed.status, RunStatus::Completed, "{renamed:?}");
    assert_eq!((renamed.docs_processed, renamed.api_calls), (0, 1), "{renamed:?}");
    assert_eq!(renamed.dependents_updated as usize, under, "{renamed:?}");
    assert_sink_matches(&env, &sim);

    // Move "Folder 3" under "Folder 4" (shared with a group: seeded so).
    let (folder3, folder4) = (ids_named(&sim, "Folder 3"), ids_named(&sim, "Folder 4"));
    let under3 = sim
        .files_in_tree()
        .iter()
        .filter(|f| folder_path(&sim, f).contains(&"Folder 3".to_owned()))
        .count() as u64;
    assert!(under3 > 0);
    assert!(sim.move_file(&folder3, &folder4));
    sim.reset_calls();
    let moved = env.sync(SyncMode::Incremental).await;
    assert_eq!(
        (
            moved.docs_processed,
            moved.permissions_updated,
            moved.upserted,
            moved.api_calls
        ),
        (under3, under3, 0, 2),
        "{moved:?}"
    );
    assert_sink_matches(&env, &sim);
    assert_contract(&env, &sim);

    // Rename the synced folder itself: every breadcrumb starts with it.
    assert!(sim.update_file("root-folder", Some("KB"), None));
    let root = env.sync(SyncMode::Incremental).await;
    assert_eq!(root.docs_processed, 0, "{root:?}");
    assert_eq!(root.dependents_updated, 60, "{root:?}");
    assert_sink_matches(&env, &sim);

    // A full run finds nothing to rewrite.
    let again = env.sync(SyncMode::Full).await;
    assert_eq!((again.upserted, again.dependents_updated), (0, 0), "{again:?}");
}

/// With nothing changed, an incremental run is one changes.list call and
/// processes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_op_incremental_is_one_call() {
    let (env, sim) = start(
        SimConfig {
            files: 60,
            ..SimConfig::default()
        },
        "",
    )
    .await;
    env.sync(SyncMode::Full).await;
    sim.reset_calls();
    let inc = env.sync(SyncMode::Incremental).await;
    assert_eq!(inc.status, RunStatus::Completed, "{inc:?}");
    assert_eq!((inc.docs_processed, inc.upserted, inc.deleted), (0, 0, 0), "{inc:?}");
    assert_eq!((inc.api_calls, sim.total_calls()), (1, 1), "{inc:?}");
    assert_sink_matches(&env, &sim);
}

/// A file moved out of the folder tree is deleted from the sink, one moved in
/// from outside is created, and a trashed file is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_moves_and_trash() {
    let (env, sim) = start(
        SimConfig {
            files: 30,
            ..SimConfig::default()
        },
        "",
    )
    .await;
    let outside = sim.create_folder("Archive", &sim.drive_root_id()).expect("outside");
    let incoming = sim
        .create_file("Incoming.txt", &outside, "text/plain", "from outside")
        .expect("incoming");
    env.sync(SyncMode::Full).await;
    assert!(
        env.sink_docs().iter().all(|d| d.id.0 != incoming),
        "outside file synced"
    );

    let in_tree = sim.files_in_tree();
    let leaving = in_tree[4].id.clone();
    let trashed = in_tree[5].id.clone();
    assert!(sim.move_file(&leaving, &outside));
    assert!(sim.move_file(&incoming, "root-folder"));
    assert!(sim.trash_file(&trashed));
    let inc = env.sync(SyncMode::Incremental).await;
    assert_eq!(inc.status, RunStatus::Completed, "{inc:?}");
    assert_eq!((inc.docs_processed, inc.upserted, inc.deleted), (3, 1, 2), "{inc:?}");
    let sink: Vec<String> = env.sink_docs().into_iter().map(|d| d.id.0).collect();
    assert!(!sink.contains(&leaving) && !sink.contains(&trashed), "{sink:?}");
    assert!(sink.contains(&incoming));
    assert_sink_matches(&env, &sim);
}

/// A folder moved out of the tree removes its whole subtree (nested folder
/// included) from the sink; moved back in, the subtree is listed and restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folder_subtree_leaves_and_returns() {
    let (env, sim) = start(
        SimConfig {
            files: 50,
            ..SimConfig::default()
        },
        "",
    )
    .await;
    env.sync(SyncMode::Full).await;
    let before = env.sink_docs().len() as u64;
    let folder1 = ids_named(&sim, "Folder 1");
    let outside = sim.create_folder("Elsewhere", &sim.drive_root_id()).expect("outside");
    assert!(sim.move_file(&folder1, &outside));
    let gone = before - sim.files_in_tree().len() as u64;
    assert!(gone >= 20, "Folder 1 and nested Folder 2 hold files: {gone}");

    let out = env.sync(SyncMode::Incremental).await;
    assert_eq!(out.status, RunStatus::Completed, "{out:?}");
    assert_eq!((out.deleted, out.upserted), (gone, 0), "{out:?}");
    assert!(out.note.contains("deleted or moved out"), "{}", out.note);
    assert_sink_matches(&env, &sim);

    assert!(sim.move_file(&folder1, "root-folder"));
    sim.reset_calls();
    let back = env.sync(SyncMode::Incremental).await;
    assert_eq!(back.status, RunStatus::Completed, "{back:?}");
    assert_eq!((back.upserted, back.deleted), (gone, 0), "{back:?}");
    assert_eq!(
        sim.calls().get("GET /drive/v3/files"),
        Some(&2),
        "Folder 1 and the nested Folder 2 are listed, nothing else"
    );
    assert_sink_matches(&env, &sim);
}

/// An expired change token makes the run fall back to a full listing on its
/// own, whether Drive refuses it with 400 `invalid`, 404 or 410 Gone; the run
/// completes, its note says why, and a file deleted while the token was
/// unusable is still removed (held ids missing from the listing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_falls_back_to_full_listing() {
    let (env, sim) = start(
        SimConfig {
            files: 40,
            ..SimConfig::default()
        },
        "",
    )
    .await;
    env.sync(SyncMode::Full).await;
    for (round, status) in [400u16, 404, 410].into_iter().enumerate() {
        let victim = sim.files_in_tree()[7 + round].id.clone();
        assert!(sim.delete_file(&victim));
        sim.set_token_refusal(status);
        sim.expire_all_tokens();
        let run = env.sync(SyncMode::Incremental).await;
        assert_eq!(run.status, RunStatus::Completed, "HTTP {status}: {run:?}");
        assert!(
            run.note.contains("page token") && run.note.contains("fell back to a full listing"),
            "{}",
            run.note
        );
        assert!(run.note.contains(&format!("HTTP {status}")), "{}", run.note);
        assert_eq!(run.deleted, 1, "{run:?}");
        assert!(env.sink_docs().iter().all(|d| d.id.0 != victim));
        assert_sink_matches(&env, &sim);

        // The fresh token from the fallback works: the next run is incremental again.
        sim.reset_calls();
        let next = env.sync(SyncMode::Incremental).await;
        assert_eq!((next.docs_processed, next.api_calls), (0, 1), "{next:?}");
    }
}

/// 403 userRateLimitExceeded and 429 rateLimitExceeded answers (no
/// Retry-After) are retried after the shared backoff inside the run, counted
/// as calls, and the run completes. The backoff starts at 100 ms here instead
/// of the default 1 s, to keep the test short; each throttle waits at least it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_retried() {
    let (env, sim) = start(
        SimConfig {
            files: 20,
            ..SimConfig::default()
        },
        "rate = { backoff_start_ms = 100 }",
    )
    .await;
    env.sync(SyncMode::Full).await;
    let id = sim
        .files_in_tree()
        .into_iter()
        .find(|f| f.mime_type == "text/plain")
        .expect("a text file")
        .id;
    assert!(sim.update_file(&id, None, Some("after the storm")));
    sim.reset_calls();
    sim.fail_next(2, 403);
    let run = env.sync(SyncMode::Incremental).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(
        (run.upserted, run.api_calls),
        (1, 4),
        "2 x 403, changes.list, one download: {run:?}"
    );

    assert!(sim.update_file(&id, None, Some("and again")));
    sim.reset_calls();
    sim.fail_next(3, 429);
    let run = env.sync(SyncMode::Incremental).await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!((run.upserted, run.api_calls), (1, 5), "{run:?}");
    assert_eq!(sim.total_calls(), 5);
    assert_sink_matches(&env, &sim);
}

/// With `drive_id` set, every request carries the shared-drive parameters
/// (`driveId`, `supportsAllDrives`, and for listings `corpora=drive` and
/// `includeItemsFromAllDrives`), and the drive syncs fully and incrementally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_drive_parameters_are_sent() {
    let (env, sim) = start(
        SimConfig {
            files: 25,
            drive_id: Some("0ATeamDrive".into()),
            ..SimConfig::default()
        },
        "drive_id = \"0ATeamDrive\"",
    )
    .await;
    let full = env.sync(SyncMode::Full).await;
    assert_eq!((full.status, full.upserted), (RunStatus::Completed, 25), "{full:?}");
    let id = sim.files_in_tree()[0].id.clone();
    assert!(sim.update_file(&id, Some("Team notes"), None));
    let inc = env.sync(SyncMode::Incremental).await;
    assert_eq!(inc.upserted, 1, "{inc:?}");
    assert_sink_matches(&env, &sim);
    let requests = sim.requests();
    assert!(requests.len() > 25);
    for r in requests {
        let p = &r.params;
        let get = |k: &str| p.get(k).map(String::as_str);
        match r.label.as_str() {
            "GET /drive/v3/files" => {
                assert_eq!(
                    (
                        get("corpora"),
                        get("driveId"),
                        get("includeItemsFromAllDrives"),
                        get("supportsAllDrives")
                    ),
                    (Some("drive"), Some("0ATeamDrive"), Some("true"), Some("true")),
                    "{r:?}"
                );
            }
            "GET /drive/v3/changes" | "GET /drive/v3/changes/startPageToken" => {
                assert_eq!(
                    (get("driveId"), get("supportsAllDrives")),
                    (Some("0ATeamDrive"), Some("true")),
                    "{r:?}"
                );
            }
            "GET /drive/v3/files/{id}" => assert_eq!(get("supportsAllDrives"), Some("true"), "{r:?}"),
            _ => {}
        }
    }
}

/// A shortcut is a document too: Drive gives it no content, so it is kept with
/// its metadata and a note saying why, never skipped without a trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shortcuts_are_documents_without_text() {
    use tidemark::simulators::gdrive::SHORTCUT_MIME;
    let (env, sim) = start(
        SimConfig {
            files: 6,
            shortcuts: 1,
            ..SimConfig::default()
        },
        "",
    )
    .await;
    let full = env.sync(SyncMode::Full).await;
    assert_eq!((full.status, full.upserted), (RunStatus::Completed, 7), "{full:?}");
    let docs = env.sink_docs();
    let doc = docs
        .iter()
        .find(|d| d.about.mime_type.as_deref() == Some(SHORTCUT_MIME))
        .expect("the seeded shortcut is a document");
    assert_eq!(doc.content, "");
    assert!(
        doc.about
            .content_note
            .as_deref()
            .is_some_and(|n| n.contains("shortcut")),
        "{doc:?}"
    );
    assert!(doc.about.url.is_some(), "{doc:?}");
    assert!(!full.note.contains("skipped"), "{full:?}");
    assert_sink_matches(&env, &sim);
}

/// The synced folder itself trashed: the feed is a complete listing of
/// nothing, so every document we hold is swept, not named one by one (Drive
/// keeps no map of documents). The deletion guard holds the wipe back until a
/// request confirms it; then the sink is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trashed_synced_folder_is_swept_under_the_guard() {
    let (env, sim) = start(
        SimConfig {
            files: 12,
            ..SimConfig::default()
        },
        "",
    )
    .await;
    env.sync(SyncMode::Full).await;
    let held = env.sink_docs().len();
    assert!(held >= 12, "{held}");
    assert!(sim.trash_file("root-folder"));

    let refused = env.sync(SyncMode::Incremental).await;
    assert_eq!(refused.deleted, 0, "{refused:?}");
    assert!(
        refused
            .last_error
            .contains(&format!("deletion guard: {held} of {held}")),
        "{refused:?}"
    );
    assert_eq!(env.sink_docs().len(), held, "nothing deleted unconfirmed");

    let mut confirmed = SyncRequest::new(env.source.clone(), SyncMode::Incremental, "test");
    confirmed.allow_mass_delete = true;
    queue::enqueue(&env.app.pool, &env.app.keys, &confirmed)
        .await
        .expect("enqueue");
    let run = env.wait(&confirmed.request_id).await;
    assert_eq!(
        (run.status, run.deleted),
        (RunStatus::Completed, held as u64),
        "{run:?}"
    );
    assert!(run.note.contains("trashed or deleted"), "{}", run.note);
    assert!(env.sink_docs().is_empty());
}

/// Sharing a file with a user, then unsharing it, reaches the sink's readers
/// within one incremental sync each, as a change of permissions alone: the
/// changes list (Drive bumps the file's `version` for it, not its
/// `modifiedTime`) and, in a shared drive, whose files come without their
/// `permissions`, one `permissions.list`; nothing is downloaded or exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_shared_and_unshared_changes_only_its_readers() {
    use tidemark::simulators::gdrive::SimPermission;

    for shared_drive in [false, true] {
        let drive_id = shared_drive.then(|| "0ATeamDrive".to_owned());
        let extra = if shared_drive { "drive_id = \"0ATeamDrive\"" } else { "" };
        let (env, sim) = start(
            SimConfig {
                files: 12,
                drive_id,
                ..SimConfig::default()
            },
            extra,
        )
        .await;
        let full = env.sync(SyncMode::Full).await;
        assert_eq!(full.status, RunStatus::Completed, "{full:?}");
        assert_contract(&env, &sim);
        let file = sim.files_in_tree()[3].clone();
        let readers_of = |env: &Env| {
            env.sink_docs()
                .into_iter()
                .find(|d| d.id.0 == file.id)
                .map(|d| d.permissions.readers)
                .expect("in the sink")
        };
        let version_before = env
            .sink_docs()
            .into_iter()
            .find(|d| d.id.0 == file.id)
            .map(|d| d.version);
        // One permissions.list per file of a shared drive; none in My Drive.
        let per_file = u64::from(shared_drive);

        let bob = sim
            .share(&file.id, SimPermission::user("bob@example.com", "reader"))
            .expect("share");
        let inc = env.sync(SyncMode::Incremental).await;
        assert_eq!(
            (inc.status, inc.permissions_updated, inc.upserted, inc.api_calls),
            (RunStatus::Completed, 1, 0, 1 + per_file),
            "shared drive {shared_drive}: {inc:?}"
        );
        assert!(readers_of(&env).contains(&"user:bob@example.com".to_owned()));
        assert_eq!(readers_of(&env), expected_readers(&sim, &file));

        sim.unshare(&file.id, &bob.id).expect("unshare");
        let inc = env.sync(SyncMode::Incremental).await;
        assert_eq!(
            (inc.permissions_updated, inc.upserted, inc.api_calls),
            (1, 0, 1 + per_file),
            "shared drive {shared_drive}: {inc:?}"
        );
        assert!(!readers_of(&env).contains(&"user:bob@example.com".to_owned()));
        assert_eq!(readers_of(&env), expected_readers(&sim, &file));
        let version_after = env
            .sink_docs()
            .into_iter()
            .find(|d| d.id.0 == file.id)
            .map(|d| d.version);
        assert_eq!(version_before, version_after, "the content's version did not move");
        assert_sink_matches(&env, &sim);
    }
}
