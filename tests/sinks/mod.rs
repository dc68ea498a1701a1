//! The sink contract, tested once for every sink (issue 10): each sink runs
//! [`conformance::check`] against a fresh instance of itself.
//!
//! A sink killed between two writes, with the next run converging, is an
//! end-to-end property: `failover::sink_write_without_state_write_is_redone_after_takeover`
//! shows it for the directory sink.

pub mod conformance;

use std::sync::Arc;

use tidemark::sinks::directory::DirectorySink;

/// The directory sink (one JSON file per document) keeps the contract.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_sink_conforms() {
    let dir = tempfile::tempdir().expect("tempdir");
    conformance::check("directory", Arc::new(DirectorySink::new(dir.path()))).await;
}
