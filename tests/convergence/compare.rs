//! What is compared and how a difference is reported: a `Doc` (what a source
//! says a document should be, or what the sink holds), `sink_docs` (reads
//! what the sink holds for a source), and the compact per-source `diff`
//! printed when the sink and a source disagree.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use tidemark::sinks::directory::DirectorySink;
use tidemark::types::SourceId;

/// A document as compared: what the source says it should be, or what the sink holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    pub version: String,
    pub title: String,
    pub parent: Option<String>,
    pub breadcrumb: Vec<String>,
    /// Compared by its words (`harness::words`).
    pub content: String,
    pub links: Vec<(String, Option<String>)>,
    /// Who may read it: readers, then each further list (`permissions`).
    pub readers: Vec<Vec<String>>,
}

pub use crate::harness::readers_of;

pub type Docs = BTreeMap<String, Doc>;

fn short(s: &str) -> String {
    let flat = s.replace('\n', "\\n");
    if flat.chars().count() > 90 {
        format!("{}…", flat.chars().take(90).collect::<String>())
    } else {
        flat
    }
}

/// A compact diff of one source; empty when equal.
pub fn diff(source: &str, expected: &Docs, got: &Docs) -> String {
    let mut out = String::new();
    for (id, e) in expected {
        match got.get(id) {
            None => {
                let _ = writeln!(
                    out,
                    "  [{source}] missing from sink: {id} (v {:?}, {:?})",
                    e.version, e.title
                );
            }
            Some(g) if g != e => {
                let _ = writeln!(out, "  [{source}] differs: {id}");
                let mut field = |name: &str, want: String, have: String| {
                    if want != have {
                        let _ = writeln!(
                            out,
                            "      {name}: expected {}\n      {:>w$}  got {}",
                            want,
                            "",
                            have,
                            w = name.len()
                        );
                    }
                };
                field("version", short(&e.version), short(&g.version));
                field("title", format!("{:?}", e.title), format!("{:?}", g.title));
                field("parent", format!("{:?}", e.parent), format!("{:?}", g.parent));
                field(
                    "breadcrumb",
                    format!("{:?}", e.breadcrumb),
                    format!("{:?}", g.breadcrumb),
                );
                field("content", short(&e.content), short(&g.content));
                field("links", format!("{:?}", e.links), format!("{:?}", g.links));
                field("readers", format!("{:?}", e.readers), format!("{:?}", g.readers));
            }
            Some(_) => {}
        }
    }
    for (id, g) in got {
        if !expected.contains_key(id) {
            let _ = writeln!(
                out,
                "  [{source}] not in source: {id} (v {:?}, {:?})",
                g.version, g.title
            );
        }
    }
    out
}

/// What the sink holds for `source`, as compared.
pub fn sink_docs(sink_dir: &Path, source: &SourceId) -> Docs {
    DirectorySink::new(sink_dir)
        .read_all(source)
        .expect("sink readable")
        .into_iter()
        .map(|d| {
            (
                d.id.0,
                Doc {
                    version: d.version,
                    title: d.title,
                    parent: d.parent.map(|p| p.0),
                    breadcrumb: d.breadcrumb,
                    content: crate::harness::words(&d.content),
                    links: d.links.into_iter().map(|l| (l.target.0, l.title)).collect(),
                    readers: readers_of(&d.permissions),
                },
            )
        })
        .collect()
}
