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
    /// Flushes to disk as a production server does (benchmarks); tests skip it.
    durable: bool,
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
        Self::start_with(false)
    }

    /// [`PgServer::start`] with `fsync` on: commits reach the disk, as on a
    /// production server (for benchmarks that compare sinks' durable writes).
    #[allow(dead_code, reason = "used by benches/sync.rs, which shares this harness")]
    pub fn start_durable() -> Self {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> Self {
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
            durable,
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
            .args(if self.durable {
                [].as_slice()
            } else {
                ["-c", "fsync=off", "-c", "full_page_writes=off"].as_slice()
            })
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

/// A TCP proxy in front of a server that counts round trips: the messages
/// after which a PostgreSQL client waits for the server's answer (`Sync` in
/// the extended protocol, `Query` in the simple one). Reading the wire is the
/// only count that does not trust the sink's own idea of what it sends.
pub struct RoundTrips {
    pub port: u16,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl RoundTrips {
    /// Listens on a free port and forwards every connection to `upstream`.
    pub fn proxy(upstream: u16) -> Self {
        use std::sync::atomic::AtomicU64;
        let count = std::sync::Arc::new(AtomicU64::new(0));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let counted = std::sync::Arc::clone(&count);
        super::serve_on_own_thread(listener, move |listener| async move {
            while let Ok((client, _)) = listener.accept().await {
                let counted = std::sync::Arc::clone(&counted);
                tokio::spawn(async move {
                    if let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = relay(client, server, &counted).await;
                    }
                });
            }
        });
        RoundTrips { port, count }
    }

    /// `postgres://tidemark@127.0.0.1:PORT/postgres` through the proxy.
    pub fn url(&self) -> String {
        format!("postgres://tidemark@127.0.0.1:{}/postgres", self.port)
    }

    /// Round trips so far, over every connection.
    pub fn count(&self) -> u64 {
        self.count.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Copies server → client as is, and client → server message by message,
/// counting the messages that end a round trip.
async fn relay(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    count: &std::sync::atomic::AtomicU64,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let answers = tokio::spawn(async move { tokio::io::copy(&mut server_read, &mut client_write).await });
    // Untyped first messages (length, then a code): SSL or GSS encryption
    // requests, answered and followed by another, then the startup message.
    loop {
        let len = client_read.read_u32().await?;
        let mut body = vec![0; (len as usize).saturating_sub(4)];
        client_read.read_exact(&mut body).await?;
        server_write.write_u32(len).await?;
        server_write.write_all(&body).await?;
        let code = body.get(..4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
        if !matches!(code, Some(80_877_103 | 80_877_104)) {
            break;
        }
    }
    loop {
        let kind = client_read.read_u8().await?;
        let len = client_read.read_u32().await?;
        let mut body = vec![0; (len as usize).saturating_sub(4)];
        client_read.read_exact(&mut body).await?;
        if kind == b'S' || kind == b'Q' {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        server_write.write_u8(kind).await?;
        server_write.write_u32(len).await?;
        server_write.write_all(&body).await?;
        if kind == b'X' {
            break;
        }
    }
    answers.abort();
    Ok(())
}
