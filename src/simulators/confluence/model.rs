//! The simulated Confluence space: its pages (a tree under the space root),
//! their versions, the source clock, the seeded start and every mutation.
//!
//! Invariants:
//! - Page ids are increasing numbers handed out from [`FIRST_ID`], never reused;
//!   `pages` is ordered by id, which is the order every listing serves.
//! - A page's `parent`, when set, names an existing page: creating under an
//!   unknown parent puts the page at the root, and deleting a page purges it
//!   (no trash) and moves its children up to its parent, as Confluence does.
//! - Every time comes from the source clock (real UTC + `skew`) at the
//!   millisecond precision Confluence stores and serves; an edit bumps
//!   `version` by one and stamps `modified_at`.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::SimConfig;
use crate::simulators::seed::splitmix;
use crate::simulators::traffic::Traffic;

/// The first page id handed out.
pub(super) const FIRST_ID: u64 = 100_001;

/// A page as the simulator holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimPage {
    /// Numeric id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Parent page id; `None` at the space root.
    pub parent_id: Option<String>,
    /// `version.number`.
    pub version: u64,
    /// Storage-format body.
    pub body: String,
    /// `version.createdAt`, source clock.
    pub modified_at: DateTime<Utc>,
}

pub(super) struct Page {
    pub(super) title: String,
    pub(super) parent: Option<u64>,
    pub(super) version: u64,
    pub(super) body: String,
    pub(super) created_at: DateTime<Utc>,
    pub(super) modified_at: DateTime<Utc>,
}

pub(super) struct SimState {
    pub(super) space_key: String,
    pub(super) space_id: String,
    pub(super) tz: Tz,
    pub(super) skew: chrono::Duration,
    pub(super) space_created: DateTime<Utc>,
    pub(super) pages: BTreeMap<u64, Page>,
    pub(super) next_id: u64,
    pub(super) traffic: Traffic,
}

impl SimState {
    /// `cfg.pages` seeded pages: titles `Page 0001`..., a deterministic tree
    /// (about a third at the root), modified over the last 30 days.
    pub(super) fn seeded(cfg: SimConfig) -> Self {
        let now = (Utc::now() + cfg.clock_skew).trunc_subsecs(3);
        let start = now - chrono::Duration::days(30);
        let span_secs: i64 = 29 * 24 * 3600;
        let n = i64::try_from(cfg.pages.max(1)).unwrap_or(i64::MAX);
        let mut rng = cfg.seed;
        let mut pages = BTreeMap::new();
        for i in 0..cfg.pages {
            let id = FIRST_ID + i as u64;
            let parent = if i == 0 || splitmix(&mut rng).is_multiple_of(3) {
                None
            } else {
                Some(FIRST_ID + splitmix(&mut rng) % i as u64)
            };
            let offset = i64::try_from(i).unwrap_or(0).saturating_mul(span_secs) / n;
            let modified = start + chrono::Duration::seconds(offset);
            pages.insert(
                id,
                Page {
                    title: format!("Page {:04}", i + 1),
                    parent,
                    version: 1 + splitmix(&mut rng) % 3,
                    body: format!(
                        "<p>Seeded page {} of space {}.</p><p>Token {:016x}.</p>",
                        i + 1,
                        cfg.space_key,
                        splitmix(&mut rng)
                    ),
                    created_at: modified,
                    modified_at: modified,
                },
            );
        }
        SimState {
            space_key: cfg.space_key,
            space_id: cfg.space_id,
            tz: cfg.user_timezone,
            skew: cfg.clock_skew,
            space_created: start,
            next_id: FIRST_ID + cfg.pages as u64,
            pages,
            traffic: Traffic::new(cfg.rate_limit_per_sec),
        }
    }

    /// The source clock, at the millisecond precision Confluence stores and serves.
    pub(super) fn now(&self) -> DateTime<Utc> {
        (Utc::now() + self.skew).trunc_subsecs(3)
    }

    /// Ancestors from the root down to the direct parent (bounded against cycles).
    pub(super) fn ancestors(&self, id: u64) -> Vec<u64> {
        let mut chain = Vec::new();
        let mut cur = self.pages.get(&id).and_then(|p| p.parent);
        while let Some(pid) = cur {
            if chain.len() > self.pages.len() {
                break;
            }
            chain.push(pid);
            cur = self.pages.get(&pid).and_then(|p| p.parent);
        }
        chain.reverse();
        chain
    }

    /// Creates a page (version 1, stamped now); an unknown `parent` means the root.
    pub(super) fn create_page(&mut self, title: &str, parent: Option<&str>, body: &str) -> String {
        let parent = parent
            .and_then(|p| p.parse::<u64>().ok())
            .filter(|p| self.pages.contains_key(p));
        let id = self.next_id;
        self.next_id += 1;
        let now = self.now();
        self.pages.insert(
            id,
            Page {
                title: title.to_owned(),
                parent,
                version: 1,
                body: body.to_owned(),
                created_at: now,
                modified_at: now,
            },
        );
        id.to_string()
    }

    /// Edits a page: bumps `version`, stamps `modified_at`. `false` if there is no such page.
    pub(super) fn update_page(&mut self, id: &str, title: Option<&str>, body: Option<&str>) -> bool {
        let now = self.now();
        let Some(page) = id.parse::<u64>().ok().and_then(|id| self.pages.get_mut(&id)) else {
            return false;
        };
        if let Some(t) = title {
            page.title = t.to_owned();
        }
        if let Some(b) = body {
            page.body = b.to_owned();
        }
        page.version += 1;
        page.modified_at = now;
        true
    }

    /// Purges a page; its children move up to its parent. `false` if there is no such page.
    pub(super) fn delete_page(&mut self, id: &str) -> bool {
        let Some(id) = id.parse::<u64>().ok() else {
            return false;
        };
        let Some(gone) = self.pages.remove(&id) else {
            return false;
        };
        for page in self.pages.values_mut() {
            if page.parent == Some(id) {
                page.parent = gone.parent;
            }
        }
        true
    }

    /// Every page, sorted by id.
    pub(super) fn snapshot(&self) -> Vec<SimPage> {
        self.pages.iter().map(|(id, p)| sim_page(*id, p)).collect()
    }
}

fn sim_page(id: u64, p: &Page) -> SimPage {
    SimPage {
        id: id.to_string(),
        title: p.title.clone(),
        parent_id: p.parent.map(|p| p.to_string()),
        version: p.version,
        body: p.body.clone(),
        modified_at: p.modified_at,
    }
}
