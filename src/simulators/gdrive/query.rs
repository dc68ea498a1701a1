//! The subset of Drive's query language (`q` of `files.list`) the connector
//! uses, and its parser.
//!
//! Invariants: only `'<id>' in parents` (with `\'` and `\\` escapes inside
//! the quotes) and `trashed = true|false`, joined by `and` (any case), are
//! understood; anything else is an error, which `files.list` turns into a 400
//! `invalid` at location `q`. An empty or missing `q` is refused too.

/// A parsed `q`: the parent to list and an optional `trashed` filter.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Query {
    pub(super) parent: Option<String>,
    pub(super) trashed: Option<bool>,
}

/// Parses the subset of Drive's query language the connector uses.
pub(super) fn parse_q(q: &str) -> Result<Query, String> {
    let mut out = Query {
        parent: None,
        trashed: None,
    };
    let mut rest = q.trim();
    loop {
        if let Some(after) = rest.strip_prefix('\'') {
            // '<id>' in parents, with \' and \\ escapes inside the quotes.
            let mut id = String::new();
            let mut chars = after.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, e)) => id.push(e),
                        None => return Err("unterminated escape".into()),
                    },
                    '\'' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => id.push(c),
                }
            }
            let end = end.ok_or("unterminated string")?;
            let tail = after[end..].trim_start();
            let tail = tail.strip_prefix("in").ok_or("expected 'in'")?.trim_start();
            rest = tail.strip_prefix("parents").ok_or("expected 'parents'")?.trim_start();
            out.parent = Some(id);
        } else if let Some(after) = rest.strip_prefix("trashed") {
            let after = after.trim_start().strip_prefix('=').ok_or("expected '='")?.trim_start();
            if let Some(r) = after.strip_prefix("false") {
                out.trashed = Some(false);
                rest = r.trim_start();
            } else if let Some(r) = after.strip_prefix("true") {
                out.trashed = Some(true);
                rest = r.trim_start();
            } else {
                return Err("expected true or false".into());
            }
        } else {
            return Err(format!("unsupported term at {rest:?}"));
        }
        if rest.is_empty() {
            return Ok(out);
        }
        let lower = rest.to_ascii_lowercase();
        if lower.starts_with("and ") {
            rest = rest[4..].trim_start();
        } else {
            return Err(format!("expected 'and' at {rest:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The query subset parses with escapes and `and`; anything else is refused.
    #[test]
    fn q_parsing() {
        assert_eq!(
            parse_q("'root-folder' in parents and trashed = false"),
            Ok(Query {
                parent: Some("root-folder".into()),
                trashed: Some(false)
            })
        );
        assert_eq!(
            parse_q("'a\\'b' in parents AND trashed=true").map(|q| (q.parent, q.trashed)),
            Ok((Some("a'b".into()), Some(true)))
        );
        assert!(parse_q("name contains 'x'").is_err());
        assert!(parse_q("'x' in parents or trashed = false").is_err());
        assert!(parse_q("'x in parents").is_err());
    }
}
