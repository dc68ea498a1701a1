//! Which sinks each source feeds (`[[sinks]]`, `sources.sinks`): one sink, or
//! a [`Fanout`] that writes every change to several.
//!
//! Invariants of a fan-out:
//! - A run's token is registered with every sink before any page job exists.
//! - A page reaches the sinks one after the other, in the order configured; a
//!   sink that refuses the token, is unavailable or refuses the page stops the
//!   page there, and the page's retry (or the next run) writes it again to all
//!   of them: every sink's writes are idempotent, so the ones that already
//!   took it answer `Unchanged`.
//! - A change fails for the page if it fails in any sink; it is `Changed` if
//!   any sink changed.
//! - Documents are read back from the first sink that keeps them; if none
//!   does (webhooks only), refreshes are fetched from the source again.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::{Applied, Change, Error, Sink, SinkDocument, Written};
use crate::types::{DocumentId, FencingToken, SourceId};

/// A sink by its configured name.
pub type Named = (String, Arc<dyn Sink>);

/// Several sinks fed as one.
pub struct Fanout {
    sinks: Vec<Named>,
}

impl Fanout {
    /// Feeds `sinks`, in this order.
    pub fn new(sinks: Vec<Named>) -> Self {
        Self { sinks }
    }

    fn reader(&self) -> Option<&Arc<dyn Sink>> {
        self.sinks.iter().map(|(_, s)| s).find(|s| s.reads_back())
    }
}

/// Combines one change's results over the sinks: the first failure, else
/// `Changed` if any sink changed.
fn combine(results: Vec<Result<Written, Error>>) -> Result<Written, Error> {
    let mut written = Written::Unchanged;
    for r in results {
        if r? == Written::Changed {
            written = Written::Changed;
        }
    }
    Ok(written)
}

#[async_trait]
impl Sink for Fanout {
    async fn register_token(&self, source: &SourceId, token: FencingToken) -> Result<(), Error> {
        for (_, sink) in &self.sinks {
            sink.register_token(source, token).await?;
        }
        Ok(())
    }

    async fn apply(&self, source: &SourceId, token: FencingToken, changes: &[Change<'_>]) -> Result<Applied, Error> {
        let mut per_change: Vec<Vec<Result<Written, Error>>> = changes.iter().map(|_| Vec::new()).collect();
        for (_, sink) in &self.sinks {
            for (i, result) in sink.apply(source, token, changes).await?.into_iter().enumerate() {
                if let Some(slot) = per_change.get_mut(i) {
                    slot.push(result);
                }
            }
        }
        Ok(per_change.into_iter().map(combine).collect())
    }

    async fn upsert(&self, doc: &SinkDocument) -> Result<Written, Error> {
        let applied = self.apply(&doc.source, doc.fencing_token, &[Change::Put(doc)]).await?;
        applied.into_iter().next().unwrap_or(Ok(Written::Unchanged))
    }

    async fn delete(&self, source: &SourceId, id: &DocumentId, token: FencingToken) -> Result<Written, Error> {
        let applied = self.apply(source, token, &[Change::Delete(id)]).await?;
        applied.into_iter().next().unwrap_or(Ok(Written::Unchanged))
    }

    async fn get(&self, source: &SourceId, id: &DocumentId) -> Result<Option<SinkDocument>, Error> {
        match self.reader() {
            Some(sink) => sink.get(source, id).await,
            None => Ok(None),
        }
    }

    fn reads_back(&self) -> bool {
        self.reader().is_some()
    }

    /// The first sink's; `tidemark verify` checks each sink on its own ([`Routes::each`]).
    async fn versions(&self, source: &SourceId) -> Result<HashMap<DocumentId, String>, Error> {
        match self.sinks.first() {
            Some((_, sink)) => sink.versions(source).await,
            None => Ok(HashMap::new()),
        }
    }

    async fn search(&self, query: &super::search::Query) -> Result<Option<Vec<super::search::Hit>>, Error> {
        for (_, sink) in &self.sinks {
            if let Some(hits) = sink.search(query).await? {
                return Ok(Some(hits));
            }
        }
        Ok(None)
    }
}

/// The sink (or fan-out) of every configured source.
#[derive(Clone, Default)]
pub struct Routes {
    fed: HashMap<SourceId, Arc<dyn Sink>>,
    each: HashMap<SourceId, Vec<Named>>,
}

impl Routes {
    /// Routes each source to the sinks it names, out of `sinks` (by name);
    /// unknown names are skipped (the config check refuses them first).
    pub fn new<'a>(
        sinks: &HashMap<String, Arc<dyn Sink>>,
        sources: impl IntoIterator<Item = (SourceId, &'a [String])>,
    ) -> Self {
        let mut routes = Routes::default();
        for (source, names) in sources {
            let chosen: Vec<Named> = names
                .iter()
                .filter_map(|n| sinks.get(n).map(|s| (n.clone(), Arc::clone(s))))
                .collect();
            let fed: Arc<dyn Sink> = match chosen.as_slice() {
                [(_, only)] => Arc::clone(only),
                _ => Arc::new(Fanout::new(chosen.clone())),
            };
            routes.fed.insert(source.clone(), fed);
            routes.each.insert(source, chosen);
        }
        routes
    }

    /// Every source in `sources` feeds `sink` alone (named `default`): for
    /// tests that put a wrapper around the configured sink.
    pub fn everywhere(sink: Arc<dyn Sink>, sources: impl IntoIterator<Item = SourceId>) -> Self {
        let mut routes = Routes::default();
        for source in sources {
            routes.fed.insert(source.clone(), Arc::clone(&sink));
            routes.each.insert(source, vec![("default".into(), Arc::clone(&sink))]);
        }
        routes
    }

    /// What `source` feeds, as one sink.
    pub fn sink(&self, source: &SourceId) -> Option<Arc<dyn Sink>> {
        self.fed.get(source).cloned()
    }

    /// Each sink `source` feeds, by name, in order.
    pub fn each(&self, source: &SourceId) -> &[Named] {
        self.each.get(source).map(Vec::as_slice).unwrap_or_default()
    }
}
