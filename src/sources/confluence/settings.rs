//! The `settings` table of a `kind = "confluence"` source: fields, defaults, validation.
//!
//! Invariants:
//! - Every problem is reported at once, as `"<key>.<field>: <problem>"`; the
//!   texts are part of the interface (operators and tests read them).
//! - `base_url` is the site root, possibly under a proxy's path prefix: the
//!   connector appends `wiki/...` itself, and host-absolute pagination links
//!   (`/wiki/...`) are put back under the prefix.
//! - An API token and an e-mail come together (HTTP Basic auth needs both), or
//!   neither (anonymous).

use std::path::PathBuf;
use std::str::FromStr;

use chrono_tz::Tz;
use url::Url;

use crate::sources::secret::{self, SecretRef};
use crate::sources::settings::{
    ClientSettings, RateSettings, check_api_root, default_max_retries, default_request_timeout_secs,
};

/// The largest `limit` the v2 page endpoints accept.
pub const MAX_PAGE_LIMIT: u32 = 250;

fn default_timezone() -> String {
    "UTC".to_owned()
}
fn default_overlap_secs() -> u64 {
    120
}
fn default_page_limit() -> u32 {
    MAX_PAGE_LIMIT
}
fn default_sweep_every_hours() -> u64 {
    24
}
fn default_restriction_scan_every() -> u32 {
    1
}
fn default_attachments() -> bool {
    true
}
fn default_max_attachment_bytes() -> u64 {
    64 * 1024 * 1024
}

/// Settings of one Confluence Cloud space source.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfluenceSettings {
    /// Site root, e.g. `https://example.atlassian.net` (required; no `/wiki`, the
    /// connector adds it).
    pub base_url: Url,
    /// Space key, e.g. `ENG` (required).
    pub space_key: String,
    /// Atlassian account e-mail for HTTP Basic auth (default: none, anonymous).
    #[serde(default)]
    pub email: Option<String>,
    /// Name of the environment variable holding the API token (default: none).
    #[serde(default)]
    pub api_token_env: Option<String>,
    /// File holding the API token; surrounding whitespace is ignored (default: none).
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    /// IANA zone in which Confluence interprets CQL date literals (default `"UTC"`).
    /// Documented as the user's profile zone; CONFCLOUD-70966 reports the site's
    /// default zone is used instead. If unsure, raise `overlap_secs` above the
    /// largest possible offset difference.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// Seconds re-read before the watermark on CQL runs (default 120), covering
    /// changes committed out of order and search-index lag.
    #[serde(default = "default_overlap_secs")]
    pub overlap_secs: u64,
    /// Pages per v2 listing call, 1..=250 (default 250).
    #[serde(default = "default_page_limit")]
    pub page_limit: u32,
    /// Hours between complete listings of the space (default 24). Other
    /// incremental runs read changes through CQL and deletions from the space's
    /// trash; only a complete listing also notices a page that was deleted *and*
    /// purged from the trash (or archived) between two runs.
    #[serde(default = "default_sweep_every_hours")]
    pub sweep_every_hours: u64,
    /// Also list everything on every Nth incremental run (default: not by run
    /// count; 1 = every run lists the whole space, as before trash listings).
    #[serde(default)]
    pub sweep_every: Option<u32>,
    /// Read every page's read restriction on every Nth incremental run
    /// (default 1: every run). A restriction set or lifted changes nothing a
    /// search of changes can see, so it reaches the knowledge base on the
    /// next run that scans (a call per 100 pages); runs between scans give
    /// the pages they report the restrictions the last scan saw. Complete
    /// listings always scan.
    #[serde(default = "default_restriction_scan_every")]
    pub restriction_scan_every: u32,
    /// Sync the pages' attachments as documents of their own (default true).
    #[serde(default = "default_attachments")]
    pub attachments: bool,
    /// Attachments larger than this are kept as metadata only, with the reason
    /// (default 64 MiB); the download stops there.
    #[serde(default = "default_max_attachment_bytes")]
    pub max_attachment_bytes: u64,
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
}

impl ConfluenceSettings {
    /// Settings for `space_key` at `base_url` with every optional field at its default.
    pub fn new(base_url: Url, space_key: impl Into<String>) -> Self {
        Self {
            base_url,
            space_key: space_key.into(),
            email: None,
            api_token_env: None,
            api_token_file: None,
            timezone: default_timezone(),
            overlap_secs: default_overlap_secs(),
            page_limit: default_page_limit(),
            sweep_every_hours: default_sweep_every_hours(),
            sweep_every: None,
            restriction_scan_every: default_restriction_scan_every(),
            attachments: default_attachments(),
            max_attachment_bytes: default_max_attachment_bytes(),
            max_retries: default_max_retries(),
            request_timeout_secs: default_request_timeout_secs(),
            rate: RateSettings::default(),
        }
    }

    /// Pushes every problem found as `"{key}.<field>: <problem>"`.
    pub fn validate(&self, key: &str, problems: &mut Vec<String>) {
        // The connector appends `wiki/...` itself; a path (a proxy's prefix) is
        // kept, and host-absolute pagination links are put back under it.
        check_api_root(
            &format!("{key}.base_url"),
            &self.base_url,
            "the site root (e.g. https://example.atlassian.net, or a proxy's https://proxy.example.com/confluence), without /wiki, a query or a fragment",
            problems,
        );
        if self.base_url.path().trim_end_matches('/').ends_with("/wiki") {
            let shown = crate::redact::url(self.base_url.as_str());
            problems.push(format!(
                "{key}.base_url: {shown:?} ends in /wiki; give the site root (tidemark adds /wiki itself)"
            ));
        }
        if self.space_key.trim().is_empty() {
            problems.push(format!("{key}.space_key: must not be empty"));
        }
        if Tz::from_str(&self.timezone).is_err() {
            problems.push(format!(
                "{key}.timezone: {:?} is not an IANA time zone (e.g. \"Europe/Paris\")",
                self.timezone
            ));
        }
        if !(1..=MAX_PAGE_LIMIT).contains(&self.page_limit) {
            problems.push(format!(
                "{key}.page_limit: {} is outside 1..={MAX_PAGE_LIMIT}",
                self.page_limit
            ));
        }
        if self.sweep_every == Some(0) {
            problems.push(format!(
                "{key}.sweep_every: must be at least 1 (1 = every incremental run lists everything)"
            ));
        }
        if self.restriction_scan_every == 0 {
            problems.push(format!(
                "{key}.restriction_scan_every: must be at least 1 (1 = every incremental run reads every page's restrictions)"
            ));
        }
        if self.sweep_every_hours == 0 {
            problems.push(format!(
                "{key}.sweep_every_hours: must be at least 1 (hours between complete listings)"
            ));
        }
        self.client().validate(key, problems);
        let (env, file) = (self.api_token_env.as_ref(), self.api_token_file.as_ref());
        secret::check_only_one(key, "api_token", env, file, problems);
        let token_configured = self.api_token_env.is_some() || self.api_token_file.is_some();
        if token_configured && self.email.is_none() {
            problems.push(format!(
                "{key}.email: an API token is configured but no email (Basic auth needs both)"
            ));
        }
        if self.email.is_some() && !token_configured {
            problems.push(format!(
                "{key}.email: set but neither api_token_env nor api_token_file is"
            ));
        }
        secret::check_readable(key, "api_token", env, file, problems);
    }

    /// How requests are sent: retries and timeout.
    pub fn client(&self) -> ClientSettings {
        ClientSettings {
            max_retries: self.max_retries,
            request_timeout_secs: self.request_timeout_secs,
            user_agent: None,
            rate: self.rate.clone(),
        }
    }

    /// Where the API token is read from (`api_token_env` or `api_token_file`), if anywhere.
    pub fn api_token(&self) -> Option<SecretRef> {
        SecretRef::from_keys(self.api_token_env.as_ref(), self.api_token_file.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use crate::sources::SourceSettings;

    /// Settings parse with documented defaults, and every bad value is reported by field.
    #[test]
    fn settings_defaults_and_validation() {
        let mut problems = Vec::new();
        let ok: toml::Value =
            toml::from_str("base_url = \"https://example.atlassian.net\"\nspace_key = \"ENG\"").expect("toml");
        let Some(SourceSettings::Confluence(s)) = SourceSettings::parse("confluence", ok, "sources[0]", &mut problems)
        else {
            panic!("parse failed: {problems:?}");
        };
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            (
                s.timezone.as_str(),
                s.overlap_secs,
                s.page_limit,
                s.sweep_every,
                s.sweep_every_hours
            ),
            ("UTC", 120, 250, None, 24)
        );
        assert_eq!((s.max_retries, s.request_timeout_secs), (5, 30));
        assert_eq!((s.attachments, s.max_attachment_bytes), (true, 64 << 20));

        let bad: toml::Value = toml::from_str(
            "base_url = \"ftp://x\"\nspace_key = \"ENG\"\ntimezone = \"Mars/Olympus\"\npage_limit = 500\nsweep_every = 0\nsweep_every_hours = 0\napi_token_env = \"TIDEMARK_TEST_SURELY_UNSET_VAR\"",
        )
        .expect("toml");
        let mut problems = Vec::new();
        SourceSettings::parse("confluence", bad, "sources[0]", &mut problems);
        let all = problems.join("\n");
        for needle in [
            "sources[0].settings.base_url: \"ftp://x\" is not an http(s) URL",
            "sources[0].settings.timezone: \"Mars/Olympus\"",
            "sources[0].settings.page_limit: 500 is outside 1..=250",
            "sources[0].settings.sweep_every: must be at least 1",
            "sources[0].settings.sweep_every_hours: must be at least 1",
            "sources[0].settings.api_token_env: environment variable \"TIDEMARK_TEST_SURELY_UNSET_VAR\" is not set",
            "sources[0].settings.email: an API token is configured but no email",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }

        let unknown: toml::Value =
            toml::from_str("base_url = \"https://x.net\"\nspace_key = \"E\"\ncolour = 1").expect("toml");
        let mut problems = Vec::new();
        assert!(SourceSettings::parse("confluence", unknown, "sources[1]", &mut problems).is_none());
        assert!(problems.iter().any(|p| p.contains("colour")), "{problems:?}");
    }
}
