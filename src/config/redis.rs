//! `[redis]`: where the streams, the state and the lock live, and how to log in.
//!
//! Credentials never sit in the URL that is logged: an ACL user and its
//! password come from `username` / `username_env` / `username_file` and
//! `password_env` / `password_file` (a Kubernetes Secret mounted as files, or
//! its keys as variables). `rediss://` URLs speak TLS, trusting `tls_ca_file`
//! (or the system's roots) and presenting `tls_cert_file` / `tls_key_file` to a
//! server that asks for a client certificate. The same login and TLS material
//! apply to every node: the main one and the lock nodes.
//!
//! Everything is read and parsed here, so `tidemark check-config` names an
//! unreadable file or a PEM without a certificate before anything connects.

use std::path::PathBuf;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;

use crate::db::Access;

/// `[redis]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://host:port/db` or `rediss://` for TLS. Env override: `TIDEMARK_REDIS_URL`.
    pub url: String,
    /// Independent Redis nodes for the lock (Redlock). Default: just `url`.
    #[serde(default)]
    pub lock_urls: Vec<String>,
    /// With `cluster`: more nodes of the same cluster, tried when `url` is
    /// down (a new connection needs one reachable node to learn the rest).
    #[serde(default)]
    pub cluster_seeds: Vec<String>,
    /// Key prefix. Default `tm`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Connections per pool. Default 16.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How long one Redis command may take before it fails. Default 5000 ms.
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// First retry delay after a Redis fault (jittered down to half). Default 200 ms.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest retry delay after repeated Redis faults. Default 10000 ms.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// `url` is a seed node of a Redis Cluster (the other nodes are
    /// discovered). Default false: one server.
    #[serde(default)]
    pub cluster: bool,
    /// Replicas that must acknowledge a raised fence before a run goes on
    /// (`WAIT`), so a failover cannot lose it. Default 0: do not wait.
    #[serde(default)]
    pub wait_replicas: u32,
    /// How long to wait for them. Default 1000 ms; below `response_timeout_ms`.
    #[serde(default = "default_wait_replicas_ms")]
    pub wait_replicas_ms: u64,
    /// ACL user name (not a secret). Default: Redis' `default` user.
    pub username: Option<String>,
    /// Environment variable holding the ACL user name.
    pub username_env: Option<String>,
    /// File holding the ACL user name.
    pub username_file: Option<PathBuf>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// PEM file of the CA(s) to trust for `rediss://` (default: the system's roots).
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for servers with `tls-auth-clients yes`.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
}

fn default_namespace() -> String {
    "tm".into()
}
fn default_pool_size() -> usize {
    16
}
fn default_response_timeout_ms() -> u64 {
    5000
}
fn default_retry_initial_ms() -> u64 {
    crate::retry::Backoff::default().initial.as_millis() as u64
}
fn default_wait_replicas_ms() -> u64 {
    1000
}

fn default_retry_max_ms() -> u64 {
    crate::retry::Backoff::default().max.as_millis() as u64
}

/// Checked `[redis]`.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Main node: streams and state.
    pub url: String,
    /// Lock nodes (Redlock); one entry means a single-node lock.
    pub lock_urls: Vec<String>,
    /// With `cluster`: `url` and the other seed nodes, in order.
    pub cluster_seeds: Vec<String>,
    /// Key prefix.
    pub namespace: String,
    /// Connections per pool.
    pub pool_size: usize,
    /// Per-command timeout.
    pub response_timeout: Duration,
    /// How every component retries while Redis is unavailable.
    pub retry: crate::retry::Backoff,
    /// Login and TLS material, for every node.
    pub access: Access,
    /// `url` is a seed node of a Redis Cluster.
    pub cluster: bool,
    /// Replicas that must acknowledge a raised fence, and for how long to
    /// wait for them; `None`: do not wait.
    pub wait_replicas: Option<(u32, Duration)>,
}

fn check_url(key: &str, url: &str, access_needs_tls: bool, problems: &mut Vec<String>) {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "redis" | "rediss" | "unix" | "redis+unix") => {
            if access_needs_tls && u.scheme() != "rediss" {
                problems.push(format!(
                    "{key}: {:?} is not rediss://, but tls_ca_file or tls_cert_file is set",
                    crate::db::redacted(url)
                ));
            }
        }
        _ => problems.push(format!("{key}: {:?} is not a redis:// URL", crate::db::redacted(url))),
    }
}

/// Checks `[redis]`; `block_ms` is `[sync] block_ms`, which must stay below the
/// response timeout (or every idle blocking read would end in a timeout error).
pub fn check(
    raw: RawRedis,
    block_ms: u64,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<String>,
) -> Option<RedisConfig> {
    let before = problems.len();
    let access = check_access(&raw, env, problems);
    let tls = access.as_ref().is_some_and(Access::has_tls_material);
    check_url("redis.url", &raw.url, tls, problems);
    for (i, u) in raw.lock_urls.iter().enumerate() {
        check_url(&format!("redis.lock_urls[{i}]"), u, tls, problems);
    }
    for (i, u) in raw.cluster_seeds.iter().enumerate() {
        check_url(&format!("redis.cluster_seeds[{i}]"), u, tls, problems);
    }
    if !raw.cluster_seeds.is_empty() && !raw.cluster {
        problems.push("redis.cluster_seeds: only for a Redis Cluster (set cluster = true)".to_owned());
    }
    if let Some(access) = &access {
        for (key, url) in std::iter::once(("redis.url".to_owned(), &raw.url))
            .chain(
                raw.lock_urls
                    .iter()
                    .enumerate()
                    .map(|(i, u)| (format!("redis.lock_urls[{i}]"), u)),
            )
            .chain(
                raw.cluster_seeds
                    .iter()
                    .enumerate()
                    .map(|(i, u)| (format!("redis.cluster_seeds[{i}]"), u)),
            )
        {
            let Ok(parsed) = url::Url::parse(url) else { continue };
            if parsed.password().is_some() && access.password.is_some() {
                problems.push(format!(
                    "{key}: carries a password and redis.password_env/password_file gives one too; keep one"
                ));
            }
            if !parsed.username().is_empty() && access.username.is_some() {
                problems.push(format!(
                    "{key}: carries a user name and redis.username gives one too; keep one"
                ));
            }
        }
    }
    if raw.cluster
        && let Ok(u) = url::Url::parse(&raw.url)
        && !matches!(u.path(), "" | "/" | "/0")
    {
        problems.push(format!(
            "redis.url: {:?} names database {}, but a Redis Cluster has only database 0",
            crate::db::redacted(&raw.url),
            u.path().trim_start_matches('/')
        ));
    }
    if raw.lock_urls.len() > 1 && raw.lock_urls.len().is_multiple_of(2) {
        problems.push(format!(
            "redis.lock_urls: {} nodes; use an odd number so a majority is well defined",
            raw.lock_urls.len()
        ));
    }
    if raw.namespace.is_empty() || raw.namespace.contains(['{', '}', ' ']) {
        problems.push(format!(
            "redis.namespace: {:?} must be non-empty without braces or spaces",
            raw.namespace
        ));
    }
    if raw.pool_size == 0 {
        problems.push("redis.pool_size: must be at least 1, got 0".into());
    }
    if raw.response_timeout_ms == 0 {
        problems.push("redis.response_timeout_ms: must be at least 1, got 0".into());
    } else if block_ms >= raw.response_timeout_ms {
        problems.push(format!(
            "sync.block_ms: {block_ms} ms must be below redis.response_timeout_ms ({} ms)",
            raw.response_timeout_ms
        ));
    }
    if raw.wait_replicas > 0 && (raw.wait_replicas_ms == 0 || raw.wait_replicas_ms >= raw.response_timeout_ms) {
        problems.push(format!(
            "redis.wait_replicas_ms: {} ms must be at least 1 and below redis.response_timeout_ms ({} ms)",
            raw.wait_replicas_ms, raw.response_timeout_ms
        ));
    }
    if raw.retry_initial_ms == 0 {
        problems.push("redis.retry_initial_ms: must be at least 1, got 0".into());
    } else if raw.retry_max_ms < raw.retry_initial_ms {
        problems.push(format!(
            "redis.retry_max_ms: {} ms must be at least redis.retry_initial_ms ({} ms)",
            raw.retry_max_ms, raw.retry_initial_ms
        ));
    }
    if problems.len() > before {
        return None;
    }
    let lock_urls = if raw.lock_urls.is_empty() {
        vec![raw.url.clone()]
    } else {
        raw.lock_urls
    };
    let cluster_seeds = std::iter::once(raw.url.clone()).chain(raw.cluster_seeds).collect();
    Some(RedisConfig {
        url: raw.url,
        lock_urls,
        cluster_seeds,
        namespace: raw.namespace,
        pool_size: raw.pool_size,
        response_timeout: Duration::from_millis(raw.response_timeout_ms),
        retry: crate::retry::Backoff {
            initial: Duration::from_millis(raw.retry_initial_ms),
            max: Duration::from_millis(raw.retry_max_ms),
        },
        access: access?,
        cluster: raw.cluster,
        wait_replicas: (raw.wait_replicas > 0)
            .then(|| (raw.wait_replicas, Duration::from_millis(raw.wait_replicas_ms))),
    })
}

/// The login and TLS material `[redis]` names, read now.
fn check_access(raw: &RawRedis, env: &dyn Fn(&str) -> Option<String>, problems: &mut Vec<String>) -> Option<Access> {
    let before = problems.len();
    let username = match (
        &raw.username,
        super::read_secret_pair(
            "redis",
            "username",
            raw.username_env.as_ref(),
            raw.username_file.as_ref(),
            env,
            problems,
        ),
    ) {
        (Some(_), Some(_)) => {
            problems.push("redis.username: give username, username_env or username_file, only one".into());
            None
        }
        (Some(literal), None) => Some(literal.clone()),
        (None, read) => read,
    };
    let password = super::read_secret_pair(
        "redis",
        "password",
        raw.password_env.as_ref(),
        raw.password_file.as_ref(),
        env,
        problems,
    );
    let ca_pem = raw.tls_ca_file.as_ref().and_then(|path| {
        let pem = read_file("redis.tls_ca_file", path, problems)?;
        match CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>() {
            Ok(certs) if !certs.is_empty() => Some(pem),
            Ok(_) => {
                problems.push(format!(
                    "redis.tls_ca_file: {} holds no PEM certificate",
                    path.display()
                ));
                None
            }
            Err(e) => {
                problems.push(format!("redis.tls_ca_file: {}: {e}", path.display()));
                None
            }
        }
    });
    let client_pem = match (&raw.tls_cert_file, &raw.tls_key_file) {
        (Some(cert), Some(key)) => {
            let cert = read_file("redis.tls_cert_file", cert, problems);
            let key = read_file("redis.tls_key_file", key, problems);
            cert.zip(key)
        }
        (None, None) => None,
        _ => {
            problems.push("redis.tls_cert_file: give tls_cert_file and tls_key_file together".into());
            None
        }
    };
    if username.is_some() && password.is_none() {
        problems.push("redis.username: an ACL user needs its password (password_env or password_file)".into());
    }
    if problems.len() > before {
        return None;
    }
    let access = Access {
        username,
        password,
        ca_pem,
        client_pem,
    };
    // The client library's own parse (a key it cannot use, a chain it rejects).
    if access.has_tls_material()
        && raw.url.starts_with("rediss://")
        && let Err(e) = access.connection_info(&raw.url)
    {
        problems.push(format!("redis: TLS material refused: {e}"));
        return None;
    }
    Some(access)
}

fn read_file(key: &str, path: &PathBuf, problems: &mut Vec<String>) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            problems.push(format!("{key}: {}: {e}", path.display()));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;

    /// A self-signed CA certificate made for these tests (public; its key was discarded).
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBlzCCAT2gAwIBAgIUQT7X8kQVQ6tiRiCjFXxijqCEGtswCgYIKoZIzj0EAwIw
IDEeMBwGA1UEAwwVdGlkZW1hcmstdW5pdC10ZXN0LWNhMCAXDTI2MTEzMDA3NTUz
OFoYDzIxMjYxMTA2MDc1NTM4WjAgMR4wHAYDVQQDDBV0aWRlbWFyay11bml0LXRl
c3QtY2EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATWW6sml4WDUE+LMncCqPUl
ujpKE/60Ri2EI4XZ9AJhGUHNU6J4GBTejqRcmSDkZaZnh1eFCtgGaUw1XqpDI8rU
o1MwUTAdBgNVHQ4EFgQUGdBWgMpP5UewjAGvaCQOC5Kde9wwHwYDVR0jBBgwFoAU
GdBWgMpP5UewjAGvaCQOC5Kde9wwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQD
AgNIADBFAiEAzHUTIOINjoXRRggZLWCJpjLJQ+iYLJf6nFK99MYCGCECIBbNs2qb
yggJXXfFRIgLEryhZoq7Z/K4DLeSJ2UchcWJ
-----END CERTIFICATE-----\n";

    fn parse(redis: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let text = format!("[redis]\n{redis}\n[sink]\nkind = \"directory\"\npath = \"/tmp/kb\"\n");
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::parse(&text, Path::new("t.toml"), |k| {
            env.iter().find(|(name, _)| name == k).map(|(_, v)| v.clone())
        })
        .map_err(|e| e.to_string())
    }

    /// An ACL user with its password from a file or a variable, and TLS
    /// material for `rediss://`: read, trimmed, kept beside the URL.
    #[test]
    fn acl_user_and_tls_material_are_read_beside_the_url() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, password) = (dir.path().join("ca.pem"), dir.path().join("password"));
        std::fs::write(&ca, CA_PEM).unwrap();
        std::fs::write(&password, "s3cret\n").unwrap();
        let c = parse(
            &format!(
                "url = \"rediss://redis.example:6380/2\"\nusername = \"tidemark\"\npassword_file = {password:?}\ntls_ca_file = {ca:?}"
            ),
            &[],
        )
        .unwrap();
        let access = &c.redis.access;
        assert_eq!(access.username.as_deref(), Some("tidemark"));
        assert_eq!(access.password.as_deref(), Some("s3cret"));
        assert_eq!(access.ca_pem.as_deref(), Some(CA_PEM.as_bytes()));
        assert_eq!(c.redis.url, "rediss://redis.example:6380/2");
        let info = access.connection_info(&c.redis.url).unwrap();
        assert_eq!(info.redis_settings().username(), Some("tidemark"));
        assert_eq!(info.redis_settings().db(), 2);
        assert!(!format!("{c:?}").contains("s3cret"), "the password in Debug output");

        let c = parse(
            "url = \"redis://r:6379\"\nusername_env = \"RU\"\npassword_env = \"RP\"",
            &[("RU", "bot"), ("RP", " pw \n")],
        )
        .unwrap();
        assert_eq!(c.redis.access.username.as_deref(), Some("bot"));
        assert_eq!(c.redis.access.password.as_deref(), Some("pw"));
    }

    /// Each mistake is named by its key, and no message holds the password.
    #[test]
    fn bad_redis_access_is_named_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, empty, key) = (
            dir.path().join("ca.pem"),
            dir.path().join("empty"),
            dir.path().join("k"),
        );
        std::fs::write(&ca, CA_PEM).unwrap();
        std::fs::write(&empty, "").unwrap();
        std::fs::write(&key, "not a key").unwrap();
        let missing = dir.path().join("missing");
        for (redis, env, expected) in [
            (
                format!("url = \"redis://r:6379\"\ntls_ca_file = {ca:?}"),
                vec![],
                "redis.url: \"redis://r:6379\" is not rediss://, but tls_ca_file or tls_cert_file is set".to_owned(),
            ),
            (
                format!("url = \"rediss://r:6379\"\ntls_ca_file = {empty:?}"),
                vec![],
                format!("redis.tls_ca_file: {} holds no PEM certificate", empty.display()),
            ),
            (
                format!("url = \"rediss://r:6379\"\ntls_ca_file = {missing:?}"),
                vec![],
                format!("redis.tls_ca_file: {}: ", missing.display()),
            ),
            (
                format!("url = \"rediss://r:6379\"\ntls_cert_file = {ca:?}"),
                vec![],
                "redis.tls_cert_file: give tls_cert_file and tls_key_file together".to_owned(),
            ),
            (
                format!("url = \"rediss://r:6379\"\ntls_cert_file = {ca:?}\ntls_key_file = {key:?}"),
                vec![],
                "redis: TLS material refused".to_owned(),
            ),
            (
                "url = \"redis://:inurl@r:6379\"\npassword_env = \"RP\"".to_owned(),
                vec![("RP", "s3cret")],
                "redis.url: carries a password and redis.password_env/password_file gives one too; keep one".to_owned(),
            ),
            (
                "url = \"redis://r:6379\"\npassword_env = \"RP\"\npassword_file = \"/x\"".to_owned(),
                vec![("RP", "s3cret")],
                "redis: give password_env or password_file, not both".to_owned(),
            ),
            (
                "url = \"redis://r:6379\"\npassword_env = \"UNSET\"".to_owned(),
                vec![],
                "redis.password_env: environment variable \"UNSET\" is not set".to_owned(),
            ),
            (
                format!("url = \"redis://r:6379\"\npassword_file = {empty:?}"),
                vec![],
                format!("redis.password_file: {} is empty", empty.display()),
            ),
            (
                "url = \"redis://r:6379/2\"\ncluster = true".to_owned(),
                vec![],
                "redis.url: \"redis://r:6379/2\" names database 2, but a Redis Cluster has only database 0".to_owned(),
            ),
            (
                "url = \"redis://r:6379\"\ncluster_seeds = [\"redis://r2:6379\"]".to_owned(),
                vec![],
                "redis.cluster_seeds: only for a Redis Cluster (set cluster = true)".to_owned(),
            ),
            (
                "url = \"redis://r:6379\"\ncluster = true\ncluster_seeds = [\"http://r2\"]".to_owned(),
                vec![],
                "redis.cluster_seeds[0]".to_owned(),
            ),
            (
                "url = \"redis://r:6379\"\nusername = \"bot\"".to_owned(),
                vec![],
                "redis.username: an ACL user needs its password (password_env or password_file)".to_owned(),
            ),
            (
                "url = \"redis://r:6379\"\nusername = \"bot\"\nusername_env = \"RU\"\npassword_env = \"RP\"".to_owned(),
                vec![("RU", "bot"), ("RP", "s3cret")],
                "redis.username: give username, username_env or username_file, only one".to_owned(),
            ),
        ] {
            let err = parse(&redis, &env).expect_err(&redis);
            assert!(err.contains(&expected), "{redis}\nexpected {expected:?} in:\n{err}");
            assert!(!err.contains("s3cret") && !err.contains("inurl"), "{err}");
        }
    }
}
