//! The `fields` parameter as Google's APIs read it (the "partial response"
//! guide): a comma-separated list of field paths, `a/b` for a nested field,
//! `a(b,c)` for several fields of every element of `a`, `*` for everything.
//! A response carries only what was asked for, so a client that forgets to ask
//! for a field (`webViewLink`, `size`) does not get it, as with Drive itself.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// What to keep of an object: field name -> what to keep of its value (`None`: all of it).
#[derive(Debug, Default, PartialEq)]
pub(super) struct Selection(BTreeMap<String, Option<Selection>>);

impl Selection {
    /// Parses a `fields` value; `Err` names the problem (Drive answers 400 `invalidParameter`).
    pub(super) fn parse(fields: &str) -> Result<Selection, String> {
        let chars: Vec<char> = fields.chars().filter(|c| !c.is_whitespace()).collect();
        let mut at = 0;
        let sel = parse_list(&chars, &mut at)?;
        if at != chars.len() {
            return Err(format!("unexpected {:?} at {at}", chars[at]));
        }
        Ok(sel)
    }

    /// `value` with only the selected fields (arrays: each element).
    pub(super) fn apply(&self, value: &Value) -> Value {
        match value {
            Value::Array(items) => Value::Array(items.iter().map(|v| self.apply(v)).collect()),
            Value::Object(map) => {
                if self.0.contains_key("*") {
                    return value.clone();
                }
                let mut out = Map::new();
                for (name, sub) in &self.0 {
                    if let Some(v) = map.get(name) {
                        out.insert(name.clone(), sub.as_ref().map_or_else(|| v.clone(), |s| s.apply(v)));
                    }
                }
                Value::Object(out)
            }
            other => other.clone(),
        }
    }

    fn add(&mut self, path: &[String], sub: Option<Selection>) {
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        if rest.is_empty() {
            let slot = self.0.entry(first.clone()).or_insert(Some(Selection::default()));
            match (slot.as_mut(), sub) {
                (Some(existing), Some(sub)) => existing.0.extend(sub.0),
                _ => *slot = None,
            }
            return;
        }
        let slot = self.0.entry(first.clone()).or_insert(Some(Selection::default()));
        if let Some(inner) = slot.as_mut() {
            inner.add(rest, sub);
        }
    }
}

fn parse_list(chars: &[char], at: &mut usize) -> Result<Selection, String> {
    let mut sel = Selection::default();
    loop {
        let mut path = Vec::new();
        loop {
            let start = *at;
            while *at < chars.len() && !matches!(chars[*at], ',' | '(' | ')' | '/') {
                *at += 1;
            }
            if *at == start {
                return Err(format!("empty field name at {start}"));
            }
            path.push(chars[start..*at].iter().collect::<String>());
            if *at < chars.len() && chars[*at] == '/' {
                *at += 1;
                continue;
            }
            break;
        }
        let sub = if *at < chars.len() && chars[*at] == '(' {
            *at += 1;
            let sub = parse_list(chars, at)?;
            if *at >= chars.len() || chars[*at] != ')' {
                return Err("unclosed '('".to_owned());
            }
            *at += 1;
            Some(sub)
        } else {
            None
        };
        sel.add(&path, sub);
        if *at < chars.len() && chars[*at] == ',' {
            *at += 1;
            continue;
        }
        return Ok(sel);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Nested, slashed and starred selections keep exactly what they name.
    #[test]
    fn selections() {
        let v = json!({"kind": "drive#fileList", "nextPageToken": "t", "files": [
            {"id": "1", "name": "a", "size": "3", "owners": [{"me": true, "name": "x"}]},
            {"id": "2", "name": "b"}
        ]});
        let s = Selection::parse("nextPageToken, files(id,owners/name)").expect("parse");
        assert_eq!(
            s.apply(&v),
            json!({"nextPageToken": "t", "files": [{"id": "1", "owners": [{"name": "x"}]}, {"id": "2"}]})
        );
        assert_eq!(Selection::parse("*").expect("parse").apply(&v), v);
        assert_eq!(
            Selection::parse("files/id").expect("parse").apply(&v),
            json!({"files": [{"id": "1"}, {"id": "2"}]})
        );
        assert!(Selection::parse("files(id").is_err());
        assert!(Selection::parse("a,,b").is_err());
    }
}
