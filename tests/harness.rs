//! Smoke tests of the test harness itself: if these fail, every other integration
//! test's failure is suspect.

use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio_postgres::error::SqlState;

use crate::support::pg::{Auth, ClusterOptions, PgCluster, TestDb, WalLevel, connect, pg_bin};
use crate::support::redis::{RedisServer, Reply, key_prefix};
use crate::support::wait::wait_until;

const TIMEOUT: Duration = Duration::from_secs(30);

async fn show(client: &tokio_postgres::Client, setting: &str) -> String {
    client.query_one(&format!("show {setting}"), &[]).await.expect("show").get(0)
}

#[tokio::test]
async fn shared_cluster_has_logical_wal_level() {
    let db = TestDb::new(PgCluster::shared()).await;
    assert_eq!(show(&db.client().await, "wal_level").await, "logical");
}

#[tokio::test]
async fn test_databases_are_isolated_and_dropped_with_their_slots() {
    let cluster = PgCluster::shared();
    let (a, b) = tokio::join!(TestDb::new(cluster), TestDb::new(cluster));
    assert_ne!(a.name(), b.name());
    a.execute("create table t (id int primary key); insert into t values (1);").await;
    let b_client = b.client().await;
    let t_in_b: bool =
        b_client.query_one("select to_regclass('public.t') is null", &[]).await.unwrap().get(0);
    assert!(t_in_b, "a table created in {} is visible in {}", a.name(), b.name());

    // A slot in each database; a's is held by an active walsender.
    let (a_slot, b_slot) = (a.slot_name(), b.slot_name());
    a.execute(&format!("create publication {} for table t", a.publication_name())).await;
    for (db, slot) in [(&a, &a_slot), (&b, &b_slot)] {
        db.client()
            .await
            .execute("select pg_create_logical_replication_slot($1, 'pgoutput')", &[slot])
            .await
            .expect("create a logical slot");
    }
    let mut receiver = Command::new(pg_bin("pg_recvlogical"))
        .arg("--dbname")
        .arg(a.url())
        .args(["--slot", &a_slot, "--start", "--no-loop", "--file", "/dev/null"])
        .args(["--option", "proto_version=1", "--option"])
        .arg(format!("publication_names={}", a.publication_name()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start pg_recvlogical");
    let admin = a.cluster().admin_client().await;
    let slot_active = "select active from pg_replication_slots where slot_name = $1";
    wait_until("pg_recvlogical to make the slot active", TIMEOUT, async || {
        admin.query_one(slot_active, &[&a_slot]).await.unwrap().get::<_, bool>(0)
    })
    .await;

    let a_name = a.name().to_owned();
    drop(a);
    let count = async |sql: &str, name: &str| -> i64 {
        admin.query_one(sql, &[&name]).await.unwrap().get(0)
    };
    let databases = "select count(*) from pg_database where datname = $1";
    let slots = "select count(*) from pg_replication_slots where slot_name = $1";
    assert_eq!(count(databases, &a_name).await, 0, "database {a_name} survived its drop");
    assert_eq!(count(slots, &a_slot).await, 0, "slot {a_slot} survived its database's drop");
    let status = wait_until("pg_recvlogical to be disconnected", TIMEOUT, async || {
        receiver.try_wait().expect("poll pg_recvlogical")
    })
    .await;
    assert!(!status.success(), "pg_recvlogical was not disconnected: {status}");

    // b was not touched by a's cleanup.
    assert_eq!(count(slots, &b_slot).await, 1);
    assert_eq!(b_client.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    let b_name = b.name().to_owned();
    drop(b);
    assert_eq!(count(databases, &b_name).await, 0);
    assert_eq!(count(slots, &b_slot).await, 0);
}

/// Starts a cluster with password `auth` for `user` and checks right, wrong and missing
/// passwords over TCP, for normal and replication connections.
async fn assert_password_auth(auth: Auth, user: &str, password: &str, hash_prefix: &str) {
    let cluster = PgCluster::start(ClusterOptions { auth, ..ClusterOptions::default() });
    let db = TestDb::new(&cluster).await;

    let client = connect(&db.url()).await.expect("connect with the right password");
    let row = client
        .query_one(
            "select current_user::text, rolpassword from pg_authid where rolname = current_user",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), user);
    let hash: String = row.get(1);
    assert!(hash.starts_with(hash_prefix), "password stored as {hash:?}");

    for (who, attempt) in [(user, "wrong"), ("postgres", password)] {
        let Err(err) = connect(&db.url_as(who, attempt)).await else {
            panic!("{who} connected over TCP with password {attempt:?}");
        };
        assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err}");
    }

    let replication = Command::new(pg_bin("psql"))
        .arg(format!("{}?replication=database", db.url()))
        .args(["--no-psqlrc", "--tuples-only", "--no-align", "--command", "IDENTIFY_SYSTEM"])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run psql");
    let stdout = String::from_utf8_lossy(&replication.stdout);
    assert!(
        replication.status.success() && stdout.trim_end().ends_with(db.name()),
        "replication connection failed: {stdout}{}",
        String::from_utf8_lossy(&replication.stderr)
    );
}

#[tokio::test]
async fn scram_cluster_checks_passwords() {
    let (user, password) = ("walshift_scram", "s3cret pass'word@/:");
    let auth = Auth::Scram { user: user.into(), password: password.into() };
    assert_password_auth(auth, user, password, "SCRAM-SHA-256$").await;
}

#[tokio::test]
async fn md5_cluster_checks_passwords() {
    let (user, password) = ("walshift_md5", "md5 pass\"word%");
    let auth = Auth::Md5 { user: user.into(), password: password.into() };
    assert_password_auth(auth, user, password, "md5").await;
}

#[tokio::test]
async fn tls_cluster_serves_a_certificate_signed_by_its_ca() {
    let cluster = PgCluster::start(ClusterOptions { require_tls: true, ..Default::default() });
    let db = TestDb::new(&cluster).await;
    assert_eq!(show(&db.client().await, "ssl").await, "on");
    assert!(cluster.ca_cert_path().is_file());

    let Err(err) = connect(&db.url()).await else {
        panic!("a plaintext TCP connection was accepted although TLS is required");
    };
    assert_eq!(err.code(), Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION), "{err}");

    // A verifying TLS handshake: the certificate must match the CA, the name and the IP.
    let handshake = async |check: &[&str]| {
        Command::new("openssl")
            .args(["s_client", "-starttls", "postgres", "-brief", "-verify_return_error"])
            .arg("-connect")
            .arg(cluster.host_port())
            .arg("-CAfile")
            .arg(cluster.ca_cert_path())
            .args(check)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run openssl s_client")
    };
    for check in [["-verify_hostname", "localhost"], ["-verify_ip", "127.0.0.1"]] {
        let output = handshake(&check).await;
        assert!(
            output.status.success(),
            "TLS handshake with {check:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let wrong_name = handshake(&["-verify_hostname", "example.com"]).await;
    assert!(!wrong_name.status.success(), "certificate verified for the wrong host name");
}

#[tokio::test]
async fn replica_cluster_cannot_decode_logically() {
    let cluster = PgCluster::start(ClusterOptions {
        wal_level: WalLevel::Replica,
        settings: vec![("work_mem".into(), "7MB".into())],
        ..Default::default()
    });
    let db = TestDb::new(&cluster).await;
    let client = db.client().await;
    assert_eq!(show(&client, "wal_level").await, "replica");
    assert_eq!(show(&client, "work_mem").await, "7MB");
    let err = client
        .query_one("select pg_create_logical_replication_slot($1, 'pgoutput')", &[&db.slot_name()])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE), "{err}");
}

#[test]
fn redis_answers_and_frees_its_port_on_drop() {
    let redis = RedisServer::start();
    assert_eq!(redis.command(&["PING"]), Reply::Status("PONG".into()));
    assert_eq!(redis.url(), format!("redis://{}", redis.addr()));
    let addr = redis.addr().to_owned();
    drop(redis);
    let err = TcpStream::connect(&addr).expect_err("redis still listens after its drop");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn shared_redis_isolates_tests_by_key_prefix() {
    let redis = RedisServer::shared();
    let (mine, theirs) = (key_prefix(), key_prefix());
    assert_ne!(mine, theirs);
    assert!(mine.starts_with("walshift:test:") && mine.ends_with(':'), "{mine}");
    let (key, counter, other) =
        (format!("{mine}weights"), format!("{mine}n"), format!("{theirs}weights"));

    assert_eq!(redis.command(&["SET", &key, "{\"v\":1}"]), Reply::Status("OK".into()));
    assert_eq!(redis.command(&["GET", &key]), Reply::Bulk(Some(b"{\"v\":1}".to_vec())));
    assert_eq!(redis.command(&["GET", &other]), Reply::Bulk(None));
    assert_eq!(redis.command(&["INCR", &counter]), Reply::Integer(1));
    assert_eq!(
        redis.command(&["MGET", &key, &other]),
        Reply::Array(Some(vec![Reply::Bulk(Some(b"{\"v\":1}".to_vec())), Reply::Bulk(None)]))
    );
    let Reply::Error(message) = redis.command(&["NOSUCHCOMMAND"]) else {
        panic!("an unknown command did not fail");
    };
    assert!(message.starts_with("ERR"), "{message}");
    assert_eq!(redis.command(&["DEL", &key, &counter]), Reply::Integer(2));
}

#[tokio::test]
async fn wait_until_returns_the_value_once_ready() {
    let mut polls = 0;
    let value = wait_until("the third poll", TIMEOUT, async || {
        polls += 1;
        (polls == 3).then_some(polls * 10)
    })
    .await;
    assert_eq!(value, 30);
}

#[tokio::test]
#[should_panic(expected = "waiting for something that never happens")]
async fn wait_until_panics_on_timeout() {
    wait_until("something that never happens", Duration::from_millis(120), async || false).await;
}
