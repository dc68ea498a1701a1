//! Who may read a document: [`Permissions`], normalized across sources, and
//! the one check a retriever makes ([`Permissions::may_read`]).
//!
//! A principal is a string with a kind prefix, the same for every connector:
//! `user:EMAIL` (lowercase), `group:NAME` (or the source's group id when it
//! gives no name), `domain:DOMAIN` (anyone signed in to that domain),
//! `domain_with_link:DOMAIN` (the same, holding the link), `anyone`, and
//! `anyone_with_link`. A connector that knows a user only by an id of its
//! own writes `user:SOURCE_KIND:ID` (`user:unix:1000`, `user:atlassian:557058:...`);
//! a role a source grants access to (Confluence's space roles) is `role:ID`.
//! Groups are never expanded: a retriever passes the groups its reader is in.
//!
//! Invariants:
//! - a document may be read by a reader holding one principal of `readers`
//!   *and* one of every list in `also_required` (nested restrictions, such as
//!   a Confluence page under a restricted page, that one list cannot express
//!   without expanding groups); `anyone` in a list is held by every reader;
//! - the lists are sorted and without duplicates, so equal access is equal
//!   data, and [`Permissions::fingerprint`] changes exactly when it does;
//! - no readers means nobody: a document whose access is unknown is never public.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The principal every reader holds.
pub const ANYONE: &str = "anyone";
/// Held by a reader who has the document's link: a retriever decides whether
/// handing a passage out counts as having it (`tidemark query --with-link`).
pub const ANYONE_WITH_LINK: &str = "anyone_with_link";

/// Who may read a document, as written to the sink (README, "Permissions").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permissions {
    /// Principals any one of whom may read, sorted.
    pub readers: Vec<String>,
    /// Further lists a reader must also hold one principal of, each sorted
    /// (empty for most documents).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_required: Vec<Vec<String>>,
    /// What the source said, for audit (Drive's `permissions`, a file's
    /// owner, group and mode, Confluence's restrictions).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub source: serde_json::Value,
}

impl Permissions {
    /// Readers from any principals (normalized, sorted, deduplicated) with the source's form.
    pub fn new<I, S>(readers: I, source: serde_json::Value) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self {
            readers: normalize_list(readers),
            also_required: Vec::new(),
            source,
        }
    }

    /// Readable by anyone, with the source's form.
    pub fn public(source: serde_json::Value) -> Self {
        Self::new([ANYONE], source)
    }

    /// Adds a further list of principals a reader must hold one of
    /// (an ancestor's restriction). A list holding `anyone` restricts nothing
    /// and is dropped, and so is one that a list already kept implies
    /// (every principal of that list is in it).
    pub fn also_require<I, S>(mut self, list: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut lists: Vec<Vec<String>> = std::mem::take(&mut self.also_required);
        lists.push(std::mem::take(&mut self.readers));
        lists.push(normalize_list(list));
        // A list holding `anyone` restricts nothing.
        lists.retain(|l| !l.iter().any(|p| p == ANYONE));
        if lists.is_empty() {
            self.readers = vec![ANYONE.to_owned()];
            return self;
        }
        // The shortest list becomes `readers`; a list holding every principal
        // of a list already kept is implied by it (an empty list, nobody,
        // implies all).
        // Ties broken by content, so the same lists in any order give the same form.
        lists.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        let mut kept: Vec<Vec<String>> = Vec::new();
        for l in lists {
            if !kept.iter().any(|k| k.iter().all(|p| l.binary_search(p).is_ok())) {
                kept.push(l);
            }
        }
        let mut kept = kept.into_iter();
        self.readers = kept.next().unwrap_or_default();
        self.also_required = kept.collect();
        self.also_required.sort();
        self
    }

    /// Whether a reader holding `principals` may read. `anyone` is held by
    /// every reader whether listed or not.
    pub fn may_read<S: AsRef<str>>(&self, principals: &[S]) -> bool {
        let holds = |list: &[String]| {
            list.iter()
                .any(|p| p == ANYONE || principals.iter().any(|q| normalize(q.as_ref()) == *p))
        };
        holds(&self.readers) && self.also_required.iter().all(|l| holds(l))
    }

    /// 8 bytes of SHA-256 over everything here, in hex: what the state keeps
    /// to tell a change of permissions from none without holding them (a
    /// change goes unseen with a chance of 2^-64).
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        // Serializing plain strings and a JSON value cannot fail.
        h.update(serde_json::to_vec(self).unwrap_or_default());
        hex::encode(&h.finalize()[..8])
    }
}

/// A principal as stored: the kind prefix and emails and domains lowercased,
/// surrounding spaces trimmed. Group names and ids are kept as the source spells them.
pub fn normalize(principal: &str) -> String {
    let p = principal.trim();
    match p.split_once(':') {
        Some((kind, rest)) => {
            let kind = kind.trim().to_ascii_lowercase();
            let rest = rest.trim();
            match kind.as_str() {
                "user" | "domain" | "domain_with_link" => format!("{kind}:{}", rest.to_lowercase()),
                _ => format!("{kind}:{rest}"),
            }
        }
        None => p.to_ascii_lowercase(),
    }
}

/// Checks a principal written in a config or on a command line, naming what is wrong.
pub fn check(principal: &str) -> Result<(), String> {
    let p = normalize(principal);
    match p.split_once(':') {
        None if p == ANYONE || p == ANYONE_WITH_LINK => Ok(()),
        Some(("user" | "group" | "role" | "domain" | "domain_with_link", rest)) if !rest.is_empty() => Ok(()),
        _ => Err(format!(
            "{principal:?} is not a principal (user:EMAIL, group:NAME, role:ID, domain:DOMAIN, \
             domain_with_link:DOMAIN, anyone or anyone_with_link)"
        )),
    }
}

/// The principals a reader holds beside the ones named: `anyone`, and for
/// each `user:NAME@DOMAIN` the `domain:DOMAIN` they are signed in to (and,
/// if they hold links, `anyone_with_link` and `domain_with_link:DOMAIN`).
pub fn reader_principals<S: AsRef<str>>(named: &[S], with_link: bool) -> Vec<String> {
    let mut out: Vec<String> = named.iter().map(|p| normalize(p.as_ref())).collect();
    out.push(ANYONE.into());
    if with_link {
        out.push(ANYONE_WITH_LINK.into());
    }
    let domains: Vec<String> = out
        .iter()
        .filter_map(|p| p.strip_prefix("user:"))
        .filter_map(|email| email.rsplit_once('@').map(|(_, d)| d.to_owned()))
        .collect();
    for d in domains {
        out.push(format!("domain:{d}"));
        if with_link {
            out.push(format!("domain_with_link:{d}"));
        }
    }
    out.sort();
    out.dedup();
    out
}

fn normalize_list<I, S>(list: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out: Vec<String> = list.into_iter().map(|p| normalize(p.as_ref())).collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Principals are normalized and sorted, so equal access is equal data.
    #[test]
    fn readers_are_normalized() {
        let p = Permissions::new(
            ["User:Alice@Example.COM ", "group:Eng", "anyone"],
            serde_json::Value::Null,
        );
        assert_eq!(p.readers, vec!["anyone", "group:Eng", "user:alice@example.com"]);
        let q = Permissions::new(
            ["group:Eng", "user:alice@example.com", "anyone", "anyone"],
            serde_json::Value::Null,
        );
        assert_eq!(p.fingerprint(), q.fingerprint());
        assert_ne!(p.fingerprint(), Permissions::default().fingerprint());
    }

    /// Nobody may read a document without readers; anyone may read a public one.
    #[test]
    fn may_read() {
        let none = Permissions::default();
        assert!(!none.may_read(&["anyone", "user:a@x.org"]));
        let public = Permissions::public(serde_json::Value::Null);
        assert!(public.may_read::<&str>(&[]));
        let eng = Permissions::new(["group:eng", "user:bob@x.org"], serde_json::Value::Null);
        assert!(eng.may_read(&["user:alice@x.org", "group:eng"]));
        assert!(eng.may_read(&["User:BOB@x.org"]));
        assert!(!eng.may_read(&["user:alice@x.org", "group:sales", "anyone"]));
    }

    /// Nested restrictions: a reader must be in every list; implied lists go.
    #[test]
    fn nested_restrictions() {
        let space = ["group:staff", "group:contractors"];
        let p = Permissions::new(space, serde_json::Value::Null)
            .also_require(["group:eng"])
            .also_require(["user:alice@x.org", "user:carol@x.org"]);
        assert_eq!(p.readers, vec!["group:eng"]);
        assert_eq!(p.also_required.len(), 2);
        assert!(p.may_read(&["user:alice@x.org", "group:eng", "group:staff"]));
        assert!(!p.may_read(&["user:alice@x.org", "group:eng"]), "not in the space");
        assert!(
            !p.may_read(&["user:bob@x.org", "group:eng", "group:staff"]),
            "not named"
        );
        // A list that contains a kept one adds nothing; one with anyone neither.
        let q = Permissions::new(["group:eng"], serde_json::Value::Null)
            .also_require(["group:eng", "group:sales"])
            .also_require(["anyone"]);
        assert_eq!(q.readers, vec!["group:eng"]);
        assert!(q.also_required.is_empty());
        // A public document restricted below becomes the restriction.
        let r = Permissions::public(serde_json::Value::Null).also_require(["group:eng"]);
        assert_eq!(r.readers, vec!["group:eng"]);
        assert!(r.also_required.is_empty());
    }

    /// A reader holds anyone and the domain of their email.
    #[test]
    fn a_readers_principals() {
        assert_eq!(
            reader_principals(&["user:Alice@Example.com", "group:eng"], false),
            vec!["anyone", "domain:example.com", "group:eng", "user:alice@example.com"]
        );
        assert!(reader_principals(&["user:a@x.org"], true).contains(&"domain_with_link:x.org".to_owned()));
        assert!(check("user:a@x.org").is_ok());
        assert!(check("anyone").is_ok());
        assert!(check("alice").unwrap_err().contains("not a principal"));
        assert!(check("user:").is_err());
    }
}
