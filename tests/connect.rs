//! The replication connection's authentication and TLS, against clusters
//! configured for them.

use std::time::Duration;

use crate::support::cli::{Walshift, rows};
use crate::support::pg::{Auth, ClusterOptions, PgCluster, TestDb};

const WAIT: Duration = Duration::from_secs(60);

fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

/// A config streaming `public.t` of `db` through `url`.
fn walshift_for(db: &TestDb<'_>, url: &str) -> Walshift {
    Walshift::for_url(url, &db.slot_name(), &db.publication_name(), &[("public.t", "shadow.t")], "")
}

/// Runs setup, writes two rows, and checks tail prints them.
async fn setup_and_tail(db: &TestDb<'_>, url: &str) -> Walshift {
    db.execute("create table t (id int primary key, v text)").await;
    db.create_shadows(&[("public.t", "shadow.t")]).await;
    let ws = walshift_for(db, url);
    ws.run_ok(&["setup"]).await;
    db.execute("insert into t values (1, 'a'), (2, 'b')").await;
    let client = db.client().await;
    let endpos: String =
        client.query_one("select pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    let (code, lines, stderr) = ws.spawn_tail(&["--endpos", &endpos]).wait(WAIT).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(rows(&lines).len(), 2, "{lines:?}");
    ws
}

async fn password_auth(auth: Auth) {
    let (Auth::Scram { user, password } | Auth::Md5 { user, password }) = auth.clone() else {
        panic!("password_auth needs a password method");
    };
    let (user, password) = (user.as_str(), password.as_str());
    let cluster = PgCluster::start(ClusterOptions { auth, ..ClusterOptions::default() });
    let db = TestDb::new(&cluster).await;
    setup_and_tail(&db, &db.url_as(user, password)).await;

    // A wrong password: a clear error, and the password never printed.
    let wrong = "Wr0ng-Pa55word";
    let ws = walshift_for(&db, &db.url_as(user, wrong));
    let out = ws.run(&["tail", "--no-ack"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("password authentication failed"), "stderr: {stderr}");
    assert!(!stderr.contains(wrong), "the password leaked: {stderr}");
}

#[tokio::test]
async fn scram_sha_256_authentication() {
    let password = "s3cret: with spaces & símbols";
    password_auth(Auth::Scram { user: "ws_scram".into(), password: password.into() }).await;
}

#[tokio::test]
async fn md5_authentication() {
    let password = "md5-s3cret";
    password_auth(Auth::Md5 { user: "ws_md5".into(), password: password.into() }).await;
}

#[tokio::test]
async fn tls_require_and_verify_full() {
    let cluster =
        PgCluster::start(ClusterOptions { require_tls: true, ..ClusterOptions::default() });
    let db = TestDb::new(&cluster).await;
    let ca = cluster.ca_cert_path().display().to_string();

    setup_and_tail(&db, &with_params(&db.url(), "sslmode=require")).await;

    // verify-full with the right CA: streams over TLS (checked on the server side).
    let ws = walshift_for(
        &db,
        &with_params(&db.url(), &format!("sslmode=verify-full&sslrootcert={ca}")),
    );
    let tail = ws.spawn_tail(&["--no-ack"]);
    db.execute("insert into t values (3, 'c')").await;
    // Rows 1 and 2 were acknowledged by the first tail.
    tail.wait_for_rows(1, WAIT).await;
    let client = db.client().await;
    let ssl: bool = client
        .query_one(
            "select bool_and(s.ssl) from pg_stat_replication r join pg_stat_ssl s using (pid) \
             where r.application_name = 'walshift:tail'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the walsender connection uses TLS");
    let (code, _, stderr) = tail.stop().await;
    assert_eq!(code, Some(0), "{stderr}");

    // prefer (no verification) and verify-ca (chain only) also negotiate TLS here.
    let endpos: String =
        client.query_one("select pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    for params in ["sslmode=prefer".to_owned(), format!("sslmode=verify-ca&sslrootcert={ca}")] {
        let ws = walshift_for(&db, &with_params(&db.url(), &params));
        let (code, lines, stderr) =
            ws.spawn_tail(&["--no-ack", "--endpos", &endpos]).wait(WAIT).await;
        assert_eq!(code, Some(0), "{params}: {stderr}");
        assert_eq!(rows(&lines).len(), 1, "{params}: row 3 once");
    }

    // Plain text is refused by this server; verify-full without a CA file fails clearly.
    for (params, expected) in [
        ("sslmode=disable", "no pg_hba.conf entry"),
        ("sslmode=verify-full&sslrootcert=/nonexistent/root.crt", "cannot load root certificate"),
    ] {
        let ws = walshift_for(&db, &with_params(&db.url(), params));
        let out = ws.run(&["tail", "--no-ack"]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0));
        assert!(stderr.contains(expected), "{params}: expected {expected:?} in {stderr}");
    }
}

/// libpq's key=value form works as well as URLs, quoting included.
#[tokio::test]
async fn key_value_connection_strings() {
    let password = "it's a s3cret";
    let cluster = PgCluster::start(ClusterOptions {
        auth: Auth::Scram { user: "ws_kv".into(), password: password.into() },
        ..ClusterOptions::default()
    });
    let db = TestDb::new(&cluster).await;
    let (host, port) = cluster.host_port().split_once(':').unwrap();
    let kv = format!(
        "host={host} port={port} dbname={} user=ws_kv password='it\\\\'s a s3cret' sslmode=disable",
        db.name()
    );
    setup_and_tail(&db, &kv).await;
}
