//! The Confluence source (`eng`, served by the simulator): how the test
//! creates, edits, renames and deletes its pages, and what the sink must hold
//! for it: every page with its version, title, parent, body, ancestor titles
//! as breadcrumb, each link target with the target's current title, and its
//! readers (the space's "view space" holders and every read restriction from
//! the root down to the page: restrictions set and removed, and the space's
//! readers changed, drawn from a stream of their own so the other operations
//! of a seed stay what they were); an attachment's readers are its page's.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use chrono_tz::Tz;
use tidemark::simulators::confluence::{ConfluenceSim, SimConfig, SimSpacePermission, group_engineering, seed_users};
use tidemark::simulators::files::{self, Stored};

use super::compare::{Doc, Docs};
use super::ops::{Ops, SimulatedSource};
use super::rng::Rng;

/// The simulated space and what the test remembers about it.
pub struct Confluence {
    pub sim: ConfluenceSim,
    /// The connector's `sweep_every`: 1 lists everything every run (pages may
    /// also be purged from the trash or restored), 3 reads the search and the
    /// trash between sweeps (pages are deleted to the trash only).
    pub sweep: u32,
    /// Every Confluence page id ever created (links may point at deleted ones).
    ids: Vec<String>,
    /// The pages each page's body links to, as the test wrote them (the seeded
    /// ones as the simulator seeded them): the expected links come from what
    /// was written, not from the connector's reading of the markup.
    links: HashMap<String, Vec<String>>,
    /// Restriction changes so far (what seeds their draws).
    restrictions: u64,
}

impl Confluence {
    /// Draws `sweep_every` and the initial page count, and serves a fresh simulator.
    pub async fn start(rng: &mut Rng, seed: u64, tz: Tz, skew_secs: i64) -> (Self, SocketAddr) {
        let sweep = if rng.chance(50) { 1 } else { 3 };
        let sim = ConfluenceSim::new(SimConfig {
            pages: rng.range(5, 12),
            attachments: rng.chance(50),
            seed,
            user_timezone: tz,
            clock_skew: chrono::Duration::seconds(skew_secs),
            ..SimConfig::default()
        });
        let (addr, _) = sim.serve("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let ids = sim.pages().into_iter().map(|p| p.id).collect();
        let links = sim.seeded_links().into_iter().collect();
        (
            Confluence {
                sim,
                sweep,
                ids,
                links,
                restrictions: 0,
            },
            addr,
        )
    }

    /// Records that `id`'s body now links to `targets` (each once, in order).
    fn wrote_links(&mut self, id: &str, targets: &[String]) {
        let mut once = Vec::new();
        for t in targets {
            if !once.contains(t) {
                once.push(t.clone());
            }
        }
        self.links.insert(id.to_owned(), once);
    }

    /// Restricts a drawn page to a group, a user or two users, lifts its
    /// restriction, or gives (or takes back) the space's "view space" to a
    /// group: nothing a search of changes can see.
    fn restrict(&mut self, ops: &mut Ops) {
        self.restrictions += 1;
        let mut rng = Rng::new(ops.seed ^ 0x7265_7374_7200_0000 ^ self.restrictions);
        let ids: Vec<String> = self.sim.pages().into_iter().map(|p| p.id).collect();
        let Some(id) = rng.pick(&ids).cloned() else { return };
        let users = seed_users();
        let restricted = self.sim.read_restriction(&id).is_some_and(|r| !r.is_empty());
        match rng.below(5) {
            _ if restricted && rng.chance(50) => {
                self.sim.set_read_restriction(&id, Vec::new(), Vec::new());
                ops.log.push(format!("conf unrestrict {id}"));
            }
            0 => {
                self.sim
                    .set_read_restriction(&id, Vec::new(), vec![group_engineering()]);
                ops.log.push(format!("conf restrict {id} to engineering"));
            }
            1 => {
                self.sim.set_read_restriction(&id, vec![users[0].clone()], Vec::new());
                ops.log.push(format!("conf restrict {id} to alice"));
            }
            2 => {
                self.sim
                    .set_read_restriction(&id, vec![users[1].clone(), users[2].clone()], Vec::new());
                ops.log.push(format!("conf restrict {id} to bob and carol"));
            }
            _ => {
                let held = self
                    .sim
                    .space_permissions()
                    .into_iter()
                    .find(|p| p.principal.id == "g-contractors" && p.is_read_space());
                match held {
                    Some(p) => {
                        self.sim.remove_space_permission(&p.id);
                        ops.log.push("conf space read taken from g-contractors".to_owned());
                    }
                    None => {
                        self.sim.add_space_permission(SimSpacePermission::new(
                            "group",
                            "g-contractors",
                            "read",
                            "space",
                        ));
                        ops.log.push("conf space read given to g-contractors".to_owned());
                    }
                }
            }
        }
    }

    /// Who may read `id` (a page or an attachment), by the simulator's space and restrictions.
    fn readers(&self, id: &str) -> Vec<Vec<String>> {
        super::compare::readers_of(&self.sim.expected_permissions(id).unwrap_or_default())
    }

    fn body(&mut self, ops: &mut Ops) -> (String, Vec<String>) {
        let n = ops.tick();
        let mut links = Vec::new();
        let mut body = format!("<p>Body {n} of seed {}.</p>", ops.seed);
        for _ in 0..ops.rng.range(0, 3) {
            let target = if ops.rng.chance(10) {
                "999999".to_owned() // never exists
            } else {
                ops.rng.pick(&self.ids).cloned().unwrap_or_else(|| "999999".into())
            };
            let _ = write!(
                body,
                "<p>See <a href=\"/wiki/spaces/ENG/pages/{target}\">page {target}</a>.</p>"
            );
            links.push(target);
        }
        (body, links)
    }
}

impl SimulatedSource for Confluence {
    fn mutate(&mut self, ops: &mut Ops, n: usize) {
        self.restrict(ops);
        for _ in 0..n {
            let pages = self.sim.pages();
            let ids: Vec<String> = pages.iter().map(|p| p.id.clone()).collect();
            let roll = ops.rng.below(100);
            let target = ops.rng.pick(&ids).cloned();
            match (roll, target) {
                (0..=9, Some(page)) => {
                    let attached = self.sim.attachments();
                    let k = usize::try_from(ops.tick()).unwrap_or(0);
                    let kind = Stored::ALL[k % Stored::ALL.len()];
                    let line = format!("Attachment {k} of seed {}", ops.seed);
                    match (ops.rng.below(3), ops.rng.pick(&attached).map(|a| a.id.clone())) {
                        (0, Some(a)) => {
                            self.sim.update_attachment(&a, files::stored(kind, k, &line));
                            ops.log.push(format!("conf attachment update {a} ({kind:?})"));
                        }
                        // Removed on its own, an attachment is seen by complete listings only.
                        (1, Some(a)) if self.sweep == 1 => {
                            self.sim.delete_attachment(&a);
                            ops.log.push(format!("conf attachment delete {a}"));
                        }
                        _ => {
                            let a = self.sim.attach(&page, files::stored(kind, k, &line));
                            ops.log.push(format!("conf attach {a:?} to {page} ({kind:?})"));
                        }
                    }
                }
                (0..=29, _) | (_, None) => {
                    let parent = if ops.rng.chance(25) {
                        None
                    } else {
                        ops.rng.pick(&ids).cloned()
                    };
                    let k = ops.tick();
                    let title = format!("Conf page {k}");
                    let (body, links) = self.body(ops);
                    let id = self.sim.create_page(&title, parent.as_deref(), &body);
                    ops.log
                        .push(format!("conf create {id} {title:?} parent={parent:?} links={links:?}"));
                    self.wrote_links(&id, &links);
                    self.ids.push(id);
                }
                (30..=59, Some(id)) => {
                    let (body, links) = self.body(ops);
                    if self.sim.update_page(&id, None, Some(&body)) {
                        self.wrote_links(&id, &links);
                    }
                    ops.log.push(format!("conf edit {id} links={links:?}"));
                }
                (60..=79, Some(id)) => {
                    let k = ops.tick();
                    let title = format!("Renamed {k}");
                    self.sim.update_page(&id, Some(&title), None);
                    ops.log.push(format!("conf rename {id} -> {title:?}"));
                }
                (80..=87, Some(id)) => {
                    let k = ops.tick();
                    let title = format!("Rewritten {k}");
                    let (body, links) = self.body(ops);
                    if self.sim.update_page(&id, Some(&title), Some(&body)) {
                        self.wrote_links(&id, &links);
                    }
                    ops.log
                        .push(format!("conf rename+edit {id} -> {title:?} links={links:?}"));
                }
                (_, Some(id)) => {
                    let trashed = self.sim.trash();
                    // Purged or restored pages are invisible to the search and
                    // the trash listing: only runs that list everything see them.
                    if self.sweep == 1 && ops.rng.chance(25) && !trashed.is_empty() {
                        let back = ops.rng.pick(&trashed).map(|p| p.id.clone()).unwrap_or_default();
                        self.sim.restore_page(&back);
                        ops.log.push(format!("conf restore {back} (old version)"));
                    } else if self.sweep == 1 && ops.rng.chance(33) {
                        self.sim.delete_and_purge_page(&id);
                        ops.log.push(format!("conf delete+purge {id} (children move up)"));
                    } else {
                        self.sim.delete_page(&id);
                        ops.log
                            .push(format!("conf delete {id} (to the trash, children move up)"));
                    }
                }
            }
        }
    }

    fn expected(&self) -> Docs {
        let pages = self.sim.pages();
        let by_id: HashMap<&str, (&str, Option<&str>)> = pages
            .iter()
            .map(|p| (p.id.as_str(), (p.title.as_str(), p.parent_id.as_deref())))
            .collect();
        pages
            .iter()
            .map(|p| {
                let crumbs = crumbs_of(&by_id, &p.id, pages.len());
                let links = self
                    .links
                    .get(&p.id)
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        let title = by_id.get(t.as_str()).map(|(title, _)| (*title).to_owned());
                        (t.clone(), title)
                    })
                    .collect();
                (
                    p.id.clone(),
                    Doc {
                        version: p.version.to_string(),
                        title: p.title.clone(),
                        parent: p.parent_id.clone(),
                        breadcrumb: crumbs,
                        content: crate::harness::words(&tidemark::extract::storage_text(&p.body)),
                        links,
                        readers: self.readers(&p.id),
                    },
                )
            })
            .collect::<Docs>()
            .into_iter()
            .chain(self.sim.attachments().into_iter().filter_map(|a| {
                // Under its page: the page's breadcrumb plus the page's title.
                let (title, _) = by_id.get(a.page_id.as_str())?;
                let mut crumbs = crumbs_of(&by_id, &a.page_id, pages.len());
                crumbs.push((*title).to_owned());
                Some((
                    a.id.clone(),
                    Doc {
                        version: a.version.to_string(),
                        title: a.title.clone(),
                        parent: Some(a.page_id.clone()),
                        breadcrumb: crumbs,
                        content: crate::harness::words(&a.text),
                        links: Vec::new(),
                        readers: self.readers(&a.id),
                    },
                ))
            }))
            .collect()
    }
}

/// The titles of `id`'s ancestors, root first (bounded against cycles).
fn crumbs_of(by_id: &HashMap<&str, (&str, Option<&str>)>, id: &str, bound: usize) -> Vec<String> {
    let mut crumbs = Vec::new();
    let mut cur = by_id.get(id).and_then(|(_, parent)| *parent);
    while let Some(id) = cur {
        let Some((title, parent)) = by_id.get(id) else { break };
        crumbs.push((*title).to_owned());
        cur = *parent;
        if crumbs.len() > bound {
            break;
        }
    }
    crumbs.reverse();
    crumbs
}
