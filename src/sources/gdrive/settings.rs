//! The `settings` table of a `kind = "gdrive"` source: fields, defaults, validation.
//!
//! Invariants:
//! - Every problem is reported at once, as `"<key>.<field>: <problem>"`; the
//!   texts are part of the interface (operators and tests read them).
//! - Ids (`folder_id`, `drive_id`) are checked to be `[A-Za-z0-9_-]`, so they can
//!   sit inside `q` quotes and URL paths without escaping ([`is_drive_id`]).

use std::path::PathBuf;

use url::Url;

use super::api::MAX_PAGE_SIZE;
use crate::sources::secret::{self, SecretRef};
use crate::sources::settings::{
    ClientSettings, RateSettings, check_api_root, default_max_retries, default_request_timeout_secs,
};

fn default_base_url() -> Url {
    // A constant that parses; not outside input.
    Url::parse("https://www.googleapis.com").expect("constant URL parses")
}
fn default_page_size() -> u32 {
    MAX_PAGE_SIZE
}
fn default_max_file_bytes() -> u64 {
    DEFAULT_MAX_FILE_BYTES
}

/// Default `max_file_bytes`: 64 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// Settings of one Google Drive folder source.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GdriveSettings {
    /// API root (default `https://www.googleapis.com`; tests point it at the
    /// simulator). It may carry a path: a proxy or gateway prefix
    /// (`https://proxy.example.com/google`, under which `drive/v3/...` is
    /// requested) or the Drive API root itself, ending in `/drive/v3`.
    #[serde(default = "default_base_url")]
    pub base_url: Url,
    /// Id of the folder whose tree is synced (required).
    pub folder_id: String,
    /// Id of the shared drive holding the folder (default: none, My Drive). When
    /// set, `driveId`, `corpora=drive` and `includeItemsFromAllDrives` are sent.
    #[serde(default)]
    pub drive_id: Option<String>,
    /// Environment variable holding an OAuth access token (default: none).
    #[serde(default)]
    pub access_token_env: Option<String>,
    /// File holding an OAuth access token, re-read for every request (default: none).
    #[serde(default)]
    pub access_token_file: Option<PathBuf>,
    /// Items per `changes.list` / `files.list` page, 1..=1000 (default 1000).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Retries of one request after a rate limit, 5xx or network failure (default 5).
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Per-request timeout in seconds (default 30).
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
    /// The source's fleet-wide rate gate (`[sources.settings.rate]`): budget
    /// and backoff after throttles (defaults: no budget, 1 s start, 32 s cap).
    #[serde(default)]
    pub rate: RateSettings,
    /// Hours between full listings on incremental runs (default: none, never;
    /// the change feed reports deletions itself). A sweep also repairs the saved
    /// folder map should it ever drift from Drive.
    #[serde(default)]
    pub sweep_every_hours: Option<u64>,
    /// Files larger than this many bytes (Drive's `size`) are not downloaded:
    /// they are documents with their metadata, an empty `content` and a
    /// `content_note` saying why (default 64 MiB). Docs Editors exports are
    /// capped by Drive itself at 10 MB.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
}

/// Drive ids are URL-safe base64-ish; anything else is refused so ids can sit
/// inside `q` quotes and URL paths without escaping surprises.
pub(super) fn is_drive_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 200 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl GdriveSettings {
    /// Settings for `folder_id` at `base_url` with every optional field at its default.
    pub fn new(base_url: Url, folder_id: impl Into<String>) -> Self {
        Self {
            base_url,
            folder_id: folder_id.into(),
            drive_id: None,
            access_token_env: None,
            access_token_file: None,
            page_size: default_page_size(),
            max_retries: default_max_retries(),
            request_timeout_secs: default_request_timeout_secs(),
            rate: RateSettings::default(),
            sweep_every_hours: None,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }

    /// Pushes every problem found as `"{key}.<field>: <problem>"`.
    pub fn validate(&self, key: &str, problems: &mut Vec<String>) {
        check_api_root(
            &format!("{key}.base_url"),
            &self.base_url,
            "the API root (e.g. https://www.googleapis.com, or https://proxy.example.com/google/drive/v3), without a query or a fragment",
            problems,
        );
        if !is_drive_id(&self.folder_id) {
            problems.push(format!(
                "{key}.folder_id: {:?} is not a Drive id (letters, digits, '-' and '_')",
                self.folder_id
            ));
        }
        if let Some(d) = &self.drive_id
            && !is_drive_id(d)
        {
            problems.push(format!(
                "{key}.drive_id: {d:?} is not a shared drive id (letters, digits, '-' and '_')"
            ));
        }
        if !(1..=MAX_PAGE_SIZE).contains(&self.page_size) {
            problems.push(format!(
                "{key}.page_size: {} is outside 1..={MAX_PAGE_SIZE}",
                self.page_size
            ));
        }
        self.client().validate(key, problems);
        if self.max_file_bytes == 0 {
            problems.push(format!("{key}.max_file_bytes: must be at least 1"));
        }
        if self.sweep_every_hours == Some(0) {
            problems.push(format!(
                "{key}.sweep_every_hours: must be at least 1 (leave it out to never sweep)"
            ));
        }
        let (env, file) = (self.access_token_env.as_ref(), self.access_token_file.as_ref());
        secret::check_only_one(key, "access_token", env, file, problems);
        secret::check_readable(key, "access_token", env, file, problems);
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

    /// Where the access token is read from (`access_token_env` or
    /// `access_token_file`), if anywhere; it is re-read for every request.
    pub fn access_token(&self) -> Option<SecretRef> {
        SecretRef::from_keys(self.access_token_env.as_ref(), self.access_token_file.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use crate::sources::SourceSettings;

    /// Settings parse with documented defaults, and every bad value is reported by field.
    #[test]
    fn settings_defaults_and_validation() {
        let mut problems = Vec::new();
        let ok: toml::Value = toml::from_str("folder_id = \"1AbC_d-E\"").expect("toml");
        let Some(SourceSettings::Gdrive(s)) = SourceSettings::parse("gdrive", ok, "sources[0]", &mut problems) else {
            panic!("parse failed: {problems:?}");
        };
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.base_url.as_str(), "https://www.googleapis.com/");
        assert_eq!(
            (s.page_size, s.max_retries, s.request_timeout_secs, s.sweep_every_hours),
            (1000, 5, 30, None)
        );
        assert!(s.drive_id.is_none());

        let bad: toml::Value = toml::from_str(
            "base_url = \"ftp://x\"\nfolder_id = \"a' or '1\"\ndrive_id = \"\"\npage_size = 5000\nsweep_every_hours = 0\naccess_token_env = \"TIDEMARK_TEST_SURELY_UNSET_VAR\"\naccess_token_file = \"/nonexistent/token\"",
        )
        .expect("toml");
        let mut problems = Vec::new();
        SourceSettings::parse("gdrive", bad, "sources[0]", &mut problems);
        let all = problems.join("\n");
        for needle in [
            "sources[0].settings.base_url: \"ftp://x\" is not an http(s) URL",
            "sources[0].settings.folder_id: \"a' or '1\" is not a Drive id",
            "sources[0].settings.drive_id: \"\"",
            "sources[0].settings.page_size: 5000 is outside 1..=1000",
            "sources[0].settings.sweep_every_hours: must be at least 1",
            "sources[0].settings.access_token_env: set only one",
            "sources[0].settings.access_token_env: environment variable \"TIDEMARK_TEST_SURELY_UNSET_VAR\" is not set",
            "sources[0].settings.access_token_file: cannot read /nonexistent/token",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        let unknown: toml::Value = toml::from_str("folder_id = \"x\"\ncolour = 1").expect("toml");
        let mut problems = Vec::new();
        assert!(SourceSettings::parse("gdrive", unknown, "sources[1]", &mut problems).is_none());
        assert!(problems.iter().any(|p| p.contains("colour")), "{problems:?}");
    }
}
