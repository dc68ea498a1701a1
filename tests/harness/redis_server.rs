//! A real `redis-server` per test: free port, own temp dir, AOF on; killed on drop.
//!
//! Tests can kill (SIGKILL), pause (SIGSTOP), resume (SIGCONT) and restart it
//! on the same port and directory, so the AOF brings its data back.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server child process.
pub struct RedisServer {
    appendfsync: &'static str,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

impl RedisServer {
    /// Starts a server that fsyncs its AOF on every write, and waits until it answers PING.
    pub fn start() -> Self {
        Self::start_with_fsync("always")
    }

    /// Starts a server with the given `appendfsync` policy (`always`, `everysec`, `no`).
    pub fn start_with_fsync(appendfsync: &'static str) -> Self {
        let mut s = RedisServer {
            appendfsync,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--appendonly")
            .arg("yes")
            .arg("--appendfsync")
            .arg(self.appendfsync)
            .arg("--save")
            .arg("")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut c) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer within 10s", self.port);
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The data directory.
    #[allow(dead_code)]
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill").arg(sig).arg(c.id().to_string()).status();
        }
    }

    /// SIGKILL: the process dies without a chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the process stays, its socket accepts, nothing answers.
    #[allow(dead_code)]
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    #[allow(dead_code)]
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills and starts again on the same port and directory.
    #[allow(dead_code)]
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A synchronous connection, for assertions.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to test redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}
