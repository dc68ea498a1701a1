//! The retrieval side of a sink, as small as a test or an operator needs it:
//! documents of a source that match some words *and that a given reader may
//! read* (`tidemark query SOURCE "words" --as user:alice@example.com`).
//!
//! Invariant: a document is returned only if [`Permissions::may_read`] holds
//! for the reader's principals; a sink filters before it ranks, so a
//! restricted document never shows, not even as a count.
//!
//! [`Permissions::may_read`]: crate::permissions::Permissions::may_read

use serde::Serialize;

use super::SinkDocument;
use crate::types::{DocumentId, SourceId};

/// What to look for, and for whom.
#[derive(Debug, Clone)]
pub struct Query {
    /// The source searched.
    pub source: SourceId,
    /// Words, all of which a document must contain (empty: every document the reader may read).
    pub words: String,
    /// The reader's principals, normalized, `anyone` included
    /// ([`crate::permissions::reader_principals`]).
    pub principals: Vec<String>,
    /// At most this many hits.
    pub limit: usize,
}

/// One document found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// Its id.
    pub id: DocumentId,
    /// Its title.
    pub title: String,
    /// Where it lives, root first.
    pub breadcrumb: Vec<String>,
    /// The link to cite.
    pub url: Option<String>,
    /// Higher is better; comparable within one answer only.
    pub rank: f32,
}

impl Hit {
    /// A hit for `doc` ranked `rank`.
    pub fn of(doc: &SinkDocument, rank: f32) -> Self {
        Self {
            id: doc.id.clone(),
            title: doc.title.clone(),
            breadcrumb: doc.breadcrumb.clone(),
            url: doc.about.url.clone(),
            rank,
        }
    }
}

/// The plain search of a sink that has no index (the directory sink): every
/// word must occur in the title or the text, case-insensitively; the rank is
/// the number of occurrences, a title's counting thrice.
pub fn rank_plainly(doc: &SinkDocument, words: &str) -> Option<f32> {
    let title = doc.title.to_lowercase();
    let content = doc.content.to_lowercase();
    let mut rank = 0usize;
    for word in words.split_whitespace().map(str::to_lowercase) {
        let n = 3 * title.matches(word.as_str()).count() + content.matches(word.as_str()).count();
        if n == 0 {
            return None;
        }
        rank += n;
    }
    Some(rank as f32)
}

/// Hits of `docs` for `query`: those the reader may read and that match, best first.
pub fn search_plainly(docs: impl IntoIterator<Item = SinkDocument>, query: &Query) -> Vec<Hit> {
    let mut hits: Vec<Hit> = docs
        .into_iter()
        .filter(|d| d.permissions.may_read(&query.principals))
        .filter_map(|d| rank_plainly(&d, &query.words).map(|r| Hit::of(&d, r)))
        .collect();
    hits.sort_by(|a, b| b.rank.total_cmp(&a.rank).then_with(|| a.id.cmp(&b.id)));
    hits.truncate(query.limit);
    hits
}
