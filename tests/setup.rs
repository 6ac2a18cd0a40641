//! `setup` and `teardown`, and every bad-input path: a clear message, exit
//! code 2, and nothing created.

use crate::support::cli::{Walshift, run_bin};
use crate::support::pg::{ClusterOptions, PgCluster, TestDb, WalLevel, WalshiftObjects};

/// Runs `args`, expects exit 2 and `expected` in stderr.
async fn expect_bad_input(ws: &Walshift, args: &[&str], expected: &str) -> String {
    let out = ws.run(args).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: stderr: {stderr}");
    assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in:\n{stderr}");
    stderr
}

#[tokio::test]
async fn setup_is_idempotent_and_teardown_needs_yes() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute("create table t (id int primary key, v text); insert into t values (1, 'keep me');")
        .await;
    let ws = Walshift::for_db(&db, &[("public.t", "shadow.t")], "").await;
    let first = ws.run_ok(&["setup"]).await;
    assert!(first.contains("replication slot") && first.contains("created"), "{first}");
    assert_eq!(db.walshift_objects().await, WalshiftObjects::EVERYTHING);
    let second = ws.run_ok(&["setup"]).await;
    assert!(!second.contains("created"), "second setup creates nothing: {second}");

    // Without --yes: lists, changes nothing, exits non-zero.
    let stderr = expect_bad_input(&ws, &["teardown"], "re-run with --yes").await;
    let listing = String::from_utf8_lossy(&ws.run(&["teardown"]).await.stdout).into_owned();
    assert!(
        listing.contains(&db.slot_name()) && listing.contains("retains"),
        "{listing}\n{stderr}"
    );
    assert_eq!(db.walshift_objects().await, WalshiftObjects::EVERYTHING);

    let dropped = ws.run_ok(&["teardown", "--yes"]).await;
    assert!(dropped.contains("dropped replication slot"), "{dropped}");
    assert_eq!(db.walshift_objects().await, WalshiftObjects::NOTHING);
    let client = db.client().await;
    let kept: String = client.query_one("select v from t where id = 1", &[]).await.unwrap().get(0);
    assert_eq!(kept, "keep me", "the user's tables are never touched");
    let again = ws.run_ok(&["teardown", "--yes"]).await;
    assert!(again.contains("nothing to drop"), "{again}");

    // tail without a slot says what to do.
    expect_bad_input(&ws, &["tail"], "run `walshift setup` first").await;
}

/// The state schema is shared by every migration on the target and is
/// dropped only when no other migration is registered in it: when the other
/// migrations cannot be counted, `teardown --yes` exits 1 and drops nothing
/// (not guessing "none" and dropping the schema with everyone's state).
#[tokio::test]
async fn teardown_drops_nothing_when_the_other_migrations_cannot_be_counted() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute("create table t (id int primary key)").await;
    let ws = Walshift::for_db(&db, &[("public.t", "shadow.t")], "").await;
    ws.run_ok(&["setup"]).await;
    assert_eq!(db.walshift_objects().await, WalshiftObjects::EVERYTHING);

    // The target as a role that can read the state schema except its
    // migrations table (not a superuser: those bypass privileges).
    let role = format!("{}_target", db.name());
    let password = "target-secret";
    db.execute(&format!(
        "create role {role} login password '{password}'; \
         grant usage on schema walshift to {role}; \
         grant select on all tables in schema walshift to {role}; \
         revoke select on walshift.migrations from {role};"
    ))
    .await;
    let target_url = db.url_as(&role, password);
    let restricted = Walshift::with_tables(
        &db,
        Some(&target_url),
        "[[tables]]\nsource = \"public.t\"\ntarget = \"shadow.t\"\n",
        "",
    );
    let out = restricted.run(&["teardown", "--yes"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "stdout: {stdout}\nstderr: {stderr}");
    for expected in [
        "nothing was dropped",
        "counting the other migrations in schema walshift",
        "permission denied for table migrations",
    ] {
        assert!(stderr.contains(expected), "expected {expected:?} in:\n{stderr}");
    }
    assert!(!stdout.contains("dropped"), "{stdout}");
    assert_eq!(db.walshift_objects().await, WalshiftObjects::EVERYTHING, "nothing was dropped");
    let registered: i64 = db
        .client()
        .await
        .query_one("select count(*) from walshift.migrations where name = 'test'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(registered, 1, "the migration's own state is still there");

    db.execute(&format!("drop owned by {role}; drop role {role};")).await;
    // With the count readable again, teardown drops everything.
    ws.run_ok(&["teardown", "--yes"]).await;
    assert_eq!(db.walshift_objects().await, WalshiftObjects::NOTHING);
}

#[tokio::test]
async fn bad_config_files_exit_2() {
    let db = TestDb::new(PgCluster::shared()).await;
    let out = run_bin(&["--config", "/nonexistent/walshift.toml", "setup"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("cannot read config file /nonexistent/walshift.toml"), "{stderr}");

    let unknown = Walshift::with_config(&format!(
        "[migration]\nname = \"x\"\n[source]\nurl = \"{}\"\nslott = \"s\"\n[[tables]]\nsource = \"public.t\"\ntarget = \"shadow.t\"\n",
        db.url()
    ));
    expect_bad_input(&unknown, &["setup"], "source.slott").await;

    let bad_url = Walshift::with_config(
        "[migration]\nname = \"x\"\n[source]\nurl = \"postgres://u:hunter2@localhost:notaport/db\"\n[[tables]]\nsource = \"public.t\"\ntarget = \"shadow.t\"\n",
    );
    let stderr = expect_bad_input(&bad_url, &["setup"], "source.url").await;
    assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
    assert_eq!(db.walshift_objects().await, WalshiftObjects::NOTHING);
}

#[tokio::test]
async fn table_problems_create_nothing() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table keyless (a int, b text);
         create table nothing_identity (id int primary key);
         alter table nothing_identity replica identity nothing;",
    )
    .await;
    for (table, expected) in [
        ("public.keyless", "public.keyless has no primary key"),
        ("public.missing", "table public.missing does not exist"),
        ("public.nothing_identity", "REPLICA IDENTITY NOTHING"),
    ] {
        let ws = Walshift::for_db(&db, &[(table, "shadow.x")], "").await;
        let stderr = expect_bad_input(&ws, &["setup"], expected).await;
        assert!(stderr.contains("tables[0].source"), "{stderr}");
        assert!(stderr.contains("nothing was created"), "{stderr}");
        assert_eq!(db.walshift_objects().await, WalshiftObjects::NOTHING, "after {table}");
    }

    // An existing publication that misses a table: reported, nothing created.
    db.execute("create table ok (id int primary key); create table other (id int primary key);")
        .await;
    db.execute(&format!("create publication {} for table other", db.publication_name())).await;
    let ws = Walshift::for_db(&db, &[("public.ok", "shadow.ok")], "").await;
    expect_bad_input(&ws, &["setup"], "does not publish public.ok").await;
    let after = db.walshift_objects().await;
    assert!(!after.slot && !after.state_schema, "{after:?}");
}

/// A role without REPLICATION is caught by the checks, before the
/// publication is created (slot creation would fail only afterwards).
#[tokio::test]
async fn role_without_replication_creates_nothing() {
    let db = TestDb::new(PgCluster::shared()).await;
    let role = format!("{}_norepl", db.name());
    db.execute(&format!(
        "create role {role} login; create table t (id int primary key); \
         alter table t owner to {role}; grant create on database {} to {role};",
        db.name()
    ))
    .await;
    let (host, port) = db.cluster().host_port().split_once(':').unwrap();
    let url = format!("postgres://{role}@{host}:{port}/{}", db.name());
    let ws = Walshift::for_url(
        &url,
        &db.slot_name(),
        &db.publication_name(),
        &[("public.t", "shadow.t")],
        "",
    );
    expect_bad_input(&ws, &["setup"], &format!("role {role} may not open replication connections"))
        .await;
    assert_eq!(db.walshift_objects().await, WalshiftObjects::NOTHING);
    db.execute(&format!("drop owned by {role}; drop table if exists t; drop role {role};")).await;
}

#[tokio::test]
async fn wal_level_replica_is_refused() {
    let cluster = PgCluster::start(ClusterOptions {
        wal_level: WalLevel::Replica,
        ..ClusterOptions::default()
    });
    let db = TestDb::new(&cluster).await;
    db.execute("create table t (id int primary key)").await;
    let ws = Walshift::for_db(&db, &[("public.t", "shadow.t")], "").await;
    expect_bad_input(&ws, &["setup"], "wal_level is 'replica'").await;
    assert_eq!(db.walshift_objects().await, WalshiftObjects::NOTHING);
}
