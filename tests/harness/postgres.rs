//! A throwaway PostgreSQL server per test: `initdb` into a temp dir, then
//! `postgres` on a free port, as a child the test can kill. Debian's
//! `postgresql` package puts the binaries in `/usr/lib/postgresql/<v>/bin`
//! (the Makefile installs it when missing). PostgreSQL refuses to run as
//! root, so under root both run as the `postgres` user the package creates
//! (`setpriv`, which execs: the child is the server itself).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::free_port;

/// A running server; killed and its data removed on drop.
pub struct PgServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

/// Where `initdb` and `postgres` are: on `PATH`, else the newest Debian install.
fn bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .map(|v| v.join("bin").join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program args...`, as the `postgres` user when we are root.
fn as_db_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"])
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl PgServer {
    /// Initialises a cluster and starts it; waits until it accepts connections.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("tidemark-pg")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown to the postgres user (the postgresql package creates it)");
        }
        let out = as_db_user(&bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "tidemark",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdout(Stdio::null())
            .output()
            .expect("initdb must be installed (make deps installs postgresql)");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let mut server = PgServer {
            child: None,
            port: free_port(),
            dir,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let data = self.dir.path().join("data");
        let child = as_db_user(&bin("postgres"))
            // Its own process group: a kill takes the backends with the postmaster,
            // so a restart finds no old server still holding the data directory.
            .process_group(0)
            .arg("-D")
            .arg(&data)
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1", "-k"])
            .arg(self.dir.path())
            // A killed server must keep every commit it acknowledged, as a real one
            // does: commits wait for their WAL write (`synchronous_commit` stays on).
            // Only the flush to disk is skipped: the tests kill processes, not machines.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "postgres did not listen on {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
        // Listening is not yet accepting logins: wait for a query to pass.
        let url = self.url();
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready = || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    Ok((client, conn)) => {
                        tokio::spawn(conn);
                        client.simple_query("SELECT 1").await.is_ok()
                    }
                    Err(_) => false,
                }
            })
        };
        while !std::thread::scope(|s| s.spawn(ready).join().unwrap_or(false)) {
            assert!(
                Instant::now() < deadline,
                "postgres on {} did not accept logins",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `postgres://tidemark@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://tidemark@127.0.0.1:{}/postgres", self.port)
    }

    /// SIGKILL, as a crash would: no shutdown checkpoint.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The whole process group (the postmaster leads it). Not `kill -KILL -PGID`:
            // procps-ng 4.0's kill reads that as "every process" and takes the machine down.
            let group = c.id().to_string();
            let _ = Command::new("pkill").args(["-KILL", "-g", &group]).status();
            let _ = c.kill();
            let _ = c.wait();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Command::new("pgrep")
                .args(["-g", &group])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts the server again on the same data and port (crash recovery runs).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.kill();
    }
}
