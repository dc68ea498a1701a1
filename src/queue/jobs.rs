//! What travels on the streams, and its envelope.
//!
//! An entry has plain-text routing fields (`v`, `source`, `run`, `page`) beside
//! a MessagePack `body`. The routing fields are readable even when the body is
//! not, so a poison job can still be charged to its run when it is dead-lettered.
//! Bodies are encoded with field names (`to_vec_named`) so that adding an
//! optional field later does not break older readers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Error;
use super::streams::Entry;
use crate::sources::DocMeta;
use crate::types::{FencingToken, RunId, SourceId, SyncMode};

/// Envelope schema version; an entry with another version is refused by name.
pub const SCHEMA_VERSION: &str = "1";

/// A request to sync one source, from the CLI, the HTTP API, a schedule or a webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// Unique id, so the requester can find the run that served it.
    pub request_id: String,
    /// Which source.
    pub source: SourceId,
    /// Incremental or full.
    pub mode: SyncMode,
    /// Who asked: `cli`, `api`, `schedule`, `webhook`, `follow-up`.
    pub requested_by: String,
    /// When.
    pub requested_at: DateTime<Utc>,
    /// Ids of earlier requests coalesced into this one (a follow-up run serves them all).
    #[serde(default)]
    pub coalesced: Vec<String>,
    /// The operator confirms this run may delete more than the source's
    /// `max_delete_share` (the deletion guard).
    #[serde(default)]
    pub allow_mass_delete: bool,
    /// Sync only these documents (from a webhook naming them): no feed is read
    /// and the checkpoint does not move. Empty means the whole source.
    #[serde(default)]
    pub targets: Vec<crate::types::DocumentId>,
}

impl SyncRequest {
    /// A new request with a fresh id.
    pub fn new(source: SourceId, mode: SyncMode, requested_by: impl Into<String>) -> Self {
        Self {
            request_id: uuid::Uuid::new_v4().to_string(),
            source,
            mode,
            requested_by: requested_by.into(),
            requested_at: Utc::now(),
            coalesced: Vec::new(),
            allow_mass_delete: false,
            targets: Vec::new(),
        }
    }
}

/// What to do with one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Fetch and write it (skipped if version and content are unchanged).
    Upsert,
    /// Remove it from the sink and the state.
    Delete,
    /// Rewrite what depends on other documents (breadcrumb, link titles) from
    /// the sink's copy, without fetching content from the source.
    Refresh,
}

/// One document of a page job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobItem {
    /// Metadata as the feed reported it.
    pub meta: DocMeta,
    /// What to do.
    pub action: Action,
    /// Titles of the ancestors, root first, as known when the job was made.
    pub breadcrumb: Vec<String>,
}

/// A page of work: up to `page_size` documents of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageJob {
    /// The run.
    pub run: RunId,
    /// The source.
    pub source: SourceId,
    /// The run's fencing token; every write of this job carries it.
    pub token: FencingToken,
    /// Page number within the run, from 0.
    pub page: u32,
    /// The documents.
    pub items: Vec<JobItem>,
}

/// Routing fields readable without decoding the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routing {
    /// `source` field, if valid.
    pub source: Option<SourceId>,
    /// `run` field.
    pub run: Option<RunId>,
    /// `page` field.
    pub page: Option<u32>,
}

fn encode_body<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing plain structs of strings and numbers to a Vec cannot fail.
    rmp_serde::to_vec_named(value).expect("MessagePack encoding of an in-memory struct")
}

fn decode_body<T: for<'de> Deserialize<'de>>(entry: &Entry) -> Result<T, Error> {
    let bad = |reason: String| Error::Decode {
        entry_id: entry.id.clone(),
        reason,
    };
    match entry.text("v") {
        Some(SCHEMA_VERSION) => {}
        Some(v) => {
            return Err(bad(format!(
                "schema version {v:?} is not supported (expected {SCHEMA_VERSION})"
            )));
        }
        None => return Err(bad("no schema version field `v`".into())),
    }
    let body = entry.fields.get("body").ok_or_else(|| bad("no `body` field".into()))?;
    rmp_serde::from_slice(body).map_err(|e| bad(format!("body is not a valid MessagePack message: {e}")))
}

impl SyncRequest {
    /// Stream fields for XADD.
    pub fn to_fields(&self) -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("v", SCHEMA_VERSION.as_bytes().to_vec()),
            ("source", self.source.as_str().as_bytes().to_vec()),
            ("body", encode_body(self)),
        ]
    }

    /// Every request id this request stands for.
    pub fn all_request_ids(&self) -> Vec<String> {
        std::iter::once(self.request_id.clone())
            .chain(self.coalesced.iter().cloned())
            .collect()
    }

    /// Decodes a requests-stream entry.
    pub fn from_entry(entry: &Entry) -> Result<Self, Error> {
        decode_body(entry)
    }
}

impl PageJob {
    /// Stream fields for XADD.
    pub fn to_fields(&self) -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("v", SCHEMA_VERSION.as_bytes().to_vec()),
            ("source", self.source.as_str().as_bytes().to_vec()),
            ("run", self.run.0.as_bytes().to_vec()),
            ("page", self.page.to_string().into_bytes()),
            ("body", encode_body(self)),
        ]
    }

    /// Decodes a jobs-stream entry.
    pub fn from_entry(entry: &Entry) -> Result<Self, Error> {
        decode_body(entry)
    }
}

/// Reads the routing fields of any entry, tolerating garbage.
pub fn routing(entry: &Entry) -> Routing {
    Routing {
        source: entry.text("source").and_then(|s| SourceId::new(s).ok()),
        run: entry.text("run").map(|r| RunId(r.to_owned())),
        page: entry.text("page").and_then(|p| p.parse().ok()),
    }
}

/// Borrows owned fields as the `(&str, &[u8])` pairs `streams::add` takes.
pub fn as_field_refs<'a>(fields: &'a [(&'static str, Vec<u8>)]) -> Vec<(&'a str, &'a [u8])> {
    fields.iter().map(|(k, v)| (*k, v.as_slice())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::DocumentId;

    fn entry(fields: Vec<(&'static str, Vec<u8>)>) -> Entry {
        Entry {
            id: "1-0".into(),
            fields: fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }
    }

    /// A page job survives the envelope unchanged, and its routing is readable.
    #[test]
    fn page_job_round_trip() {
        let job = PageJob {
            run: RunId("r".into()),
            source: SourceId::new("eng").unwrap(),
            token: FencingToken(7),
            page: 3,
            items: vec![JobItem {
                meta: DocMeta {
                    id: DocumentId("42".into()),
                    version: "3".into(),
                    title: "T".into(),
                    parent: None,
                    modified_at: None,
                    ..DocMeta::default()
                },
                action: Action::Upsert,
                breadcrumb: vec!["Root".into()],
            }],
        };
        let e = entry(job.to_fields());
        assert_eq!(PageJob::from_entry(&e).unwrap(), job);
        let r = routing(&e);
        assert_eq!(r.page, Some(3));
        assert_eq!(r.run, Some(RunId("r".into())));
    }

    /// Garbage, a missing body and an unknown schema version each get a reason naming the problem.
    #[test]
    fn bad_entries_name_their_problem() {
        let garbage = entry(vec![("v", b"1".to_vec()), ("body", b"\xc1\xff not msgpack".to_vec())]);
        let err = PageJob::from_entry(&garbage).unwrap_err().to_string();
        assert!(err.contains("MessagePack"), "{err}");
        let no_body = entry(vec![("v", b"1".to_vec())]);
        assert!(PageJob::from_entry(&no_body).unwrap_err().to_string().contains("body"));
        let future = entry(vec![("v", b"9".to_vec()), ("body", vec![])]);
        assert!(PageJob::from_entry(&future).unwrap_err().to_string().contains("\"9\""));
    }
}
