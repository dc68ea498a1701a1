//! The subset of CQL (Confluence Query Language) that v1 content search
//! understands: tokenizer, parser and the matcher a page is tested with.
//!
//! Invariants and deliberate simplifications:
//! - Only `space = ..`, `type = ..` (or `in (..)`), `id = ..` (or `in (..)`,
//!   `content` being its alias) and `lastmodified <op> ..` clauses, joined
//!   by `and` (any case); anything else is a parse error, which the search
//!   endpoint turns into a 400 with Atlassian's v1 error body.
//! - Date literals (`yyyy/MM/dd HH:mm`, `yyyy-MM-dd HH:mm` or date only) are
//!   read in the user's time zone and compared with the page's modification
//!   time truncated to its minute, as Confluence does.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use super::attachments::Attachment;
use super::model::{Page, SimState};

/// One parsed CQL clause.
pub(super) enum Clause {
    Space(String),
    /// `type = X` or `type in (X, Y)`.
    Type(Vec<String>),
    LastModified(Cmp, DateTime<Utc>),
    /// `id = N` or `id in (N, M)` (alias `content`): content with one of these ids.
    Id(Vec<u64>),
}

/// A `lastmodified` comparison operator.
#[derive(Clone, Copy)]
pub(super) enum Cmp {
    Eq,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Cmp {
    fn holds(self, a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
        }
    }
}

#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Op(String),
}

fn tokenize(cql: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = cql.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' || c == '\'' {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next() {
                    None => return Err("unterminated string".to_owned()),
                    Some('\\') => s.extend(chars.next()),
                    Some(q) if q == c => break,
                    Some(ch) => s.push(ch),
                }
            }
            out.push(Tok::Str(s));
        } else if matches!(c, '(' | ')' | ',') {
            chars.next();
            out.push(Tok::Op(c.to_string()));
        } else if matches!(c, '=' | '>' | '<' | '!') {
            chars.next();
            let mut op = c.to_string();
            if chars.peek() == Some(&'=') {
                chars.next();
                op.push('=');
            }
            out.push(Tok::Op(op));
        } else if c.is_alphanumeric() || c == '_' || c == '.' || c == '~' {
            let mut w = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_alphanumeric() || matches!(ch, '_' | '.' | '~' | '-') {
                    w.push(ch);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(Tok::Word(w));
        } else {
            return Err(format!("unexpected character {c:?}"));
        }
    }
    Ok(out)
}

/// A CQL date literal read in `tz`; date-only literals mean midnight.
fn parse_cql_date(s: &str, tz: Tz) -> Option<DateTime<Utc>> {
    let naive = ["%Y/%m/%d %H:%M", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
        .or_else(|| {
            ["%Y/%m/%d", "%Y-%m-%d"]
                .iter()
                .find_map(|f| NaiveDate::parse_from_str(s, f).ok())
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })?;
    // In a DST gap the wall time does not exist; read it with the offset before the gap.
    tz.from_local_datetime(&naive)
        .earliest()
        .or_else(|| tz.from_local_datetime(&(naive + chrono::Duration::hours(1))).earliest())
        .map(|t| t.with_timezone(&Utc))
}

/// Parses `cql` into clauses joined by `and`; the error says what was not understood.
pub(super) fn parse_cql(cql: &str, tz: Tz) -> Result<Vec<Clause>, String> {
    let toks = tokenize(cql)?;
    let mut clauses = Vec::new();
    let mut i = 0;
    loop {
        // `type in (a, b)` and `id in (1, 2)`: the lists this subset reads.
        if let (Some(Tok::Word(field)), Some(Tok::Word(op))) = (toks.get(i), toks.get(i + 1))
            && ["type", "id", "content"].iter().any(|f| field.eq_ignore_ascii_case(f))
            && op.eq_ignore_ascii_case("in")
        {
            let mut types = Vec::new();
            let mut j = i + 2;
            if toks.get(j) != Some(&Tok::Op("(".into())) {
                return Err("expected ( after IN".to_owned());
            }
            j += 1;
            loop {
                match (toks.get(j), toks.get(j + 1)) {
                    (Some(Tok::Word(t) | Tok::Str(t)), Some(Tok::Op(sep))) if sep == "," || sep == ")" => {
                        types.push(t.clone());
                        j += 2;
                        if sep == ")" {
                            break;
                        }
                    }
                    _ => return Err("expected a list of values: (page, attachment) or (123, 456)".to_owned()),
                }
            }
            clauses.push(if field.eq_ignore_ascii_case("type") {
                Clause::Type(types)
            } else {
                Clause::Id(ids(&types)?)
            });
            i = j;
            match toks.get(i) {
                None => return Ok(clauses),
                Some(Tok::Word(w)) if w.eq_ignore_ascii_case("and") => {
                    i += 1;
                    continue;
                }
                Some(t) => return Err(format!("expected AND, found {t:?}")),
            }
        }
        let (Some(Tok::Word(field)), Some(Tok::Op(op)), Some(value)) = (toks.get(i), toks.get(i + 1), toks.get(i + 2))
        else {
            return Err(format!("expected <field> <operator> <value> at token {}", i + 1));
        };
        let value = match value {
            Tok::Word(v) | Tok::Str(v) => v.clone(),
            Tok::Op(o) => return Err(format!("unexpected operator {o:?}")),
        };
        let clause = match (field.to_ascii_lowercase().as_str(), op.as_str()) {
            ("space", "=") => Clause::Space(value),
            ("type", "=") => Clause::Type(vec![value]),
            ("id" | "content", "=") => Clause::Id(ids(std::slice::from_ref(&value))?),
            ("lastmodified", op) => {
                let cmp = match op {
                    "=" => Cmp::Eq,
                    ">" => Cmp::Gt,
                    ">=" => Cmp::Ge,
                    "<" => Cmp::Lt,
                    "<=" => Cmp::Le,
                    other => {
                        return Err(format!("operator {other:?} not supported for lastmodified"));
                    }
                };
                let at = parse_cql_date(&value, tz).ok_or_else(|| format!("invalid date {value:?}"))?;
                Clause::LastModified(cmp, at)
            }
            (f, o) => return Err(format!("unsupported clause {f} {o}")),
        };
        clauses.push(clause);
        i += 3;
        match toks.get(i) {
            None => return Ok(clauses),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("and") => i += 1,
            Some(t) => return Err(format!("expected AND, found {t:?}")),
        }
    }
}

/// Content ids as CQL writes them (numbers).
fn ids(values: &[String]) -> Result<Vec<u64>, String> {
    values
        .iter()
        .map(|v| v.parse().map_err(|_| format!("invalid content id {v:?}")))
        .collect()
}

/// Whether page `id` (`p`) of the space satisfies every clause.
pub(super) fn matches(st: &SimState, clauses: &[Clause], id: u64, p: &Page) -> bool {
    holds(st, clauses, "page", id, p.modified_at)
}

/// Whether attachment `a` of the space satisfies every clause.
pub(super) fn matches_attachment(st: &SimState, clauses: &[Clause], id: u64, a: &Attachment) -> bool {
    holds(st, clauses, "attachment", id, a.modified_at)
}

fn holds(st: &SimState, clauses: &[Clause], kind: &str, id: u64, modified_at: DateTime<Utc>) -> bool {
    // CQL dates have minute precision: the content's time is truncated to its minute.
    let minute = modified_at
        .with_second(0)
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(modified_at);
    clauses.iter().all(|c| match c {
        Clause::Space(k) => *k == st.space_key,
        Clause::Type(types) => types.iter().any(|t| t == kind),
        Clause::LastModified(cmp, at) => cmp.holds(minute, *at),
        Clause::Id(ids) => ids.contains(&id),
    })
}
