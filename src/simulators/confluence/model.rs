//! The simulated Confluence space: its pages (a tree under the space root),
//! their versions, the source clock, the seeded start and every mutation.
//!
//! Invariants:
//! - Page ids are increasing numbers handed out from [`FIRST_ID`], never reused;
//!   `pages` is ordered by id, which is the order every listing serves.
//! - A page's `parent`, when set, names an existing current page: creating
//!   under an unknown parent puts the page at the root, and deleting a page
//!   moves it to the space's trash (status `trashed`, version unchanged) and its
//!   children up to its parent, as Confluence's "delete page" does. Purging
//!   removes a trashed page for good; restoring makes it current again, still
//!   with the same version. (A trashed page's own `parent` is kept, so it may
//!   name a page that has since gone.)
//! - Every time comes from the source clock (real UTC + `skew`) at the
//!   millisecond precision Confluence stores and serves; an edit bumps
//!   `version` by one and stamps `modified_at`.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use super::SimConfig;
use super::attachments::{Attachment, attachment};
use super::restrictions::SimRestriction;
use super::space_permissions::{self, SimSpacePermission};
use crate::simulators::files::{self, Stored};
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

/// A page's `status`, as v2 reports it and as its `status` filter selects it
/// (v2 "Get pages in space": valid values current, archived, deleted,
/// trashed; "by default, current and archived are used"; v2 "Delete page":
/// deleting moves a page to the trash, `purge=true` on a trashed page removes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PageStatus {
    /// Live: listed, searched and fetched by default.
    Current,
    /// In the space's trash: only `status=trashed` lists or fetches it.
    Trashed,
}

impl PageStatus {
    /// The wire name.
    pub(super) fn name(self) -> &'static str {
        match self {
            PageStatus::Current => "current",
            PageStatus::Trashed => "trashed",
        }
    }
}

pub(super) struct Page {
    pub(super) status: PageStatus,
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
    /// The pages each seeded page links to by id (URL and `ri:content-id` forms), as seeded.
    pub(super) seeded_links: BTreeMap<u64, Vec<String>>,
    /// Files attached to pages, by id (same id sequence as pages).
    pub(super) attachments: BTreeMap<u64, Attachment>,
    /// Each page's own read restriction, by page id (absent = unrestricted).
    pub(super) restrictions: BTreeMap<u64, SimRestriction>,
    /// The space's permission assignments, ordered by (numeric) id.
    pub(super) space_permissions: Vec<SimSpacePermission>,
    pub(super) traffic: Traffic,
}

impl SimState {
    /// `cfg.pages` seeded pages, modified over the last 30 days, as real spaces
    /// hold them: a tree several levels deep (a third at the root, a third
    /// under the page before, a third under any earlier page), one title in
    /// eight hostile (see [`hostile_title`]), and bodies linking to other pages
    /// of the space in the three forms Confluence stores (see [`link_markup`]).
    pub(super) fn seeded(cfg: SimConfig) -> Self {
        let now = (Utc::now() + cfg.clock_skew).trunc_subsecs(3);
        let start = now - chrono::Duration::days(30);
        let span_secs: i64 = 29 * 24 * 3600;
        let n = i64::try_from(cfg.pages.max(1)).unwrap_or(i64::MAX);
        let mut rng = cfg.seed;
        let mut shapes = Vec::with_capacity(cfg.pages);
        for i in 0..cfg.pages {
            let parent = match (i, splitmix(&mut rng) % 3) {
                (0, _) | (_, 0) => None,
                (_, 1) => Some(FIRST_ID + i as u64 - 1),
                _ => Some(FIRST_ID + splitmix(&mut rng) % i as u64),
            };
            let title = if splitmix(&mut rng).is_multiple_of(8) {
                hostile_title(splitmix(&mut rng), i + 1)
            } else {
                format!("Page {:04}", i + 1)
            };
            shapes.push((title, parent));
        }
        let mut pages = BTreeMap::new();
        let mut seeded_links = BTreeMap::new();
        for (i, (title, parent)) in shapes.iter().enumerate() {
            let id = FIRST_ID + i as u64;
            let mut body = format!(
                "<p>Seeded page {} of space {}.</p><p>Token {:016x}.</p>",
                i + 1,
                cfg.space_key,
                splitmix(&mut rng)
            );
            let mut by_id = Vec::new();
            if cfg.pages > 1 {
                for _ in 0..splitmix(&mut rng) % 4 {
                    let target = (splitmix(&mut rng) % cfg.pages as u64) as usize;
                    if target == i {
                        continue;
                    }
                    let target_id = FIRST_ID + target as u64;
                    let form = LinkForm::ALL[(splitmix(&mut rng) % 3) as usize];
                    body.push_str("<p>See ");
                    body.push_str(&link_markup(form, &cfg.space_key, target_id, &shapes[target].0));
                    body.push_str(".</p>");
                    if form != LinkForm::TitleOnly && !by_id.contains(&target_id.to_string()) {
                        by_id.push(target_id.to_string());
                    }
                }
            }
            seeded_links.insert(id, by_id);
            let offset = i64::try_from(i).unwrap_or(0).saturating_mul(span_secs) / n;
            let modified = start + chrono::Duration::seconds(offset);
            pages.insert(
                id,
                Page {
                    status: PageStatus::Current,
                    title: title.clone(),
                    parent: *parent,
                    version: 1 + splitmix(&mut rng) % 3,
                    body,
                    created_at: modified,
                    modified_at: modified,
                },
            );
        }
        // With `cfg.attachments`, one page in four carries one or two files,
        // cycling through every stored kind, seeded after every page.
        let mut next_id = FIRST_ID + cfg.pages as u64;
        let mut attachments = BTreeMap::new();
        if cfg.attachments {
            let mut n = 0usize;
            for (page, p) in &pages {
                if !splitmix(&mut rng).is_multiple_of(4) {
                    continue;
                }
                for _ in 0..1 + splitmix(&mut rng) % 2 {
                    n += 1;
                    let kind = Stored::ALL[n % Stored::ALL.len()];
                    let line = format!("Attachment {n} of page {page} token {:016x}", splitmix(&mut rng));
                    let file = files::stored(kind, n, &line);
                    attachments.insert(next_id, attachment(*page, file, p.modified_at));
                    next_id += 1;
                }
            }
        }
        let mut st = SimState {
            space_key: cfg.space_key,
            space_id: cfg.space_id,
            tz: cfg.user_timezone,
            skew: cfg.clock_skew,
            space_created: start,
            next_id,
            pages,
            seeded_links,
            attachments,
            restrictions: BTreeMap::new(),
            space_permissions: space_permissions::seeded(),
            traffic: Traffic::new(cfg.rate_limit_per_sec),
        };
        // Last, from a stream of its own: every value drawn above stays.
        st.seed_restrictions(cfg.seed);
        st
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
            .filter(|p| self.is_current(*p));
        let id = self.next_id;
        self.next_id += 1;
        let now = self.now();
        self.pages.insert(
            id,
            Page {
                status: PageStatus::Current,
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

    /// Whether `id` is a current (not trashed) page.
    pub(super) fn is_current(&self, id: u64) -> bool {
        self.pages.get(&id).is_some_and(|p| p.status == PageStatus::Current)
    }

    /// Current pages, by id.
    pub(super) fn current(&self) -> impl Iterator<Item = (&u64, &Page)> {
        self.pages.iter().filter(|(_, p)| p.status == PageStatus::Current)
    }

    /// Edits a current page: bumps `version`, stamps `modified_at`. `false` if there is no such page.
    pub(super) fn update_page(&mut self, id: &str, title: Option<&str>, body: Option<&str>) -> bool {
        let now = self.now();
        let Some(page) = id
            .parse::<u64>()
            .ok()
            .and_then(|id| self.pages.get_mut(&id))
            .filter(|p| p.status == PageStatus::Current)
        else {
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

    /// Moves a current page to the trash (its version and modification time
    /// unchanged); its children move up to its parent. `false` if there is no such page.
    pub(super) fn delete_page(&mut self, id: &str) -> bool {
        let Some(id) = id.parse::<u64>().ok().filter(|id| self.is_current(*id)) else {
            return false;
        };
        let Some(gone) = self.pages.get_mut(&id) else {
            return false;
        };
        gone.status = PageStatus::Trashed;
        let parent = gone.parent;
        for page in self.pages.values_mut() {
            if page.parent == Some(id) {
                page.parent = parent;
            }
        }
        true
    }

    /// Removes a trashed page for good. `false` if `id` is not in the trash.
    pub(super) fn purge_page(&mut self, id: &str) -> bool {
        let Some(id) = id.parse::<u64>().ok() else {
            return false;
        };
        if self.pages.get(&id).is_none_or(|p| p.status != PageStatus::Trashed) {
            return false;
        }
        self.pages.remove(&id).is_some()
    }

    /// Makes a trashed page current again with its old version, under its old
    /// parent if that is still current, else at the space root. `false` if
    /// `id` is not in the trash.
    pub(super) fn restore_page(&mut self, id: &str) -> bool {
        let Some(id) = id.parse::<u64>().ok() else {
            return false;
        };
        let Some(parent) = self
            .pages
            .get(&id)
            .filter(|p| p.status == PageStatus::Trashed)
            .map(|p| p.parent)
        else {
            return false;
        };
        let parent = parent.filter(|p| self.is_current(*p));
        if let Some(p) = self.pages.get_mut(&id) {
            p.status = PageStatus::Current;
            p.parent = parent;
        }
        true
    }

    /// Every current page, sorted by id.
    pub(super) fn snapshot(&self) -> Vec<SimPage> {
        self.current().map(|(id, p)| sim_page(*id, p)).collect()
    }

    /// Every page in the trash, sorted by id.
    pub(super) fn trash(&self) -> Vec<SimPage> {
        self.pages
            .iter()
            .filter(|(_, p)| p.status == PageStatus::Trashed)
            .map(|(id, p)| sim_page(*id, p))
            .collect()
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

/// How a storage-format body links to another page of the space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LinkForm {
    /// A pasted page URL: `<a href="https://SITE/wiki/spaces/KEY/pages/ID/Title">`.
    Url,
    /// An `<ac:link>` naming the page by id (`ri:content-id`), with a link body.
    ResourceId,
    /// An `<ac:link>` naming the page by title only (`ri:content-title`), no body.
    TitleOnly,
}

impl LinkForm {
    pub(super) const ALL: [LinkForm; 3] = [LinkForm::Url, LinkForm::ResourceId, LinkForm::TitleOnly];
}

/// The storage-format markup of a link to page `id` titled `title`.
pub(super) fn link_markup(form: LinkForm, space_key: &str, id: u64, title: &str) -> String {
    let attr = quick_xml::escape::escape(title);
    match form {
        LinkForm::Url => {
            let slug: String = url::form_urlencoded::byte_serialize(title.as_bytes()).collect();
            format!("<a href=\"https://example.atlassian.net/wiki/spaces/{space_key}/pages/{id}/{slug}\">{attr}</a>")
        }
        LinkForm::ResourceId => format!(
            "<ac:link><ri:page ri:content-id=\"{id}\" ri:space-key=\"{space_key}\" /><ac:plain-text-link-body><![CDATA[{title}]]></ac:plain-text-link-body></ac:link>"
        ),
        LinkForm::TitleOnly => format!("<ac:link><ri:page ri:content-title=\"{attr}\" /></ac:link>"),
    }
}

/// A title of the kind that breaks naive paths, URLs and markup: a slash, a
/// bare `..`, quotes and angle brackets, emoji, CJK, 250 characters. Page
/// titles are unique in a space, hence the number.
pub(super) fn hostile_title(pick: u64, number: usize) -> String {
    match pick % 6 {
        0 => format!("Release notes 2/3 ({number})"),
        1 => format!(".. ({number})"),
        2 => format!("\"Quoted\" & <angled> 'title' ({number})"),
        3 => format!("Déploiement 🚀 prévu ({number})"),
        4 => format!("設計ドキュメント ({number})"),
        _ => {
            let tail = format!(" ({number})");
            let mut long = "Very long title ".repeat(16);
            long.truncate(250 - tail.len());
            long + &tail
        }
    }
}
