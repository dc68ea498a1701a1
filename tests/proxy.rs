//! API roots with a path: Drive and Confluence reached through a real nginx
//! reverse proxy that serves them under a path prefix (as an API gateway or a
//! corporate proxy does). The connectors keep the prefix on every request,
//! pagination links included, and sync exactly as they do direct.

use tidemark::simulators::confluence::{ConfluenceSim, SimConfig as ConfluenceConfig};
use tidemark::simulators::gdrive::{GdriveSim, SimConfig as DriveConfig};
use tidemark::state::RunStatus;
use tidemark::types::SyncMode;

use crate::harness::nginx::Nginx;
use crate::harness::{Env, Options};

/// nginx passing `/{prefix}/...` to `upstream` with the prefix stripped.
fn proxy(routes: &[(&str, std::net::SocketAddr)]) -> Nginx {
    let locations: String = routes
        .iter()
        .map(|(prefix, upstream)| format!("location /{prefix}/ {{ proxy_pass http://{upstream}/; }}\n"))
        .collect();
    Nginx::start_with(&locations)
}

/// Drive through `/google/drive/v3` (the Drive root itself) and through
/// `/gateway` (a prefix under which `drive/v3/...` is requested): full and
/// incremental runs see every file, and every request reached the simulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drive_behind_a_path_prefix() {
    let sim = GdriveSim::new(DriveConfig {
        files: 24,
        ..DriveConfig::default()
    });
    let (addr, _task) = sim.serve("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
    let nginx = proxy(&[("google", addr), ("gateway", addr)]);
    for base in [nginx.url("/google/drive/v3"), nginx.url("/gateway")] {
        let env = crate::gdrive::drive_env(&base, "").await;
        sim.reset_calls();
        let full = env.sync(SyncMode::Full).await;
        assert_eq!(full.status, RunStatus::Completed, "{base}: {full:?}");
        assert_eq!(full.upserted, 24, "{base}: {full:?}");
        assert_eq!(
            full.api_calls,
            sim.total_calls(),
            "{base}: every call went through the proxy"
        );
        let id = sim
            .files_in_tree()
            .into_iter()
            .find(|f| f.mime_type == "text/plain")
            .expect("text")
            .id;
        // New text each time round: the same bytes again would be the same
        // content version (its sha256Checksum), rightly nothing to fetch.
        let text = format!("through the proxy at {base}");
        assert!(sim.update_file(&id, None, Some(&text)));
        let inc = env.sync(SyncMode::Incremental).await;
        assert_eq!((inc.status, inc.upserted), (RunStatus::Completed, 1), "{base}: {inc:?}");
        assert!(env.sink_docs().iter().any(|d| d.id.0 == id && d.content == text));
    }
}

/// Confluence through `/confluence`: the v2 listing's `_links.next` paths
/// (`/wiki/api/v2/...`, host-absolute, as Confluence sends them) are followed
/// under the prefix, so a space of several listing pages syncs whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluence_behind_a_path_prefix() {
    let sim = ConfluenceSim::new(ConfluenceConfig {
        pages: 30,
        ..ConfluenceConfig::default()
    });
    let (addr, _task) = sim.serve("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
    let nginx = proxy(&[("confluence", addr)]);
    let env = Env::start(Options {
        pages: 0,
        source_toml: Some(format!(
            "[[sources]]\nid = \"eng\"\nkind = \"confluence\"\n[sources.settings]\nbase_url = \"{}\"\nspace_key = \"{}\"\npage_limit = 7\n",
            nginx.url("/confluence"),
            ConfluenceConfig::default().space_key
        )),
        ..Options::default()
    })
    .await;
    env.coordinator("c1");
    env.worker("w1");
    let full = env.sync(SyncMode::Full).await;
    assert_eq!(full.status, RunStatus::Completed, "{full:?}");
    assert_eq!(full.upserted, 30, "{full:?}");
    assert_eq!(full.api_calls, sim.total_calls(), "every call went through the proxy");
    assert!(
        sim.calls().keys().all(|label| label.contains("/wiki/")),
        "{:?}",
        sim.calls()
    );
}
