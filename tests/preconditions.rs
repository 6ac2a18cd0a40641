//! Bad input and broken preconditions of every command: each names its root
//! cause and the fix, exits 2, and creates or loses nothing (`setup` and
//! `teardown` basics, bad config files and table problems are in
//! `setup.rs`; mapping errors in `apply_edge.rs`).
//!
//! | path | test |
//! |---|---|
//! | `wal_level` lowered (server refuses to start with a slot; slot dropped to lower it) | [`lowered_wal_level_is_named_as_the_root_cause`] |
//! | `max_replication_slots` / `max_wal_senders` reached (setup, run) | [`no_free_replication_slot_or_wal_sender`] |
//! | no primary key / replica identity: the fix is suggested and works | [`keyless_table_suggests_a_fix_that_works`] |
//! | origin trigger or row-level security on the target (setup, run) | [`target_triggers_and_row_level_security_are_refused`] |
//! | source role without SELECT, column SELECT only, RLS on the source (setup, run) | [`source_role_without_select_is_told_the_grant`] |
//! | slot of another plugin, run without setup, status without setup, verify --repair and teardown while run streams, traffic without Redis | [`other_refusals_change_nothing`] |

use std::time::Duration;

use tokio_postgres::Client;

use crate::support::cli::{Walshift, expect_exit_2};
use crate::support::pg::{ClusterOptions, PgCluster, TestDb, WalshiftObjects, pg_bin};
use crate::support::wait::wait_until;

const WAIT: Duration = Duration::from_secs(30);

const SOURCE: &str = "create table t (id int primary key, v text);
     insert into t select g, 'v' || g from generate_series(1, 20) g;
     create schema shadow; create table shadow.t (id int primary key, v text);";

/// The slot's confirmed position (`None`: no slot).
async fn confirmed_flush(c: &Client, slot: &str) -> Option<String> {
    c.query_opt(
        "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1",
        &[&slot],
    )
    .await
    .unwrap()
    .and_then(|r| r.get(0))
}

/// Rows in `shadow.t` and applied positions stored: what a refused `run`
/// must leave alone.
async fn applied_state(c: &Client) -> (i64, i64) {
    let rows: i64 = c.query_one("select count(*) from shadow.t", &[]).await.unwrap().get(0);
    let progress: i64 = c
        .query_one(
            "select case when to_regclass('walshift.progress') is null then 0 \
             else (select count(*) from walshift.progress) end",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    (rows, progress)
}

/// `wal_level` lowered below `logical`. What really happens: with
/// walshift's slot still there, the server refuses to start at all
/// ("logical replication slot ... exists, but wal_level < logical"), so a
/// DBA who lowers it must drop the slot first. Every command then names
/// `wal_level` (the cause), not only the missing slot (the symptom), and
/// says that the history went with the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowered_wal_level_is_named_as_the_root_cause() {
    let cluster = PgCluster::start(ClusterOptions::default());
    let mut db = TestDb::new(&cluster).await;
    db.execute(SOURCE).await;
    let ws = Walshift::for_db(&db, &[("public.t", "shadow.t")], "").await;
    ws.run_ok(&["setup"]).await;
    let slot = db.slot_name();

    db.execute("alter system set wal_level = replica").await;
    let log = cluster.restart().expect_err("the server started below logical with a logical slot");
    assert!(
        log.contains(&format!(
            "logical replication slot \"{slot}\" exists, but wal_level < logical"
        )),
        "{log}"
    );
    cluster.write_auto_conf(&[]);
    cluster.start_again().expect("start again with wal_level = logical");
    db.reconnect().await;

    // Lowered the only way the server allows: drop the slot, then restart.
    // (ALTER SYSTEM cannot share a transaction with anything.)
    db.execute(&format!("select pg_drop_replication_slot('{slot}')")).await;
    db.execute("alter system set wal_level = replica").await;
    cluster.restart().expect("restart with wal_level = replica");
    db.reconnect().await;
    let client = db.client().await;
    let before = applied_state(&client).await;
    for args in [&["run"][..], &["backfill"], &["verify"], &["tail"], &["setup"]] {
        let stderr =
            expect_exit_2(&ws, args, &["wal_level is 'replica'", "wal_level = logical"]).await;
        assert!(stderr.contains("nothing was created"), "{args:?}: {stderr}");
    }
    expect_exit_2(
        &ws,
        &["run"],
        &[
            &format!("replication slot {slot} is gone"),
            "the changes walshift had not applied",
            "Recovering from a lost slot",
            "walshift setup",
        ],
    )
    .await;
    assert_eq!(applied_state(&client).await, before, "nothing applied");
    assert_eq!(confirmed_flush(&client, &slot).await, None, "no slot created");
    let objects = db.walshift_objects().await;
    assert!(!objects.slot && objects.publication && objects.state_schema, "{objects:?}");

    // wal_level back, the slot still missing (dropped): the history is gone
    // (`Error::HistoryLost`, whose exit code is the run loop's: not checked).
    db.execute("alter system reset wal_level").await;
    cluster.restart().expect("restart with wal_level = logical");
    db.reconnect().await;
    let client = db.client().await;
    let stderr = ws.run(&["run"]).await;
    let text = String::from_utf8_lossy(&stderr.stderr);
    assert_ne!(stderr.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!("replication slot {slot} no longer exists"))
            && text.contains("walshift setup"),
        "{text}"
    );
    assert!(!text.contains("wal_level"), "wal_level is fine now: {text}");
    assert_eq!(applied_state(&client).await, before, "nothing applied");
    assert_eq!(confirmed_flush(&client, &slot).await, None, "no slot made up");
}

/// A walsender held by `psql` (a replication connection running a long
/// query), as `application_name` `name`.
fn busy_wal_sender(cluster: &PgCluster, db: &TestDb<'_>, name: &str) -> tokio::process::Child {
    let (host, port) = cluster.host_port().split_once(':').unwrap();
    let conninfo = format!(
        "host={host} port={port} dbname={} user=postgres replication=database \
         application_name={name}",
        db.name()
    );
    tokio::process::Command::new(pg_bin("psql"))
        .args(["-X", "-q", "-d", &conninfo, "-c", "select pg_sleep(60)"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn psql")
}

async fn wal_senders(c: &Client, name: &str) -> i64 {
    c.query_one(
        "select count(*) from pg_stat_activity where backend_type = 'walsender' \
         and application_name = $1",
        &[&name],
    )
    .await
    .unwrap()
    .get(0)
}

/// `max_replication_slots` and `max_wal_senders` reached: setup (which
/// creates a slot over a replication connection) and run (which streams)
/// name the setting, its value and who uses them up, and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_free_replication_slot_or_wal_sender() {
    let cluster = PgCluster::start(ClusterOptions {
        settings: vec![
            ("max_replication_slots".into(), "2".into()),
            ("max_wal_senders".into(), "2".into()),
        ],
        ..ClusterOptions::default()
    });
    let db = TestDb::new(&cluster).await;
    db.execute(SOURCE).await;
    db.execute(
        "select pg_create_logical_replication_slot('other_logical', 'pgoutput');
         select pg_create_physical_replication_slot('other_physical');",
    )
    .await;
    let ws = Walshift::for_db(&db, &[("public.t", "shadow.t")], "").await;
    expect_exit_2(
        &ws,
        &["setup"],
        &[
            "source.slot: no free replication slot: max_replication_slots = 2",
            &format!("other_logical (logical on database {}, inactive)", db.name()),
            "other_physical (physical, inactive)",
            "pg_drop_replication_slot",
            "nothing was created",
        ],
    )
    .await;
    assert_eq!(db.walshift_objects().await, WalshiftObjects::NOTHING);

    // A slot is free, both wal senders are busy.
    db.execute("select pg_drop_replication_slot('other_physical')").await;
    let client = db.client().await;
    let mut busy = vec![busy_wal_sender(&cluster, &db, "busy_client")];
    busy.push(busy_wal_sender(&cluster, &db, "busy_client"));
    wait_until("two busy wal senders", WAIT, async || {
        (wal_senders(&client, "busy_client").await == 2).then_some(())
    })
    .await;
    expect_exit_2(
        &ws,
        &["setup"],
        &[
            "no free wal sender for walshift's replication connection: max_wal_senders = 2 and 2 \
             are in use",
            "\"busy_client\", user postgres from 127.0.0.1, no slot",
            "raise max_wal_senders",
        ],
    )
    .await;
    assert_eq!(db.walshift_objects().await, WalshiftObjects::NOTHING);

    // One freed: setup works; both busy again: run refuses to start.
    let free_one = "select pg_terminate_backend(pid) from pg_stat_activity \
                    where application_name = 'busy_client' limit 1";
    db.execute(free_one).await;
    wait_until("one busy wal sender", WAIT, async || {
        (wal_senders(&client, "busy_client").await == 1).then_some(())
    })
    .await;
    ws.run_ok(&["setup"]).await;
    busy.push(busy_wal_sender(&cluster, &db, "busy_client"));
    wait_until("two busy wal senders", WAIT, async || {
        (wal_senders(&client, "busy_client").await == 2).then_some(())
    })
    .await;
    let flushed = confirmed_flush(&client, &db.slot_name()).await;
    let before = applied_state(&client).await;
    for args in [&["run"][..], &["backfill"]] {
        expect_exit_2(&ws, args, &["no free wal sender", "max_wal_senders = 2", "busy_client"])
            .await;
    }
    assert_eq!(applied_state(&client).await, before, "nothing applied");
    assert_eq!(confirmed_flush(&client, &db.slot_name()).await, flushed, "the slot did not move");
    db.execute("select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'busy_client'")
        .await;
    for mut child in busy {
        let _ = child.wait().await;
    }
}

/// A table without a primary key: the error names the unique index to use
/// (or the primary key to add), and the suggested statement makes setup
/// work.
#[tokio::test]
async fn keyless_table_suggests_a_fix_that_works() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        r#"create table "Order Lines" (code text not null, line int not null, note text);
           create unique index "Order Lines_code_line" on "Order Lines" (code, line);
           create table bag (thing text);
           create schema shadow;
           create table shadow.lines (like "Order Lines" including all);"#,
    )
    .await;
    let ws = Walshift::for_db(&db, &[(r#"public.\"Order Lines\""#, "shadow.lines")], "").await;
    let stderr = expect_exit_2(
        &ws,
        &["setup"],
        &[
            r#"tables[0].source: public."Order Lines" has no primary key"#,
            r#"ALTER TABLE public."Order Lines" REPLICA IDENTITY USING INDEX "Order Lines_code_line" (its unique index on code, line)"#,
            r#"ADD PRIMARY KEY USING INDEX "Order Lines_code_line""#,
        ],
    )
    .await;
    assert!(stderr.contains("nothing was created"), "{stderr}");
    assert_eq!(db.walshift_objects().await, WalshiftObjects::NOTHING);
    let bag = Walshift::for_db(&db, &[("public.bag", "shadow.bag")], "").await;
    expect_exit_2(
        &bag,
        &["setup"],
        &[
            "public.bag has no primary key",
            "ALTER TABLE public.bag ADD PRIMARY KEY (<columns that identify a row>)",
            "REPLICA IDENTITY FULL and set tables[0].key",
        ],
    )
    .await;
    assert_eq!(db.walshift_objects().await, WalshiftObjects::NOTHING);

    // The suggestion, pasted, is enough.
    db.execute(
        r#"ALTER TABLE public."Order Lines" REPLICA IDENTITY USING INDEX "Order Lines_code_line""#,
    )
    .await;
    ws.run_ok(&["setup"]).await;
    assert_eq!(db.walshift_objects().await, WalshiftObjects::EVERYTHING);
}

/// An origin-enabled trigger and row-level security on the target: named
/// with the table and the fix, at setup and at run, nothing created or
/// applied. `ENABLE ALWAYS` (fire for replicated rows too) is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_triggers_and_row_level_security_are_refused() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(SOURCE).await;
    db.execute(
        "create function shadow.stamp() returns trigger language plpgsql \
           as $$ begin new.v := new.v || ' (stamped)'; return new; end $$;
         create trigger \"Stamp\" before insert or update on shadow.t \
           for each row execute function shadow.stamp();",
    )
    .await;
    let ws = Walshift::for_db(&db, &[("public.t", "shadow.t")], "").await;
    let trigger_message = [
        "tables[0].target: shadow.t has trigger \"Stamp\" (before insert or update, for each row) \
         enabled",
        "session_replication_role",
        "ALTER TABLE shadow.t DISABLE TRIGGER \"Stamp\"",
        "ALTER TABLE shadow.t ENABLE ALWAYS TRIGGER \"Stamp\"",
    ];
    expect_exit_2(&ws, &["setup"], &trigger_message).await;
    assert_eq!(db.walshift_objects().await, WalshiftObjects::NOTHING);

    // Disabled for the migration: setup works. Enabled again: run refuses.
    db.execute("alter table shadow.t disable trigger \"Stamp\"").await;
    ws.run_ok(&["setup"]).await;
    db.execute("alter table shadow.t enable trigger \"Stamp\"").await;
    let client = db.client().await;
    let flushed = confirmed_flush(&client, &db.slot_name()).await;
    let before = applied_state(&client).await;
    expect_exit_2(&ws, &["run"], &trigger_message).await;
    assert_eq!(applied_state(&client).await, before);
    assert_eq!(confirmed_flush(&client, &db.slot_name()).await, flushed);
    // Meant to fire for walshift's writes too: accepted.
    db.execute("alter table shadow.t enable always trigger \"Stamp\"").await;
    ws.run_ok(&["setup"]).await;
    ws.run_ok(&["teardown", "--yes"]).await;
    db.execute("drop trigger \"Stamp\" on shadow.t").await;

    // Row-level security on the target, for a role that is not its owner.
    let role = format!("{}_writer", db.name());
    db.execute(&format!(
        "create role {role} login;
         grant usage on schema shadow to {role};
         grant select, insert, update, delete, truncate on shadow.t to {role};
         alter table shadow.t enable row level security;
         create policy recent on shadow.t using (id > 10);"
    ))
    .await;
    let target = format!("\n[target]\nurl = \"{}\"\n", db.url_as(&role, "unused"));
    let as_role = Walshift::for_db(&db, &[("public.t", "shadow.t")], &target).await;
    let rls_message = [
        &format!("row-level security on shadow.t applies to role {role} (policies recent)")[..],
        "silently skip the rows it hides",
        "ALTER TABLE shadow.t DISABLE ROW LEVEL SECURITY",
        "BYPASSRLS",
    ];
    expect_exit_2(&as_role, &["setup"], &rls_message).await;
    assert_eq!(db.walshift_objects().await, WalshiftObjects::NOTHING);
    // Missing write privileges are named too.
    db.execute(&format!("revoke delete, truncate on shadow.t from {role}")).await;
    expect_exit_2(
        &as_role,
        &["setup"],
        &[&format!(
            "role {role} may not write shadow.t (no DELETE, no TRUNCATE): GRANT SELECT, INSERT, \
             UPDATE, DELETE, TRUNCATE ON shadow.t TO {role}"
        )],
    )
    .await;
    // For the owner (here the superuser) it does not apply: setup works, and
    // a run as the role is refused.
    ws.run_ok(&["setup"]).await;
    // (The role may use walshift's state, as a role running walshift must.)
    db.execute(&format!(
        "grant usage on schema walshift to {role};
         grant all on all tables in schema walshift to {role};
         grant all on all sequences in schema walshift to {role};"
    ))
    .await;
    let before = applied_state(&client).await;
    expect_exit_2(&as_role, &["run"], &rls_message).await;
    assert_eq!(applied_state(&client).await, before);
    db.execute(&format!("drop owned by {role}; drop role {role};")).await;
}

/// A source role that may not read a mapped table is told which table and
/// the GRANT; a column-level grant that misses mapped columns, and
/// row-level security on the source (the backfill would miss rows the
/// stream carries), likewise. Nothing is created or applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_role_without_select_is_told_the_grant() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(SOURCE).await;
    let role = format!("{}_reader", db.name());
    db.execute(&format!("create role {role} login replication")).await;
    let (host, port) = db.cluster().host_port().split_once(':').unwrap();
    let url = format!("postgres://{role}@{host}:{port}/{}", db.name());
    let target = format!("\n[target]\nurl = \"{}\"\n", db.url());
    let as_role = Walshift::for_url(
        &url,
        &db.slot_name(),
        &db.publication_name(),
        &[("public.t", "shadow.t")],
        &target,
    );
    expect_exit_2(
        &as_role,
        &["setup"],
        &[&format!(
            "tables[0].source: role {role} may not read public.t (no SELECT on it), which the \
             backfill and verification read: GRANT SELECT ON public.t TO {role}"
        )],
    )
    .await;
    assert_eq!(db.walshift_objects().await, WalshiftObjects::NOTHING);
    db.execute(&format!("grant select (id) on t to {role}")).await;
    expect_exit_2(&as_role, &["setup"], &["may not read public.t (no SELECT on its columns v)"])
        .await;
    assert_eq!(db.walshift_objects().await, WalshiftObjects::NOTHING);

    // After a setup by an administrator, `run` as the role is refused too.
    let ws = Walshift::for_db(&db, &[("public.t", "shadow.t")], "").await;
    ws.run_ok(&["setup"]).await;
    let client = db.client().await;
    let before = applied_state(&client).await;
    let flushed = confirmed_flush(&client, &db.slot_name()).await;
    expect_exit_2(&as_role, &["run"], &[&format!("GRANT SELECT ON public.t TO {role}")]).await;

    // Row-level security on the source hides rows from the backfill.
    db.execute(&format!(
        "grant select on t to {role}; alter table t enable row level security; \
         create policy mine on t for select using (v like 'v1%');"
    ))
    .await;
    expect_exit_2(
        &as_role,
        &["run"],
        &[
            &format!("row-level security on public.t applies to role {role} (policies mine)"),
            "the backfill and verification would not see the rows it hides",
            "ALTER TABLE public.t DISABLE ROW LEVEL SECURITY",
        ],
    )
    .await;
    assert_eq!(applied_state(&client).await, before, "nothing applied");
    assert_eq!(confirmed_flush(&client, &db.slot_name()).await, flushed);
    db.execute(&format!("drop owned by {role}; drop role {role};")).await;
}

/// Refusals of other commands and objects: each names the object and the
/// way out, exits 2 and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_refusals_change_nothing() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(SOURCE).await;
    let ws = Walshift::for_db(&db, &[("public.t", "shadow.t")], "").await;

    // `status` before setup.
    expect_exit_2(&ws, &["status"], &["the target has no walshift schema", "walshift setup"]).await;
    // Traffic commands without Redis.
    expect_exit_2(&ws, &["traffic", "route", "user-1"], &["redis.url is not set"]).await;

    // A slot of that name that is not walshift's.
    let slot = db.slot_name();
    db.execute(&format!("select pg_create_logical_replication_slot('{slot}', 'test_decoding')"))
        .await;
    expect_exit_2(&ws, &["setup"], &[&format!("replication slot {slot}"), "test_decoding"]).await;
    expect_exit_2(
        &ws,
        &["run"],
        &[&format!(
            "replication slot {slot} is not a logical pgoutput slot (plugin test_decoding)"
        )],
    )
    .await;
    let objects = db.walshift_objects().await;
    assert!(objects.slot && !objects.publication && !objects.state_schema, "{objects:?}");
    db.execute(&format!("select pg_drop_replication_slot('{slot}')")).await;

    // A pgoutput slot of that name, but no setup: run says so.
    db.execute(&format!("select pg_create_logical_replication_slot('{slot}', 'pgoutput')")).await;
    expect_exit_2(
        &ws,
        &["run"],
        &["migration test is not registered in the target's walshift schema", "walshift setup"],
    )
    .await;
    db.execute(&format!("select pg_drop_replication_slot('{slot}')")).await;

    // While `walshift run` streams: a repair from `verify` and a teardown
    // are refused.
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    let client = db.client().await;
    wait_until("the backfill completes", WAIT, async || {
        let done: Option<bool> = client
            .query_opt("select completed_at is not null from walshift.backfill", &[])
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0));
        (done == Some(true)).then_some(())
    })
    .await;
    let before = applied_state(&client).await;
    client.execute("update shadow.t set v = 'corrupt' where id = 3", &[]).await.unwrap();
    expect_exit_2(
        &ws,
        &["verify", "--repair"],
        &[
            &format!("walshift run is streaming from slot {slot}"),
            "[verify] repair = true",
            "nothing was changed",
        ],
    )
    .await;
    let corrupt: String =
        client.query_one("select v from shadow.t where id = 3", &[]).await.unwrap().get(0);
    assert_eq!(corrupt, "corrupt", "the refused repair wrote");
    assert_eq!(applied_state(&client).await.0, before.0);
    expect_exit_2(
        &ws,
        &["teardown", "--yes"],
        &[&format!("replication slot {slot} is in use by process"), "nothing was dropped"],
    )
    .await;
    assert_eq!(db.walshift_objects().await, WalshiftObjects::EVERYTHING);
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
}
