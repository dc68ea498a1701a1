//! The little HTML and XML reading the HTTP connector needs: a page's
//! `<title>`, its same-site `<a href>` links, a sitemap's `<loc>`s, and the
//! character references they may contain. No parser: a scanner that finds
//! start tags outside quoted attribute values and skips comments.
//!
//! Invariants:
//! - Links are resolved against the page (or its `<base>`), lose their
//!   fragment, stay on the page's own origin, appear once, and never include the page.
//! - Unknown character references stay as written.

use std::collections::HashSet;

use url::Url;

use super::normalize;
use crate::types::DocumentId;

/// The `<loc>` values of a sitemap (entities decoded, trimmed) and whether it is a `<sitemapindex>`.
pub(super) fn sitemap_locs(xml: &str) -> (bool, Vec<String>) {
    let lower = xml.to_ascii_lowercase();
    let is_index = lower.contains("<sitemapindex");
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(start) = lower[at..].find("<loc>") {
        let from = at + start + "<loc>".len();
        let Some(len) = lower[from..].find("</loc>") else {
            break;
        };
        let raw = xml[from..from + len].trim();
        let raw = raw
            .strip_prefix("<![CDATA[")
            .and_then(|r| r.strip_suffix("]]>"))
            .map_or_else(|| decode_entities(raw), str::to_owned);
        out.push(raw.trim().to_owned());
        at = from + len;
    }
    (is_index, out)
}

/// Decodes the character references HTML and XML attribute values and text use
/// (`&amp;`, `&lt;`, `&gt;`, `&quot;`, `&apos;`, `&nbsp;`, `&#NN;`, `&#xNN;`); others stay as written.
pub(super) fn decode_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest.find(';').filter(|&semi| semi <= 10).and_then(|semi| {
            let name = &rest[1..semi];
            let ch = match name {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => {
                    let code = if let Some(hex) = name.strip_prefix("#x").or_else(|| name.strip_prefix("#X")) {
                        u32::from_str_radix(hex, 16).ok()
                    } else {
                        name.strip_prefix('#').and_then(|d| d.parse::<u32>().ok())
                    };
                    code.and_then(char::from_u32)
                }
            };
            ch.map(|c| (c, semi))
        });
        match decoded {
            Some((c, semi)) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Start tags named `name` (lowercase): the text between `<name` and the closing `>`,
/// which is found outside quoted attribute values. Comments are skipped.
fn tags<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    let lower = html.to_ascii_lowercase();
    let open = format!("<{name}");
    let bytes = html.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let Some(lt) = lower[i..].find('<') else {
            break;
        };
        let at = i + lt;
        if lower[at..].starts_with("<!--") {
            i = lower[at..].find("-->").map_or(bytes.len(), |e| at + e + 3);
            continue;
        }
        let after = at + open.len();
        let is_tag = lower[at..].starts_with(&open)
            && bytes
                .get(after)
                .is_some_and(|b| b.is_ascii_whitespace() || *b == b'>' || *b == b'/');
        if !is_tag {
            i = at + 1;
            continue;
        }
        let mut quote = None;
        let mut end = None;
        for (j, b) in bytes[after..].iter().enumerate() {
            match (quote, *b) {
                (None, b'"' | b'\'') => quote = Some(*b),
                (Some(q), c) if c == q => quote = None,
                (None, b'>') => {
                    end = Some(after + j);
                    break;
                }
                _ => {}
            }
        }
        let Some(end) = end else {
            break;
        };
        out.push(&html[after..end]);
        i = end + 1;
    }
    out
}

/// The value of attribute `name` (lowercase) inside a start tag's text, entities decoded.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let b = tag.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'/' {
            i += 1;
        }
        let attr = &tag[start..i];
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = None;
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let q = b[i];
                let from = i + 1;
                let len = b[from..].iter().position(|&c| c == q).unwrap_or(b.len() - from);
                value = Some(&tag[from..from + len]);
                i = from + len + 1;
            } else {
                let from = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                value = Some(&tag[from..i]);
            }
        }
        if attr.eq_ignore_ascii_case(name) {
            return value.map(decode_entities);
        }
        if start == i {
            i += 1;
        }
    }
    None
}

/// The page's `<title>`, entities decoded and whitespace collapsed; `None` if absent or blank.
pub fn page_title(html: &str) -> Option<String> {
    let lower = html.to_ascii_lowercase();
    let mut at = 0;
    let from = loop {
        let start = at + lower[at..].find("<title")?;
        let after = start + "<title".len();
        let next = lower.as_bytes().get(after)?;
        if *next == b'>' || next.is_ascii_whitespace() {
            break after + lower[after..].find('>')? + 1;
        }
        at = after;
    };
    let len = lower[from..].find("</title")?;
    let title = decode_entities(&html[from..from + len]);
    let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
    (!title.is_empty()).then_some(title)
}

/// Ids of the pages on this page's own site (same origin) that it links to with
/// `<a href>`, in order of first appearance, fragments dropped, itself excluded.
///
/// Not filtered to the synced set: the set changes (a sitemap gains or loses a
/// URL) without the linking page changing, and the reverse index must already
/// know who links to a URL when it enters or leaves the set. Resolution shows a
/// target tidemark does not hold with title `None`.
pub fn page_links(html: &str, page: &Url) -> Vec<DocumentId> {
    let base = tags(html, "base")
        .first()
        .and_then(|t| attribute(t, "href"))
        .and_then(|href| page.join(href.trim()).ok())
        .unwrap_or_else(|| page.clone());
    let own = normalize(page);
    let mut seen = HashSet::new();
    tags(html, "a")
        .into_iter()
        .filter_map(|t| attribute(t, "href"))
        .filter_map(|href| base.join(href.trim()).ok())
        .map(|u| normalize(&u))
        .filter(|u| *u != own && u.origin() == own.origin())
        .filter(|u| seen.insert(u.as_str().to_owned()))
        .map(|u| DocumentId(u.as_str().to_owned()))
        .collect()
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    /// Titles are decoded and collapsed; missing or blank titles are None.
    #[test]
    fn titles() {
        assert_eq!(
            page_title("<html><head><TITLE lang=en>\n  Install &amp; run\n</TITLE>").as_deref(),
            Some("Install & run")
        );
        assert_eq!(page_title("<titles>x</titles>"), None);
        assert_eq!(page_title("<title>  </title>"), None);
        assert_eq!(page_title("no title"), None);
    }

    /// Links resolve relative to the page (or `<base>`), lose fragments, stay on the
    /// page's own site, appear once, and never include the page itself; quoted `>`,
    /// comments and non-anchor tags do not confuse the scanner.
    #[test]
    fn links() {
        let page = url("http://h/docs/a.html");
        let html = r#"<p><a href="b.html#part">b</a> <A HREF='../c.html' title="x > y">c</A>
            <a class=x href=b.html>again</a> <a href="a.html">self</a> <abbr href="b.html">no</abbr>
            <!-- <a href="/c.html">commented</a> --> <a href="https://elsewhere/">out</a>
            <a href="/d?x=1&amp;y=2">query</a> <a name="anchor-only">none</a>"#;
        let got: Vec<String> = page_links(html, &page).into_iter().map(|d| d.0).collect();
        assert_eq!(
            got,
            vec!["http://h/docs/b.html", "http://h/c.html", "http://h/d?x=1&y=2"]
        );

        let based = r#"<head><base href="/docs/"></head><a href="b.html">b</a>"#;
        let got: Vec<String> = page_links(based, &url("http://h/other/x.html"))
            .into_iter()
            .map(|d| d.0)
            .collect();
        assert_eq!(got, vec!["http://h/docs/b.html"]);
    }

    /// Sitemaps and indexes give their `<loc>`s, decoded.
    #[test]
    fn sitemap_parsing() {
        let set = r#"<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
            <url><loc> http://h/a?x=1&amp;y=2 </loc><lastmod>2024-01-01</lastmod></url>
            <url><loc><![CDATA[http://h/b]]></loc></url></urlset>"#;
        assert_eq!(
            sitemap_locs(set),
            (false, vec!["http://h/a?x=1&y=2".into(), "http://h/b".into()])
        );
        let index = "<sitemapindex><sitemap><loc>http://h/s1.xml</loc></sitemap></sitemapindex>";
        assert_eq!(sitemap_locs(index), (true, vec!["http://h/s1.xml".into()]));
    }
}
