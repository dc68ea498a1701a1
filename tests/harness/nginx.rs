//! A real `nginx` per test, serving a temp directory the test edits: free port,
//! own temp dir with its own `nginx.conf`, pid, logs and temp paths inside it,
//! `daemon off` in the foreground; killed on drop.
//!
//! nginx sends `ETag` (mtime + size) and `Last-Modified` for static files and
//! answers `If-None-Match` / `If-Modified-Since` with 304 by default, which is
//! exactly what the HTTP connector relies on. `master_process off` keeps it to
//! one process running as the test's user, so it can read the 0700 temp dir
//! and a single kill stops it.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use super::redis_server::free_port;

/// Where Debian's package installs it (`make deps` installs it when missing).
const NGINX: &str = "/usr/sbin/nginx";

/// An nginx child process serving [`Nginx::root`].
pub struct Nginx {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Nginx {
    /// Writes the config, starts nginx and waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// As [`Nginx::start`], with `locations` (nginx `location` blocks, e.g. a
    /// `proxy_pass` under a path prefix) added to the server before the static root.
    pub fn start_with(locations: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let d = dir.path();
        std::fs::create_dir_all(d.join("www")).expect("www dir");
        std::fs::create_dir_all(d.join("tmp")).expect("tmp dir");
        let conf = format!(
            r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    types {{ text/html html; application/xml xml; text/plain txt; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {d}/www;
        {locations}
        location / {{ }}
    }}
}}
"#,
            d = d.display(),
            locations = locations
        );
        std::fs::write(d.join("nginx.conf"), conf).expect("write nginx.conf");
        let mut s = Nginx { port, dir, child: None };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            // Startup errors go here too, not to /var/log/nginx (nginx >= 1.19.5).
            .arg("-e")
            .arg(d.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx must be installed at /usr/sbin/nginx (make deps installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(c) = &mut self.child
                && let Ok(Some(status)) = c.try_wait()
            {
                let log = std::fs::read_to_string(d.join("error.log")).unwrap_or_default();
                panic!("nginx exited at startup ({status}):\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("nginx on port {} did not accept connections within 10s", self.port);
    }

    /// The directory nginx serves.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("www")
    }

    /// `http://127.0.0.1:<port>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, path.trim_start_matches('/'))
    }

    /// Writes `rel` under the root with modification time `mtime`, so its ETag
    /// (mtime + size) surely changes even within the same second.
    pub fn write(&self, rel: &str, body: &str, mtime: SystemTime) {
        write_with_mtime(&self.root().join(rel), body, mtime);
    }

    /// Removes `rel` from the root.
    pub fn remove(&self, rel: &str) {
        std::fs::remove_file(self.root().join(rel)).expect("remove served file");
    }

    /// SIGKILL: connections are refused from now on.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Writes `body` to `path` (creating directories) and sets its modification time.
pub fn write_with_mtime(path: &Path, body: &str, mtime: SystemTime) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create parent dirs");
    }
    std::fs::write(path, body).expect("write file");
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(mtime))
        .expect("set mtime");
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}
