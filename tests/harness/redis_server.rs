//! A real `redis-server` per test: free port, own temp dir, AOF on (or no
//! persistence at all, [`RedisServer::start_ephemeral`]); killed on drop.
//!
//! Tests can kill (SIGKILL), pause (SIGSTOP), resume (SIGCONT) and restart it
//! on the same port and directory, so the AOF brings its data back, or
//! restart it empty ([`RedisServer::restart_empty`]).
//!
//! [`RedisServer::start_secure`] also listens for TLS (certificates from a
//! [`ThrowawayCa`], client certificates required) and has an ACL user limited
//! to tidemark's key prefix: what a hardened production Redis looks like. Its
//! plain port stays open to the test's own assertions, as the `default` user.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tls::ThrowawayCa;

/// The ACL user tidemark logs in as on a secure server: every command but the
/// dangerous ones (plus `INFO`, which the lock reads for the node's run id and
/// uptime), on keys under `tm:` only, and no Pub/Sub channel. The README's
/// operations section recommends the same rule.
pub const ACL_RULE: &[&str] = &["on", "~tm:*", "resetchannels", "+@all", "-@dangerous", "+info"];

/// TLS and ACL settings of a secure server.
#[derive(Clone, Debug)]
pub struct Secure {
    pub tls_port: u16,
    pub ca: ThrowawayCa,
    pub username: String,
    pub password: String,
    /// Files holding the user name and the password, as a mounted Secret would.
    pub username_file: PathBuf,
    pub password_file: PathBuf,
}

/// A redis-server child process.
pub struct RedisServer {
    /// `None`: no AOF and no RDB, nothing survives a restart.
    appendfsync: Option<&'static str>,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    secure: Option<Secure>,
    /// A node of a Redis Cluster ([`RedisCluster`]): its cluster bus port.
    /// Chosen free like the client port (Redis 7's `cluster-port`), not the
    /// default port + 10000, which may be taken or past 65535.
    cluster_bus: Option<u16>,
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
        Self::start_persisting(Some(appendfsync))
    }

    /// Starts a server with no persistence (no AOF, no RDB): a restart comes back empty.
    #[allow(dead_code)]
    pub fn start_ephemeral() -> Self {
        Self::start_persisting(None)
    }

    fn start_persisting(appendfsync: Option<&'static str>) -> Self {
        let mut s = RedisServer {
            appendfsync,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
            secure: None,
            cluster_bus: None,
        };
        s.spawn();
        s
    }

    /// Starts a server (AOF fsynced always) that also listens for TLS and
    /// requires client certificates there, with an ACL user ([`ACL_RULE`]).
    #[allow(dead_code)]
    pub fn start_secure() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).expect("certs dir");
        let ca = ThrowawayCa::make(&certs);
        let password = format!("pw-{}", uuid::Uuid::new_v4().simple());
        let username_file = certs.join("username");
        let password_file = certs.join("password");
        std::fs::write(&username_file, "tidemark\n").expect("write username");
        std::fs::write(&password_file, format!("{password}\n")).expect("write password");
        let mut s = RedisServer {
            appendfsync: Some("always"),
            port: free_port(),
            dir,
            child: None,
            cluster_bus: None,
            secure: Some(Secure {
                tls_port: free_port(),
                ca,
                username: "tidemark".into(),
                password,
                username_file,
                password_file,
            }),
        };
        s.spawn();
        s
    }

    /// The TLS and ACL settings, for a server started with [`RedisServer::start_secure`].
    #[allow(dead_code)]
    pub fn secure(&self) -> Option<&Secure> {
        self.secure.as_ref()
    }

    /// The `[redis]` lines a tidemark config uses to reach this server: its
    /// plain URL, or for a secure one the `rediss://` URL with the ACL user
    /// and the certificates given as files.
    pub fn client_toml(&self) -> String {
        match &self.secure {
            None => format!("url = {:?}", self.url()),
            Some(s) => format!(
                "url = \"rediss://127.0.0.1:{}\"\nusername_file = {:?}\npassword_file = {:?}\ntls_ca_file = {:?}\ntls_cert_file = {:?}\ntls_key_file = {:?}",
                s.tls_port, s.username_file, s.password_file, s.ca.ca, s.ca.client_cert, s.ca.client_key
            ),
        }
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("");
        match self.appendfsync {
            Some(fsync) => cmd.arg("--appendonly").arg("yes").arg("--appendfsync").arg(fsync),
            None => cmd.arg("--appendonly").arg("no"),
        };
        if let Some(bus) = self.cluster_bus {
            cmd.arg("--cluster-enabled")
                .arg("yes")
                .arg("--cluster-port")
                .arg(bus.to_string())
                .arg("--cluster-config-file")
                .arg(self.dir.path().join("nodes.conf"))
                .arg("--cluster-node-timeout")
                .arg("2000");
        }
        if let Some(s) = &self.secure {
            cmd.arg("--tls-port")
                .arg(s.tls_port.to_string())
                .arg("--tls-cert-file")
                .arg(&s.ca.server_cert)
                .arg("--tls-key-file")
                .arg(&s.ca.server_key)
                .arg("--tls-ca-cert-file")
                .arg(&s.ca.ca)
                .arg("--tls-auth-clients")
                .arg("yes")
                .arg("--user")
                .arg(&s.username)
                .args(ACL_RULE)
                .arg(format!(">{}", s.password));
        }
        let child = cmd
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

    /// Kills it, deletes its data directory's contents, and starts it again on
    /// the same port: a node that lost everything (or never persisted).
    #[allow(dead_code)]
    pub fn restart_empty(&mut self) {
        self.kill();
        self.clear_data();
        self.spawn();
    }

    /// Kills it, replaces its data directory's contents with a copy of
    /// `saved` (an earlier copy of [`RedisServer::dir`]), and starts it again:
    /// a node back with older data, its latest writes lost.
    #[allow(dead_code)]
    pub fn restart_from(&mut self, saved: &std::path::Path) {
        self.kill();
        self.clear_data();
        copy_dir(saved, self.dir.path());
        self.spawn();
    }

    fn clear_data(&self) {
        for entry in std::fs::read_dir(self.dir.path()).expect("data dir readable") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path).expect("remove data");
            } else {
                std::fs::remove_file(&path).expect("remove data");
            }
        }
    }

    /// A synchronous connection, for assertions.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection())
            .expect("connect to test redis")
    }
}

/// A Redis Cluster of `n` primaries (and replicas, if asked) on free ports, each node a
/// [`RedisServer`] with its own directory and AOF (fsynced always), the slots
/// spread by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster, and waits until every node
    /// reports `cluster_state:ok`.
    pub fn start(n: usize) -> Self {
        Self::start_with_replicas(n, 0)
    }

    /// As [`RedisCluster::start`], with `replicas` replicas per primary
    /// (`redis-cli --cluster create --cluster-replicas`): the first `n` nodes
    /// are the primaries, and every replica's link to its primary is up.
    pub fn start_with_replicas(n: usize, replicas: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..n * (1 + replicas))
            .map(|_| {
                let mut s = RedisServer {
                    appendfsync: Some("always"),
                    port: free_port(),
                    dir: tempfile::tempdir().expect("temp dir"),
                    child: None,
                    secure: None,
                    cluster_bus: Some(free_port()),
                };
                s.spawn();
                s
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|s| format!("127.0.0.1:{}", s.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed (it comes with redis-server)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut node.conn())
                    .unwrap_or_default();
                let replication: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut node.conn())
                    .unwrap_or_default();
                let linked = !replication.contains("role:slave") || replication.contains("master_link_status:up");
                if info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384") && linked {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster did not become ok: {info}{replication}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    /// The `host:port` of the primary serving `slot`, as `node` sees the cluster now.
    #[allow(dead_code)]
    pub fn primary_of(node: &RedisServer, slot: u16) -> Option<String> {
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut node.conn()).ok()?;
        Self::primary_in(&slots, slot)
    }

    /// The `host:port` of the primary serving `slot` in a `CLUSTER SLOTS` reply.
    #[allow(dead_code)]
    pub fn primary_in(slots: &[redis::Value], slot: u16) -> Option<String> {
        slots.iter().find_map(|range| {
            let redis::Value::Array(parts) = range else {
                return None;
            };
            let bound = |v: &redis::Value| match v {
                redis::Value::Int(i) => Some(*i),
                _ => None,
            };
            let (lo, hi) = (bound(parts.first()?)?, bound(parts.get(1)?)?);
            if !(lo..=hi).contains(&i64::from(slot)) {
                return None;
            }
            let redis::Value::Array(primary) = parts.get(2)? else {
                return None;
            };
            let host = match primary.first()? {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                redis::Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            Some(format!("{host}:{}", bound(primary.get(1)?)?))
        })
    }

    /// A connection that follows the cluster's redirections, for assertions.
    #[allow(dead_code)]
    pub fn conn(&self) -> redis::cluster::ClusterConnection {
        redis::cluster::ClusterClient::new(self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>())
            .and_then(|c| c.get_connection())
            .expect("connect to the test cluster")
    }

    /// How many keys each node holds.
    #[allow(dead_code)]
    pub fn keys_per_node(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| redis::cmd("DBSIZE").query(&mut n.conn()).expect("DBSIZE"))
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

/// Copies a directory tree (a Redis data directory: its AOF files).
#[allow(dead_code)]
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}
