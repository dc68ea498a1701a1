//! HTML to readable text with `scraper` (html5ever, the parser Servo uses):
//! the page's main text, headings kept (as Markdown `#` lines, so a chunker
//! can split on them), list items as `- ` lines, table cells tab-separated;
//! scripts, styles, navigation and other non-content elements dropped.
//!
//! "Main text" is the `<main>` element (or `role="main"`) when the page has
//! one, else its only `<article>`, else the whole `<body>`.

use scraper::{ElementRef, Html, Node, Selector};

/// Elements whose content is never text a reader sees.
const SKIPPED: &[&str] = &[
    "script",
    "style",
    "noscript",
    "template",
    "head",
    "svg",
    "math",
    "iframe",
    "object",
    "canvas",
    "nav",
    "select",
    "button",
    // Confluence storage format: macro parameters and editor placeholders are not page text.
    "ac:parameter",
    "ac:placeholder",
];

/// Elements that start and end a line.
const BLOCKS: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "dd",
    "details",
    "dialog",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "header",
    "hr",
    "li",
    "main",
    "ol",
    "p",
    "pre",
    "section",
    "summary",
    "table",
    "tbody",
    "thead",
    "tfoot",
    "tr",
    "ul",
    "caption",
];

/// The readable text of an HTML page.
pub fn html_text(html: &str) -> String {
    let doc = Html::parse_document(html);
    let mut w = Writer::default();
    w.element(main_element(&doc).unwrap_or_else(|| doc.root_element()), false);
    w.out
}

/// The readable text of a Confluence page in storage format (XHTML with
/// `ac:` and `ri:` elements): code and other plain-text macro bodies (CDATA)
/// kept as preformatted text, macro parameters and placeholders dropped, link
/// bodies kept as the words they show.
pub fn storage_text(storage: &str) -> String {
    let storage = &titled_links(storage);
    // html5ever reads CDATA in HTML content as a comment: make each section escaped text first.
    let mut html = String::with_capacity(storage.len() + 16);
    html.push_str("<body>");
    let mut rest = storage.as_str();
    while let Some(at) = rest.find("<![CDATA[") {
        let before = &rest[..at];
        html.push_str(before);
        let after = &rest[at + "<![CDATA[".len()..];
        let end = after.find("]]>").unwrap_or(after.len());
        // A link's body is words in a sentence; any other plain-text body (code) keeps its layout.
        let inline = before.trim_end().ends_with("<ac:plain-text-link-body>");
        let text = quick_xml::escape::escape(&after[..end]);
        if inline {
            html.push_str(&text);
        } else {
            html.push_str("<pre>");
            html.push_str(&text);
            html.push_str("</pre>");
        }
        rest = after.get(end + "]]>".len()..).unwrap_or("");
    }
    html.push_str(rest);
    html.push_str("</body>");
    super::tidy(&html_text(&html))
}

/// `<ac:link>`s without a link body shown as Confluence shows them: the
/// linked page's title (`ri:content-title`, still XML-escaped, which the HTML
/// reader decodes). One with neither body nor title is left as it is.
fn titled_links(storage: &str) -> String {
    const OPEN: &str = "<ac:link";
    const CLOSE: &str = "</ac:link>";
    const TITLE: &str = "ri:content-title=\"";
    let mut out = String::with_capacity(storage.len());
    let mut rest = storage;
    while let Some(at) = rest.find(OPEN) {
        let Some(len) = rest[at..].find(CLOSE).map(|end| end + CLOSE.len()) else {
            break;
        };
        let link = &rest[at..at + len];
        let title = link
            .find(TITLE)
            .map(|t| &link[t + TITLE.len()..])
            .and_then(|t| t.find('"').map(|end| &t[..end]));
        out.push_str(&rest[..at]);
        match title {
            Some(title) if !link.contains("link-body>") => out.push_str(title),
            _ => out.push_str(link),
        }
        rest = &rest[at + len..];
    }
    out.push_str(rest);
    out
}

/// The page's `<title>`, whitespace collapsed; `None` when absent or blank.
pub fn html_title(html: &str) -> Option<String> {
    let doc = Html::parse_document(html);
    let selector = Selector::parse("title").ok()?;
    let title = doc.select(&selector).next()?.text().collect::<String>();
    let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
    (!title.is_empty()).then_some(title)
}

fn main_element(doc: &Html) -> Option<ElementRef<'_>> {
    let first = |css: &str| Selector::parse(css).ok().and_then(|s| doc.select(&s).next());
    if let Some(main) = first("main, [role=main]") {
        return Some(main);
    }
    let articles: Vec<ElementRef<'_>> = Selector::parse("article")
        .ok()
        .map(|s| doc.select(&s).collect())
        .unwrap_or_default();
    if let [only] = articles.as_slice() {
        return Some(*only);
    }
    first("body")
}

#[derive(Default)]
struct Writer {
    out: String,
    /// Whitespace was seen since the last word: a space goes before the next one.
    space: bool,
}

impl Writer {
    fn newline(&mut self) {
        if !self.out.is_empty() && !self.out.ends_with('\n') {
            self.out.push('\n');
        }
        self.space = false;
    }

    fn text(&mut self, text: &str, pre: bool) {
        if pre {
            self.out.push_str(text);
            self.space = false;
            return;
        }
        for (i, word) in text.split_whitespace().enumerate() {
            let at_line_start = self.out.is_empty() || self.out.ends_with(['\n', '\t', ' ']);
            if (i > 0 || self.space || text.starts_with(char::is_whitespace)) && !at_line_start {
                self.out.push(' ');
            }
            self.out.push_str(word);
            self.space = false;
        }
        if text.ends_with(char::is_whitespace) {
            self.space = true;
        }
    }

    fn element(&mut self, el: ElementRef<'_>, pre: bool) {
        let name = el.value().name();
        if SKIPPED.contains(&name) || el.value().attr("hidden").is_some() {
            return;
        }
        let heading = match name {
            "h1" => Some(1),
            "h2" => Some(2),
            "h3" => Some(3),
            "h4" => Some(4),
            "h5" => Some(5),
            "h6" => Some(6),
            _ => None,
        };
        let block = heading.is_some() || BLOCKS.contains(&name);
        if block {
            self.newline();
        }
        match (name, heading) {
            (_, Some(level)) => {
                self.out.push('\n');
                self.out.push_str(&"#".repeat(level));
                self.out.push(' ');
            }
            ("li", _) => self.out.push_str("- "),
            ("br", _) => self.newline(),
            _ => {}
        }
        let pre = pre || name == "pre";
        for child in el.children() {
            match child.value() {
                Node::Text(t) => self.text(t, pre),
                Node::Element(_) => {
                    if let Some(child) = ElementRef::wrap(child) {
                        self.element(child, pre);
                    }
                }
                _ => {}
            }
        }
        match name {
            "td" | "th" => self.out.push('\t'),
            "img" => {
                if let Some(alt) = el.value().attr("alt").filter(|a| !a.trim().is_empty()) {
                    self.text(alt, false);
                }
            }
            _ => {}
        }
        if block {
            self.newline();
            if heading.is_some() {
                self.out.push('\n');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::tidy;

    /// Scripts and styles dropped, headings and lists kept, whitespace collapsed, entities decoded.
    #[test]
    fn readable_text() {
        let html = r#"<!doctype html><html><head><title> A  page </title><style>p{color:red}</style></head>
            <body><nav><a href="/">Home</a></nav><script>var x = "<p>no</p>";</script>
            <h1>Title &amp; more</h1><p>First   paragraph,
            <b>bold</b> text.</p><ul><li>one</li><li>two</li></ul>
            <table><tr><td>a</td><td>b</td></tr></table><p hidden>secret</p></body></html>"#;
        assert_eq!(
            tidy(&html_text(html)),
            "# Title & more\n\nFirst paragraph, bold text.\n- one\n- two\na\tb"
        );
        assert_eq!(html_title(html).as_deref(), Some("A page"));
    }

    /// Confluence storage format (as Atlassian documents it): headings,
    /// paragraphs, a code macro's CDATA body kept as code, its `language`
    /// parameter dropped, a page link shown as its link body.
    #[test]
    fn confluence_storage_format() {
        let storage = r#"<h1>Runbook</h1><p>Restart the <strong>worker</strong>:</p><ac:structured-macro ac:name="code" ac:schema-version="1"><ac:parameter ac:name="language">bash</ac:parameter><ac:plain-text-body><![CDATA[systemctl restart tidemark
echo "<done>"]]></ac:plain-text-body></ac:structured-macro><p>See <ac:link><ri:page ri:content-title="Alerts" /><ac:plain-text-link-body><![CDATA[the alerts page]]></ac:plain-text-link-body></ac:link>.</p>"#;
        assert_eq!(
            tidy(&storage_text(storage)),
            "# Runbook\n\nRestart the worker:\nsystemctl restart tidemark\necho \"<done>\"\nSee the alerts page."
        );
    }

    /// A link naming its page by title only shows that title, as Confluence
    /// renders it; one with a body shows the body.
    #[test]
    fn title_only_links_show_the_title() {
        let storage = r#"<p>See <ac:link><ri:page ri:content-title="Deploy &amp; roll back" ri:space-key="ENG" /></ac:link> and <ac:link><ri:page ri:content-id="7" /></ac:link>, <ac:link><ri:page ri:content-title="X" /><ac:link-body>the <em>X</em> page</ac:link-body></ac:link>.</p>"#;
        assert_eq!(tidy(&storage_text(storage)), "See Deploy & roll back and , the X page.");
    }

    /// With a <main>, only its text counts; <pre> keeps its layout.
    #[test]
    fn main_and_pre() {
        let html =
            "<body><header>Site header</header><main><p>Body</p><pre>  a\n    b</pre></main><footer>f</footer></body>";
        assert_eq!(tidy(&html_text(html)), "Body\n  a\n    b");
    }
}
