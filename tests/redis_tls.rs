//! Redis over TLS as an ACL user: the fleet syncs through `rediss://` with
//! client certificates, logged in as a user limited to `tm:*`; bad credentials
//! and untrusted certificates fail with their cause and without the password.

use std::time::Duration;

use tidemark::db::{self, Access};
use tidemark::state::RunStatus;
use tidemark::types::SyncMode;

use crate::harness::{Env, Options, RedisServer};

fn access(s: &crate::harness::redis_server::Secure) -> Access {
    Access {
        username: Some(s.username.clone()),
        password: Some(s.password.clone()),
        ca_pem: Some(std::fs::read(&s.ca.ca).expect("ca")),
        client_pem: Some((
            std::fs::read(&s.ca.client_cert).expect("client cert"),
            std::fs::read(&s.ca.client_key).expect("client key"),
        )),
    }
}

/// The whole fleet (the real binary, `standalone` with two workers, and the
/// test's own enqueue and wait) syncs, edits and deletes through TLS only, as
/// the ACL user: every connection it opened is that user's on the TLS port,
/// every key it wrote is under `tm:`, Redis denied it nothing (the ACL log is
/// empty, so `-@dangerous` plus `+info` is enough), and its log never holds
/// the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_syncs_over_tls_as_an_acl_user() {
    let mut env = Env::start(Options {
        secure_redis: true,
        ..Options::default()
    })
    .await;
    let secure = env.redis.secure().expect("secure redis").clone();
    let pid = env.spawn_process(&["standalone", "--workers", "2"]);

    let full = env.sync(SyncMode::Full).await;
    assert_eq!(full.status, RunStatus::Completed, "{full:?}");
    env.assert_sink_matches_source();

    let pages = env.sim.pages();
    let leaf = pages
        .iter()
        .find(|p| !pages.iter().any(|c| c.parent_id.as_deref() == Some(p.id.as_str())))
        .expect("a leaf")
        .clone();
    assert!(env.sim.delete_page(&leaf.id));
    assert!(env.sim.update_page(&pages[3].id, None, Some("<p>edited over TLS</p>")));
    let inc = env.sync(SyncMode::Incremental).await;
    assert_eq!(inc.status, RunStatus::Completed, "{inc:?}");
    assert!(inc.deleted >= 1, "{inc:?}");
    env.assert_sink_matches_source();

    let mut admin = env.redis.conn();
    let log: Vec<redis::Value> = redis::cmd("ACL").arg("LOG").query(&mut admin).expect("ACL LOG");
    assert!(log.is_empty(), "Redis denied tidemark something: {log:?}");
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut admin).expect("KEYS");
    assert!(!keys.is_empty());
    assert!(keys.iter().all(|k| k.starts_with("tm:")), "keys outside tm:*: {keys:?}");
    let clients: String = redis::cmd("CLIENT").arg("LIST").query(&mut admin).expect("CLIENT LIST");
    let tidemark: Vec<&str> = clients.lines().filter(|l| l.contains(" user=tidemark ")).collect();
    assert!(tidemark.len() >= 2, "no tidemark connections: {clients}");
    let tls_port = format!(":{} ", secure.tls_port);
    assert!(
        tidemark
            .iter()
            .all(|l| l.contains(&format!("laddr=127.0.0.1{tls_port}"))),
        "a tidemark connection not on the TLS port: {tidemark:?}"
    );
    assert!(
        clients
            .lines()
            .filter(|l| !l.contains(" user=tidemark "))
            .all(|l| l.contains(" user=default ")),
        "{clients}"
    );
    let process_log = env.process_log(pid);
    assert!(
        !process_log.contains(&secure.password),
        "password in the log:\n{process_log}"
    );
}

/// What goes wrong says what it is: a wrong password, a server certificate
/// nobody trusts, a missing client certificate, plain text to the TLS port.
/// None of the errors holds the password. And the ACL holds: the same user
/// cannot touch a key outside `tm:`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_untrusted_certificates_fail_with_their_cause() {
    let redis = RedisServer::start_secure();
    let secure = redis.secure().expect("secure").clone();
    let url = format!("rediss://127.0.0.1:{}", secure.tls_port);
    let timeout = Duration::from_secs(3);
    let ping = |access: Access, url: String| async move {
        let pool = db::pool_with(&url, &access, 1, timeout).expect("pool");
        db::ping(&pool).await
    };

    ping(access(&secure), url.clone())
        .await
        .expect("the right access works");

    let wrong = Access {
        password: Some("not-the-password".into()),
        ..access(&secure)
    };
    let err = ping(wrong, url.clone()).await.expect_err("a wrong password is refused");
    assert!(
        err.to_lowercase().contains("auth") || err.contains("WRONGPASS"),
        "{err}"
    );
    assert!(!err.contains("not-the-password"), "{err}");

    let untrusted = Access {
        ca_pem: None,
        client_pem: None,
        ..access(&secure)
    };
    let err = ping(untrusted, url.clone())
        .await
        .expect_err("an unknown CA is refused");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(!err.contains(&secure.password), "{err}");

    let no_client_cert = Access {
        client_pem: None,
        ..access(&secure)
    };
    ping(no_client_cert, url.clone())
        .await
        .expect_err("a server requiring client certificates refuses a client without one");

    let plain = format!("redis://127.0.0.1:{}", secure.tls_port);
    let plain_access = Access {
        ca_pem: None,
        client_pem: None,
        ..access(&secure)
    };
    ping(plain_access, plain)
        .await
        .expect_err("plain text to the TLS port fails");

    let pool = db::pool_with(&url, &access(&secure), 1, timeout).expect("pool");
    let mut conn = pool.get().await.expect("connection");
    let denied = redis::cmd("SET")
        .arg("other:key")
        .arg("1")
        .query_async::<()>(&mut conn)
        .await
        .expect_err("a key outside tm: is denied");
    assert!(denied.to_string().to_lowercase().contains("noperm"), "{denied}");
    redis::cmd("SET")
        .arg("tm:probe")
        .arg("1")
        .query_async::<()>(&mut conn)
        .await
        .expect("a key under tm: is allowed");
}
