//! What the `settings` tables of the HTTP-based connectors (Confluence, Drive,
//! HTTP) share: [`ClientSettings`] — retries, timeout, user agent and the
//! [`RateSettings`] of the source's fleet-wide rate gate, with their defaults,
//! their validation and the [`RetryingClient`] they configure — and the check
//! of a `base_url` that must be an API or site root.
//!
//! Why the TOML fields are not one embedded table: serde's `#[serde(flatten)]`
//! does not work together with `#[serde(deny_unknown_fields)]`, and a settings
//! table must keep refusing unknown keys. So each connector's settings struct
//! declares `max_retries` and `request_timeout_secs` (and `user_agent` where it
//! has one) itself, with the serde defaults below, plus one `rate` table
//! ([`RateSettings`], its own struct so a connector adds one line), and hands
//! them over as a [`ClientSettings`]; everything done with them happens here, once.
//!
//! Invariants:
//! - Problems are pushed as `"<key>.<field>: <problem>"`; the texts are part of
//!   the interface (operators and tests read them).
//! - A `user_agent` that cannot be a header value is a validation problem, and
//!   building the client fails on it too (a source built without validation).

use std::time::Duration;

use reqwest::header::HeaderValue;
use url::Url;

use super::Error;
use super::client::RetryingClient;
use crate::gate::{self, Budget, Gates, Policy};
use crate::types::SourceId;

/// Default of every connector's `max_retries` setting: retries of one request
/// after a transient failure (serde `default` for the settings tables).
pub fn default_max_retries() -> u32 {
    5
}

/// Default of every connector's `request_timeout_secs` setting, in seconds.
pub fn default_request_timeout_secs() -> u64 {
    30
}

fn default_backoff_start_ms() -> u64 {
    u64::try_from(gate::DEFAULT_BACKOFF_START.as_millis()).unwrap_or(1000)
}

fn default_backoff_cap_ms() -> u64 {
    u64::try_from(gate::DEFAULT_BACKOFF_CAP.as_millis()).unwrap_or(32_000)
}

/// The `rate` table of a connector's settings (`[sources.settings.rate]`): how
/// the source's fleet-wide rate gate behaves. Every field is optional.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateSettings {
    /// Budget for the whole fleet, in requests per second (default: none, only
    /// the source's throttles slow us down). At least 1.
    #[serde(default)]
    pub requests_per_second: Option<u32>,
    /// Requests that may go back to back within the budget (default 1). Needs
    /// `requests_per_second`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// First backoff after a throttle without `Retry-After`, in ms (default
    /// 1000); doubles per consecutive throttle, plus up to one start of jitter.
    #[serde(default = "default_backoff_start_ms")]
    pub backoff_start_ms: u64,
    /// Longest backoff, in ms (default 32000).
    #[serde(default = "default_backoff_cap_ms")]
    pub backoff_cap_ms: u64,
}

impl Default for RateSettings {
    fn default() -> Self {
        Self {
            requests_per_second: None,
            burst: None,
            backoff_start_ms: default_backoff_start_ms(),
            backoff_cap_ms: default_backoff_cap_ms(),
        }
    }
}

impl RateSettings {
    /// Pushes every problem found as `"{key}.rate.<field>: <problem>"`.
    pub fn validate(&self, key: &str, problems: &mut Vec<String>) {
        if self.requests_per_second == Some(0) {
            problems.push(format!(
                "{key}.rate.requests_per_second: must be at least 1 (leave it out for no budget)"
            ));
        }
        if self.burst == Some(0) {
            problems.push(format!("{key}.rate.burst: must be at least 1"));
        }
        if self.burst.is_some() && self.requests_per_second.is_none() {
            problems.push(format!("{key}.rate.burst: set but requests_per_second is not"));
        }
        if self.backoff_start_ms == 0 {
            problems.push(format!("{key}.rate.backoff_start_ms: must be at least 1"));
        }
        if self.backoff_cap_ms < self.backoff_start_ms {
            problems.push(format!(
                "{key}.rate.backoff_cap_ms: {} is below backoff_start_ms ({})",
                self.backoff_cap_ms, self.backoff_start_ms
            ));
        }
    }

    /// The gate policy these settings describe.
    pub fn policy(&self) -> Policy {
        let start = Duration::from_millis(self.backoff_start_ms.max(1));
        Policy {
            backoff_start: start,
            backoff_cap: Duration::from_millis(self.backoff_cap_ms).max(start),
            budget: self.requests_per_second.filter(|r| *r > 0).map(|per_sec| Budget {
                per_sec,
                burst: self.burst.unwrap_or(1).max(1),
            }),
        }
    }
}

/// How an HTTP-based connector's requests are sent: the client part of its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// Retries of one request after a rate limit, 5xx or network failure.
    pub max_retries: u32,
    /// Per-request timeout in seconds; at least 1.
    pub request_timeout_secs: u64,
    /// `User-Agent` sent with every request; `None` keeps the `reqwest::Client`'s own.
    pub user_agent: Option<String>,
    /// The source's rate gate: budget and backoff.
    pub rate: RateSettings,
}

impl Default for ClientSettings {
    fn default() -> Self {
        Self {
            max_retries: default_max_retries(),
            request_timeout_secs: default_request_timeout_secs(),
            user_agent: None,
            rate: RateSettings::default(),
        }
    }
}

impl ClientSettings {
    /// Pushes every problem found as `"{key}.<field>: <problem>"`.
    pub fn validate(&self, key: &str, problems: &mut Vec<String>) {
        if self.request_timeout_secs == 0 {
            problems.push(format!("{key}.request_timeout_secs: must be at least 1"));
        }
        if let Some(ua) = &self.user_agent
            && HeaderValue::from_str(ua).is_err()
        {
            problems.push(format!("{key}.user_agent: {ua:?} is not a valid header value"));
        }
        self.rate.validate(key, problems);
    }

    /// The client that sends, counts and retries requests for `source` as these
    /// settings say, through the source's gate from `gates` (a zero timeout,
    /// refused by validation, is read as 1 s). Fails only on a `user_agent`
    /// that cannot be a header.
    pub fn build(&self, http: reqwest::Client, source: SourceId, gates: &Gates) -> Result<RetryingClient, Error> {
        let user_agent = match &self.user_agent {
            Some(ua) => Some(HeaderValue::from_str(ua).map_err(|_| Error::Permanent {
                context: format!("source {source}: user_agent {ua:?} is not a valid header value"),
            })?),
            None => None,
        };
        let timeout = Duration::from_secs(self.request_timeout_secs.max(1));
        let gate = gates.gate(&source, self.rate.policy());
        let client = RetryingClient::new(http, source, timeout, self.max_retries).with_gate(gate);
        Ok(match user_agent {
            Some(ua) => client.with_user_agent(ua),
            None => client,
        })
    }
}

/// Checks that `url` (the value of `field`, e.g. `sources[0].settings.base_url`)
/// is an http(s) URL without a query or a fragment (a path is allowed: a
/// proxy's prefix); `must_be` finishes the sentence otherwise.
pub fn check_api_root(field: &str, url: &Url, must_be: &str, problems: &mut Vec<String>) {
    // `Url` adds a '/' to bare origins; show the URL as it was most likely written.
    let shown = url.as_str().strip_suffix('/').unwrap_or(url.as_str());
    if !matches!(url.scheme(), "http" | "https") {
        problems.push(format!("{field}: {shown:?} is not an http(s) URL"));
    } else if url.query().is_some() || url.fragment().is_some() || url.cannot_be_a_base() {
        problems.push(format!("{field}: {shown:?} must be {must_be}"));
    }
}

/// `url` as a root that relative paths are joined under: its path ends in '/'
/// (`Url::join` would otherwise replace the last segment: a proxy prefix such
/// as `/google` would be lost).
pub fn api_root(url: &Url) -> Url {
    let mut root = url.clone();
    if !root.path().ends_with('/') {
        let path = format!("{}/", root.path());
        root.set_path(&path);
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An API root may carry a path (a proxy, a gateway, a regional endpoint),
    /// never a query or a fragment; joining keeps the path.
    #[test]
    fn api_roots_with_paths() {
        let mut problems = Vec::new();
        for ok in [
            "https://www.googleapis.com",
            "https://proxy.example.com/google/drive/v3",
        ] {
            check_api_root("k", &Url::parse(ok).expect("url"), "a root", &mut problems);
        }
        assert!(problems.is_empty(), "{problems:?}");
        for bad in ["ftp://x", "https://x/a?b=1", "https://x/a#f", "mailto:a@b"] {
            check_api_root("k", &Url::parse(bad).expect("url"), "a root", &mut problems);
        }
        assert_eq!(problems.len(), 4, "{problems:?}");
        let root = api_root(&Url::parse("https://proxy.example.com/google").expect("url"));
        assert_eq!(
            root.join("drive/v3/files").expect("join").as_str(),
            "https://proxy.example.com/google/drive/v3/files"
        );
    }

    /// Defaults are the documented ones; a zero timeout and a user agent that
    /// cannot be a header are reported by field, and the latter also fails the build.
    #[test]
    fn defaults_validation_and_build() {
        let d = ClientSettings::default();
        assert_eq!(
            (d.max_retries, d.request_timeout_secs, d.user_agent.as_deref()),
            (5, 30, None)
        );
        let mut problems = Vec::new();
        d.validate("k", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");

        let bad = ClientSettings {
            request_timeout_secs: 0,
            user_agent: Some("a\nb".into()),
            ..ClientSettings::default()
        };
        bad.validate("k", &mut problems);
        assert_eq!(
            problems,
            vec![
                "k.request_timeout_secs: must be at least 1".to_owned(),
                "k.user_agent: \"a\\nb\" is not a valid header value".to_owned(),
            ]
        );
        let id = SourceId::new("web").expect("id");
        let err = bad
            .build(reqwest::Client::new(), id.clone(), &Gates::local())
            .expect_err("bad user agent");
        assert_eq!(
            err.to_string(),
            "source web: user_agent \"a\\nb\" is not a valid header value"
        );
        assert!(d.build(reqwest::Client::new(), id, &Gates::local()).is_ok());
    }

    /// The rate table: defaults (1 s start, 32 s cap, no budget), the policy it
    /// makes, and each bad value reported by field.
    #[test]
    fn rate_settings() {
        let d = RateSettings::default();
        assert_eq!(d.policy(), Policy::default());
        let r: RateSettings =
            toml::from_str("requests_per_second = 10\nburst = 4\nbackoff_start_ms = 200").expect("toml");
        let p = r.policy();
        assert_eq!(p.budget, Some(Budget { per_sec: 10, burst: 4 }));
        assert_eq!(p.backoff_start, Duration::from_millis(200));
        assert!(
            toml::from_str::<RateSettings>("rps = 1").is_err(),
            "unknown keys refused"
        );
        let bad = RateSettings {
            requests_per_second: None,
            burst: Some(0),
            backoff_start_ms: 0,
            backoff_cap_ms: 0,
        };
        let mut problems = Vec::new();
        bad.validate("k", &mut problems);
        assert_eq!(
            problems,
            vec![
                "k.rate.burst: must be at least 1".to_owned(),
                "k.rate.burst: set but requests_per_second is not".to_owned(),
                "k.rate.backoff_start_ms: must be at least 1".to_owned(),
            ]
        );
        let mut problems = Vec::new();
        RateSettings {
            requests_per_second: Some(0),
            backoff_cap_ms: 10,
            backoff_start_ms: 20,
            burst: None,
        }
        .validate("k", &mut problems);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    /// An http(s) URL is a root, with or without a path; a query is not.
    #[test]
    fn root_urls() {
        let check = |u: &str| {
            let mut problems = Vec::new();
            check_api_root("f", &Url::parse(u).expect("url"), "the root", &mut problems);
            problems
        };
        assert!(check("https://x.net").is_empty());
        assert!(check("https://x.net/proxy/confluence").is_empty());
        assert_eq!(
            check("ftp://x"),
            vec!["f: \"ftp://x\" is not an http(s) URL".to_owned()]
        );
        assert_eq!(
            check("https://x.net/?a=1"),
            vec!["f: \"https://x.net/?a=1\" must be the root".to_owned()]
        );
    }
}
