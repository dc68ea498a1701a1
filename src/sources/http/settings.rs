//! The `settings` table of a `kind = "http"` source: fields, defaults, validation.
//!
//! Invariants:
//! - Every problem is reported at once, as `"<key>.<field>: <problem>"`; the
//!   texts are part of the interface (operators and tests read them).
//! - `urls` and `sitemap` together name at least one page, all http(s).

use url::Url;

use crate::sources::settings::{ClientSettings, RateSettings, default_max_retries, default_request_timeout_secs};

/// Most concurrent requests a source may configure.
pub const MAX_CONCURRENCY: usize = 64;

fn default_concurrency() -> usize {
    8
}

/// Settings of one web-page source.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Pages to sync (default empty; `urls` and `sitemap` together must name at least one).
    #[serde(default)]
    pub urls: Vec<Url>,
    /// A sitemap (`<urlset>`, or a `<sitemapindex>` followed one level) read on every run (default none).
    #[serde(default)]
    pub sitemap: Option<Url>,
    /// Retries of one request after 429, 5xx or a network failure (default 5).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Per-request timeout in seconds (default 30).
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// The source's fleet-wide rate gate (`[sources.settings.rate]`): budget
    /// and backoff after throttles (defaults: no budget, 1 s start, 32 s cap).
    #[serde(default)]
    pub rate: RateSettings,
    /// `User-Agent` sent with every request (default: the client's, `tidemark/<version>`).
    #[serde(default)]
    pub user_agent: Option<String>,
    /// Requests in flight at once for one feed page or fetch, 1..=64 (default 8).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Bodies longer than this many bytes (after decompression) are not read
    /// whole: the page is kept with its metadata, an empty `content` and a
    /// `content_note` (default 16 MiB).
    #[serde(default = "default_max_page_bytes")]
    pub max_page_bytes: u64,
    /// Also keep each HTML page as served (decoded to UTF-8) in the document's
    /// `raw_html`, for pipelines that parse it themselves (default false:
    /// `content` is the page's readable text).
    #[serde(default)]
    pub keep_raw_html: bool,
    /// Who may read these pages, as principals (default `["anyone"]`: public
    /// pages; an intranet behind a login names its readers, e.g. `["domain:example.com"]`).
    #[serde(default = "default_readers")]
    pub readers: Vec<String>,
}

fn default_readers() -> Vec<String> {
    vec![crate::permissions::ANYONE.to_owned()]
}

fn default_max_page_bytes() -> u64 {
    16 * 1024 * 1024
}

impl HttpSettings {
    /// Who may read every page of the source.
    pub fn permissions(&self) -> crate::permissions::Permissions {
        crate::permissions::Permissions::new(&self.readers, serde_json::Value::Null)
    }

    /// Settings for `urls` with every optional field at its default.
    pub fn new(urls: Vec<Url>) -> Self {
        Self {
            urls,
            sitemap: None,
            max_retries: default_max_retries(),
            request_timeout_secs: default_request_timeout_secs(),
            rate: RateSettings::default(),
            user_agent: None,
            concurrency: default_concurrency(),
            max_page_bytes: default_max_page_bytes(),
            keep_raw_html: false,
            readers: default_readers(),
        }
    }

    /// Pushes every problem found as `"{key}.<field>: <problem>"`.
    pub fn validate(&self, key: &str, problems: &mut Vec<String>) {
        if self.readers.is_empty() {
            problems.push(format!(
                "{key}.readers: empty, so nobody could read these pages (public pages: [\"anyone\"])"
            ));
        }
        for (i, reader) in self.readers.iter().enumerate() {
            if let Err(e) = crate::permissions::check(reader) {
                problems.push(format!("{key}.readers[{i}]: {e}"));
            }
        }
        if self.urls.is_empty() && self.sitemap.is_none() {
            problems.push(format!("{key}.urls: set urls, sitemap, or both"));
        }
        for (i, url) in self.urls.iter().enumerate() {
            if !matches!(url.scheme(), "http" | "https") {
                problems.push(format!("{key}.urls[{i}]: {:?} is not an http(s) URL", url.as_str()));
            }
        }
        if let Some(url) = &self.sitemap
            && !matches!(url.scheme(), "http" | "https")
        {
            problems.push(format!("{key}.sitemap: {:?} is not an http(s) URL", url.as_str()));
        }
        self.client().validate(key, problems);
        if self.max_page_bytes == 0 {
            problems.push(format!("{key}.max_page_bytes: must be at least 1"));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            problems.push(format!(
                "{key}.concurrency: {} is outside 1..={MAX_CONCURRENCY}",
                self.concurrency
            ));
        }
    }

    /// How requests are sent: retries, timeout and user agent.
    pub fn client(&self) -> ClientSettings {
        ClientSettings {
            max_retries: self.max_retries,
            request_timeout_secs: self.request_timeout_secs,
            user_agent: self.user_agent.clone(),
            rate: self.rate.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::sources::SourceSettings;

    /// Settings parse with documented defaults, and every bad value is reported by field.
    #[test]
    fn settings_defaults_and_validation() {
        let mut problems = Vec::new();
        let ok: toml::Value = toml::from_str("urls = [\"http://h/a\"]").expect("toml");
        let Some(SourceSettings::Http(s)) = SourceSettings::parse("http", ok, "sources[0]", &mut problems) else {
            panic!("parse failed: {problems:?}");
        };
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!((s.max_retries, s.request_timeout_secs, s.concurrency), (5, 30, 8));
        assert!(s.user_agent.is_none() && s.sitemap.is_none());

        let bad: toml::Value =
            toml::from_str("urls = [\"ftp://h/a\"]\nconcurrency = 0\nrequest_timeout_secs = 0\nuser_agent = \"a\\nb\"")
                .expect("toml");
        let mut problems = Vec::new();
        SourceSettings::parse("http", bad, "sources[1]", &mut problems);
        let all = problems.join("\n");
        for needle in [
            "sources[1].settings.urls[0]: \"ftp://h/a\" is not an http(s) URL",
            "sources[1].settings.concurrency: 0 is outside 1..=64",
            "sources[1].settings.request_timeout_secs: must be at least 1",
            "sources[1].settings.user_agent",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        let mut problems = Vec::new();
        SourceSettings::parse(
            "http",
            toml::from_str("max_retries = 1").expect("toml"),
            "s",
            &mut problems,
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("s.settings.urls: set urls, sitemap")),
            "{problems:?}"
        );
    }
}
