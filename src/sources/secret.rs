//! Secrets named in the configuration: [`SecretRef`], the one reader of a
//! credential from an environment variable or a file, used by Confluence's API
//! token, Drive's access token and the webhook secret.
//!
//! A settings table names a secret with a pair of keys, `<name>_env` (a
//! variable's name) and `<name>_file` (a path): `api_token_env` /
//! `api_token_file`, `access_token_env` / `access_token_file`, `secret_env` /
//! `secret_file`. The file never holds the secret itself.
//!
//! Invariants:
//! - A secret is read as text and trimmed: surrounding whitespace (a file's
//!   trailing newline) is never part of it.
//! - Errors name the key and the variable or path, never the value:
//!   `api_token_file /run/token: No such file or directory (os error 2)`.
//! - Validation ([`check_only_one`], [`check_readable`]) only looks: is the
//!   variable set, can the file be stat'ed; reading happens when the secret is used.

use std::env::VarError;
use std::path::PathBuf;

/// Where a secret is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// An environment variable, by name.
    Env(String),
    /// A file, re-read on every [`SecretRef::read`].
    File(PathBuf),
}

/// Why a secret could not be read; `key` is the settings key that named it
/// (e.g. `api_token_env`). Displays as `<key> <variable or path>: <cause>`.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The variable is not set (or not Unicode).
    #[error("{key} {var:?}: {source}")]
    Env {
        /// The settings key, `<name>_env`.
        key: String,
        /// The variable.
        var: String,
        /// What the lookup said.
        source: VarError,
    },
    /// The file could not be read as text.
    #[error("{key} {}: {source}", path.display())]
    File {
        /// The settings key, `<name>_file`.
        key: String,
        /// The file.
        path: PathBuf,
        /// What reading it said.
        source: std::io::Error,
    },
}

impl SecretRef {
    /// The secret a `<name>_env` / `<name>_file` pair of keys names, if any;
    /// the variable wins when both are set (validation refuses that).
    pub fn from_keys(env: Option<&String>, file: Option<&PathBuf>) -> Option<SecretRef> {
        match (env, file) {
            (Some(var), _) => Some(SecretRef::Env(var.clone())),
            (None, Some(path)) => Some(SecretRef::File(path.clone())),
            (None, None) => None,
        }
    }

    /// Reads the secret now, trimmed, from the process environment or the file;
    /// `name` is the keys' stem (`api_token`), for errors.
    pub fn read(&self, name: &str) -> Result<String, SecretError> {
        self.read_with(name, &|var| std::env::var(var))
    }

    /// [`SecretRef::read`] with the environment given by `env` (configuration
    /// checks take it as a parameter, so tests need not touch the process env).
    pub fn read_with(&self, name: &str, env: &dyn Fn(&str) -> Result<String, VarError>) -> Result<String, SecretError> {
        match self {
            SecretRef::Env(var) => match env(var) {
                Ok(value) => Ok(value.trim().to_owned()),
                Err(source) => Err(SecretError::Env {
                    key: format!("{name}_env"),
                    var: var.clone(),
                    source,
                }),
            },
            SecretRef::File(path) => match std::fs::read_to_string(path) {
                Ok(text) => Ok(text.trim().to_owned()),
                Err(source) => Err(SecretError::File {
                    key: format!("{name}_file"),
                    path: path.clone(),
                    source,
                }),
            },
        }
    }

    /// [`SecretRef::read`] off the async runtime's threads (a file read blocks).
    pub async fn read_async(&self, name: &str) -> Result<String, SecretError> {
        match self {
            SecretRef::Env(_) => self.read(name),
            SecretRef::File(path) => {
                let (secret, stem) = (self.clone(), name.to_owned());
                tokio::task::spawn_blocking(move || secret.read(&stem))
                    .await
                    .unwrap_or_else(|e| {
                        Err(SecretError::File {
                            key: format!("{name}_file"),
                            path: path.clone(),
                            source: std::io::Error::other(e),
                        })
                    })
            }
        }
    }

    /// Pushes a problem if the secret cannot be read now, without reading it:
    /// `"{key}.<name>_env: environment variable \"X\" is not set"` or
    /// `"{key}.<name>_file: cannot read <path>: <cause>"`.
    pub fn check(&self, key: &str, name: &str, problems: &mut Vec<String>) {
        match self {
            SecretRef::Env(var) => {
                if std::env::var_os(var).is_none() {
                    problems.push(format!("{key}.{name}_env: environment variable {var:?} is not set"));
                }
            }
            SecretRef::File(path) => {
                if let Err(e) = std::fs::metadata(path) {
                    problems.push(format!("{key}.{name}_file: cannot read {}: {e}", path.display()));
                }
            }
        }
    }
}

/// Pushes a problem if both `<name>_env` and `<name>_file` are set.
pub fn check_only_one(key: &str, name: &str, env: Option<&String>, file: Option<&PathBuf>, problems: &mut Vec<String>) {
    if env.is_some() && file.is_some() {
        problems.push(format!("{key}.{name}_env: set only one of {name}_env and {name}_file"));
    }
}

/// [`SecretRef::check`]s each of `<name>_env` and `<name>_file` that is set.
pub fn check_readable(key: &str, name: &str, env: Option<&String>, file: Option<&PathBuf>, problems: &mut Vec<String>) {
    if let Some(var) = env {
        SecretRef::Env(var.clone()).check(key, name, problems);
    }
    if let Some(path) = file {
        SecretRef::File(path.clone()).check(key, name, problems);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values are trimmed; errors name the key and the variable or path.
    #[test]
    fn reads_trimmed_and_errors_name_the_key() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "  s3cret\n").expect("write");
        assert_eq!(SecretRef::File(path.clone()).read("api_token").expect("file"), "s3cret");
        let env = |var: &str| match var {
            "TOKEN" => Ok(" t0ken \n".to_owned()),
            _ => Err(VarError::NotPresent),
        };
        let by_env = |var: &str| SecretRef::Env(var.to_owned()).read_with("access_token", &env);
        assert_eq!(by_env("TOKEN").expect("env"), "t0ken");
        assert_eq!(
            by_env("NOPE").expect_err("unset").to_string(),
            "access_token_env \"NOPE\": environment variable not found"
        );
        let missing = dir.path().join("missing");
        let err = SecretRef::File(missing.clone()).read("secret").expect_err("missing");
        assert!(
            err.to_string()
                .starts_with(&format!("secret_file {}: ", missing.display())),
            "{err}"
        );
        assert_eq!(
            SecretRef::from_keys(Some(&"V".to_owned()), Some(&path)),
            Some(SecretRef::Env("V".into()))
        );
        assert_eq!(
            SecretRef::from_keys(None, Some(&path)),
            Some(SecretRef::File(path.clone()))
        );
        assert_eq!(SecretRef::from_keys(None, None), None);
    }

    /// The async reader reads what the sync one does.
    #[tokio::test]
    async fn async_read_matches() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\n").expect("write");
        assert_eq!(
            SecretRef::File(path).read_async("access_token").await.expect("read"),
            "abc"
        );
    }

    /// Validation texts, by key.
    #[test]
    fn checks() {
        let mut problems = Vec::new();
        let var = "TIDEMARK_TEST_SURELY_UNSET_VAR".to_owned();
        let file = PathBuf::from("/nonexistent/token");
        check_only_one("k", "api_token", Some(&var), Some(&file), &mut problems);
        check_readable("k", "api_token", Some(&var), Some(&file), &mut problems);
        assert_eq!(
            problems[0],
            "k.api_token_env: set only one of api_token_env and api_token_file"
        );
        assert_eq!(
            problems[1],
            "k.api_token_env: environment variable \"TIDEMARK_TEST_SURELY_UNSET_VAR\" is not set"
        );
        assert!(
            problems[2].starts_with("k.api_token_file: cannot read /nonexistent/token: "),
            "{problems:?}"
        );
        assert_eq!(problems.len(), 3);
    }
}
