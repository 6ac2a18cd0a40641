//! `walshift run` at the edges: mappings that must be refused, unchanged
//! TOAST values, key changes, TRUNCATE, foreign keys between shadow tables,
//! strict replay, permanent constraint violations and schema drift.

use std::fmt::Write as _;
use std::time::Duration;

use tokio_postgres::Client;

use crate::support::cli::{Walshift, expect_exit_2};
use crate::support::pg::{PgCluster, TestDb, WalshiftObjects};
use crate::support::shadow::{assert_converges, diff, rows};
use crate::support::wait::POLL_INTERVAL;

const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// helpers

/// Asserts that `log` contains every one of `needles`.
#[track_caller]
fn assert_log_has(log: &str, needles: &[&str]) {
    for needle in needles {
        assert!(log.contains(needle), "expected {needle:?} in the run log:\n{log}");
    }
}

/// Each statement as a transaction of its own. (Several statements sent in
/// one simple query run as one transaction unless they say otherwise.)
fn txns(statements: &[&str]) -> String {
    statements.iter().map(|s| format!("begin; {s}; commit;\n")).collect()
}

/// The final `error: ...` line of a run log.
fn error_line(log: &str) -> &str {
    log.lines().rev().find(|l| l.starts_with("error: ")).unwrap_or("")
}

/// The LSN after `committing at ` in `text` (e.g. `0/1A2B3C4`), if any and
/// not `0/0`.
fn committing_lsn(text: &str) -> Option<&str> {
    let at = text.find("committing at ")? + "committing at ".len();
    let rest = &text[at..];
    let end = rest.find(|c: char| !(c.is_ascii_hexdigit() || c == '/')).unwrap_or(rest.len());
    let lsn = &rest[..end];
    let (hi, lo) = lsn.split_once('/')?;
    (!hi.is_empty() && !lo.is_empty() && lsn != "0/0").then_some(lsn)
}

/// The slot's confirmed flush position, as text.
async fn confirmed_flush(client: &Client, slot: &str) -> String {
    client
        .query_one(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0)
}

/// `rows(client, sql)` with the run log in the panic message on a mismatch.
/// Waits until the slot confirmed everything written so far.
async fn wait_streamed(client: &Client, slot: &str) {
    let lsn: String =
        client.query_one("select pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let done: bool = client
            .query_one(
                "select confirmed_flush_lsn >= $1::text::pg_lsn from pg_replication_slots \
                 where slot_name = $2",
                &[&lsn, &slot],
            )
            .await
            .unwrap()
            .get(0);
        if done {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "slot {slot} did not pass {lsn}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn assert_rows(client: &Client, sql: &str, expected: &[&str], log: &str) {
    let actual = rows(client, sql).await;
    let mut expected: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    expected.sort();
    assert_eq!(actual, expected, "{sql}\nrun log:\n{log}");
}

// ---------------------------------------------------------------------------
// 1. mappings that must be refused

const BAD_SOURCE_DDL: &str = "
create table t (id int primary key, amount_cents bigint not null, label text);
create schema shadow;
create table shadow.t (id int primary key, amount numeric(14, 2), label text, n integer);
create table shadow.nopk (id int, amount numeric(14, 2));
";

fn one_table(target: &str, columns: &str) -> String {
    format!(
        "[[tables]]\nsource = \"public.t\"\ntarget = \"{target}\"\n[tables.columns]\n{columns}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mappings_exit_2_and_create_nothing() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(BAD_SOURCE_DDL).await;
    let cases: [(&str, String, &[&str]); 5] = [
        (
            "expression that does not compile",
            one_table("shadow.t", "id = \"id\"\namount = \"amount_centz / 100.0\""),
            &["tables[0].columns.amount", "shadow.t", "amount_centz", "does not compile"],
        ),
        (
            "target column that does not exist",
            one_table("shadow.t", "id = \"id\"\nno_such_col = \"label\""),
            &["tables[0].columns.no_such_col", "shadow.t", "does not exist"],
        ),
        (
            "target without a unique index on the key",
            one_table("shadow.nopk", "id = \"id\"\namount = \"amount_cents / 100.0\""),
            &["tables[0].target", "shadow.nopk", "no unique index on (id)"],
        ),
        (
            "target table that does not exist",
            one_table("shadow.missing", "id = \"id\""),
            &["tables[0].target", "shadow.missing", "does not exist"],
        ),
        (
            "type not assignable",
            one_table("shadow.t", "id = \"id\"\nn = \"'abc'::text\""),
            &[
                "tables[0].columns.n",
                "shadow.t",
                "is of type integer but expression is of type text",
            ],
        ),
    ];
    for (what, tables, expected) in &cases {
        let ws = Walshift::with_tables(&db, None, tables, "");
        let stderr = expect_exit_2(&ws, &["setup"], expected).await;
        assert!(stderr.contains("nothing was created"), "{what}: {stderr}");
        assert_eq!(
            db.walshift_objects().await,
            WalshiftObjects::NOTHING,
            "{what}: setup created something; {stderr}"
        );
    }
}

/// A good setup, then `run` with a mapping that does not compile: exit 2,
/// nothing applied, the slot not advanced; the good mapping then applies
/// every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_a_bad_mapping_after_setup_exits_2_and_applies_nothing() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(BAD_SOURCE_DDL).await;
    let good = Walshift::with_tables(
        &db,
        None,
        &one_table("shadow.t", "id = \"id\"\namount = \"amount_cents / 100.0\"\nlabel = \"label\""),
        "",
    );
    good.run_ok(&["setup"]).await;
    let client = db.client().await;
    db.execute(
        "insert into t select g, g * 100, 'row ' || g from generate_series(1, 20) g;
         update t set label = 'changed' where id <= 5;",
    )
    .await;
    let flush_before = confirmed_flush(&client, &db.slot_name()).await;

    let bad = Walshift::with_tables(
        &db,
        None,
        &one_table("shadow.t", "id = \"id\"\namount = \"amount_centz / 100.0\"\nlabel = \"label\""),
        "",
    );
    expect_exit_2(
        &bad,
        &["run"],
        &["tables[0].columns.amount", "shadow.t", "amount_centz", "does not compile"],
    )
    .await;
    assert_rows(&client, "select * from shadow.t", &[], "(run exited at start-up)").await;
    let applied: i64 =
        client.query_one("select count(*) from walshift.progress", &[]).await.unwrap().get(0);
    assert_eq!(applied, 0, "no applied position was stored");
    assert_eq!(
        confirmed_flush(&client, &db.slot_name()).await,
        flush_before,
        "the slot did not advance"
    );

    // Nothing was lost either: the good mapping applies every change.
    let run = good.spawn_run();
    assert_converges(
        &client,
        "select id, (amount_cents / 100.0)::numeric(14,2), label from t",
        &client,
        "select id, amount, label from shadow.t",
        WAIT,
    )
    .await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "log:\n{log}");
}

// ---------------------------------------------------------------------------
// 2./3. unchanged TOAST

/// `docs.doc` stored out of line uncompressed, so an update that does not
/// touch it sends it as "unchanged TOAST".
const DOCS_DDL: &str = "
create table docs (id int primary key, note text, doc text);
alter table docs alter column doc set storage external;
create schema shadow;
";

/// About 41 KB of random hex.
const BIG: &str = "(select string_agg(md5(random()::text), '') from generate_series(1, 1300))";

const DOCS_TABLES: &str = r#"
[[tables]]
source = "public.docs"
target = "shadow.docs"
[tables.columns]
id = "id"
note = "note"
doc = "doc"
doc_len = "length(doc)"
"#;

const DOCS_SOURCE: &str = "select id, note, md5(doc), length(doc) from docs";
const DOCS_TARGET: &str = "select id, note, md5(doc), doc_len from shadow.docs";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_keeps_the_value_through_updates_and_key_changes() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(DOCS_DDL).await;
    db.execute("create table shadow.docs (id int primary key, note text, doc text, doc_len int)")
        .await;
    let ws = Walshift::with_tables(&db, None, DOCS_TABLES, "");
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    let client = db.client().await;

    db.execute(&format!("insert into docs values (1, 'a', {BIG})")).await;
    assert_converges(&client, DOCS_SOURCE, &client, DOCS_TARGET, WAIT).await;
    // The value really lives in the TOAST table (so the updates below send
    // it as unchanged TOAST).
    let toast_rel: String = client
        .query_one(
            "select reltoastrelid::regclass::text from pg_class where oid = 'docs'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let chunks: i64 =
        client.query_one(&format!("select count(*) from {toast_rel}"), &[]).await.unwrap().get(0);
    assert!(chunks > 1, "doc is not stored out of line ({chunks} chunks in {toast_rel})");

    // An update leaving doc alone: doc and doc_len stay, note changes.
    db.execute("update docs set note = 'x' where id = 1").await;
    assert_converges(&client, DOCS_SOURCE, &client, DOCS_TARGET, WAIT).await;

    // Inserted, updated and key-changed in one transaction, doc unchanged.
    db.execute(&format!(
        "begin;
         insert into docs values (2, 'b', {BIG});
         update docs set note = 'b2' where id = 2;
         update docs set id = 20 where id = 2;
         commit;"
    ))
    .await;
    assert_converges(&client, DOCS_SOURCE, &client, DOCS_TARGET, WAIT).await;

    // A key change of a row whose doc is unchanged, in its own transaction.
    db.execute("update docs set id = id + 1000 where id = 1").await;
    assert_converges(&client, DOCS_SOURCE, &client, DOCS_TARGET, WAIT).await;

    // Unchanged-TOAST updates and key changes in quick succession (merged
    // into one target transaction).
    db.execute(&txns(&[
        "update docs set note = 'y' where id = 20",
        "update docs set id = 21 where id = 20",
        "update docs set note = 'z' where id = 21",
        "update docs set id = 22, note = 'w' where id = 21",
        "update docs set note = 'v' where id = 1001",
    ]))
    .await;
    assert_converges(&client, DOCS_SOURCE, &client, DOCS_TARGET, WAIT).await;

    // A row whose doc changes after an unchanged-TOAST update, and a delete.
    db.execute(&txns(&[
        "update docs set note = 'u' where id = 22",
        &format!("update docs set doc = {BIG} where id = 22"),
        "delete from docs where id = 1001",
    ]))
    .await;
    let n = assert_converges(&client, DOCS_SOURCE, &client, DOCS_TARGET, WAIT).await;
    assert_eq!(n, 1);
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "log:\n{log}");
}

const SUMMARY_TABLES: &str = r#"
[[tables]]
source = "public.docs"
target = "shadow.docs"
[tables.columns]
id = "id"
note = "note"
summary = "note || left(doc, 5)"
"#;

const SUMMARY_SOURCE: &str = "select id, note, note || left(doc, 5) from docs";
const SUMMARY_TARGET: &str = "select id, note, summary from shadow.docs";

async fn summary_db(db: &TestDb<'_>, replica_identity_full: bool) -> Walshift {
    db.execute(DOCS_DDL).await;
    db.execute("create table shadow.docs (id int primary key, note text, summary text)").await;
    if replica_identity_full {
        db.execute("alter table docs replica identity full").await;
    }
    let ws = Walshift::with_tables(db, None, SUMMARY_TABLES, "");
    ws.run_ok(&["setup"]).await;
    ws
}

/// An expression over a TOASTed column and another column cannot be
/// recomputed when the TOASTed value arrives unchanged: the run stops and
/// says to use REPLICA IDENTITY FULL, applying nothing of that transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expression_mixing_unchanged_toast_stops_without_replica_identity_full() {
    let db = TestDb::new(PgCluster::shared()).await;
    let ws = summary_db(&db, false).await;
    let run = ws.spawn_run();
    let client = db.client().await;
    db.execute(&format!("insert into docs values (1, 'a', {BIG})")).await;
    assert_converges(&client, SUMMARY_SOURCE, &client, SUMMARY_TARGET, WAIT).await;
    // The backfill may have copied the row already: wait until the stream
    // applied the insert too, so the update arrives on its own (merged with
    // the insert, it would get the value from it).
    wait_streamed(&client, &db.slot_name()).await;
    let before = rows(&client, SUMMARY_TARGET).await;

    db.execute("update docs set note = 'y' where id = 1").await;
    let (code, log) = run.wait(WAIT).await;
    assert_eq!(code, Some(1), "the run stops with a runtime failure; log:\n{log}");
    assert_log_has(
        &log,
        &["REPLICA IDENTITY FULL", "TOASTed column doc", "public.docs", "shadow.docs.summary"],
    );
    assert_eq!(
        rows(&client, SUMMARY_TARGET).await,
        before,
        "the update was not applied; log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expression_mixing_unchanged_toast_applies_with_replica_identity_full() {
    let db = TestDb::new(PgCluster::shared()).await;
    let ws = summary_db(&db, true).await;
    let run = ws.spawn_run();
    let client = db.client().await;
    db.execute(&format!(
        "insert into docs values (1, 'a', {BIG}); insert into docs values (2, 'b', {BIG});"
    ))
    .await;
    assert_converges(&client, SUMMARY_SOURCE, &client, SUMMARY_TARGET, WAIT).await;
    db.execute("update docs set note = 'y' where id = 1").await;
    assert_converges(&client, SUMMARY_SOURCE, &client, SUMMARY_TARGET, WAIT).await;
    db.execute(&txns(&[
        "update docs set id = 10, note = 'k' where id = 1",
        "update docs set note = 'c' where id = 2; update docs set id = 20 where id = 2",
    ]))
    .await;
    assert_converges(&client, SUMMARY_SOURCE, &client, SUMMARY_TARGET, WAIT).await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "log:\n{log}");
    assert!(!log.contains("REPLICA IDENTITY FULL"), "log:\n{log}");
}

/// A row outside the filter (so not in the target) that an update moves
/// into the filter while its TOASTed column arrives unchanged: the target
/// does not have the value, so walshift must either get the row right or
/// stop with an error, never silently leave the row out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_update_moving_a_row_into_the_filter_is_not_lost() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(DOCS_DDL).await;
    db.execute("create table shadow.docs (id int primary key, note text, doc text)").await;
    let tables = r#"
[[tables]]
source = "public.docs"
target = "shadow.docs"
filter = "note <> 'hidden'"
[tables.columns]
id = "id"
note = "note"
doc = "doc"
"#;
    let ws = Walshift::with_tables(&db, None, tables, "");
    ws.run_ok(&["setup"]).await;
    let mut run = ws.spawn_run();
    let client = db.client().await;
    let source = "select id, note, md5(doc) from docs where note <> 'hidden'";
    let target = "select id, note, md5(doc) from shadow.docs";
    db.execute(&format!(
        "insert into docs values (1, 'hidden', {BIG}); insert into docs values (2, 'shown', {BIG});"
    ))
    .await;
    assert_converges(&client, source, &client, target, WAIT).await;

    db.execute("update docs set note = 'shown' where id = 1").await;
    let expected = rows(&client, source).await;
    let started = std::time::Instant::now();
    let converged = loop {
        let actual = rows(&client, target).await;
        if actual == expected {
            break true;
        }
        if run.has_exited() {
            break false;
        }
        assert!(
            started.elapsed() < WAIT,
            "row 1 was moved into the filter by an update with unchanged TOAST, and after \
             {WAIT:?} the target neither has it nor did the run stop\n{}\nrun log:\n{}",
            diff(&expected, &actual),
            run.stderr()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    if converged {
        // Give a late failure no chance to hide: the run is still healthy.
        let (code, log) = run.stop().await;
        assert_eq!(code, Some(0), "log:\n{log}");
    } else {
        let (code, log) = run.wait(WAIT).await;
        assert_eq!(code, Some(1), "the run stops with a runtime failure; log:\n{log}");
        assert_log_has(&log, &["public.docs", "doc"]);
    }
}

// ---------------------------------------------------------------------------
// 4. key changes and TRUNCATE

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_empties_the_target_by_default_and_keeps_it_when_disabled() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table a (id int primary key, v text);
         create table b (id int primary key, v text);
         create schema shadow;
         create table shadow.a (id int primary key, v text);
         create table shadow.b (id int primary key, v text);",
    )
    .await;
    let tables = r#"
[[tables]]
source = "public.a"
target = "shadow.a"

[[tables]]
source = "public.b"
target = "shadow.b"
truncate = false
"#;
    let ws = Walshift::with_tables(&db, None, tables, "");
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    let client = db.client().await;
    db.execute(
        "insert into a select g, 'a' || g from generate_series(1, 50) g;
         insert into b select g, 'b' || g from generate_series(1, 50) g;
         update a set id = id + 100 where id between 41 and 50;",
    )
    .await;
    assert_converges(&client, "select * from a", &client, "select * from shadow.a", WAIT).await;
    assert_converges(&client, "select * from b", &client, "select * from shadow.b", WAIT).await;

    // Key changes, then TRUNCATE, then new rows, in one transaction.
    db.execute(
        "begin;
         update a set id = id + 1000 where id <= 10;
         update b set id = id + 1000 where id <= 10;
         truncate a, b;
         insert into a values (7, 'after'), (8, 'after');
         insert into b values (7, 'after');
         update a set id = 9 where id = 8;
         commit;",
    )
    .await;
    assert_converges(&client, "select * from a", &client, "select * from shadow.a", WAIT).await;
    // b keeps its rows (those key-changed before the TRUNCATE moved) and
    // gets the new row.
    assert_converges(
        &client,
        "select g + case when g <= 10 then 1000 else 0 end, 'b' || g from generate_series(1, 50) g \
         union all select 7, 'after'",
        &client,
        "select * from shadow.b",
        WAIT,
    )
    .await;

    // A TRUNCATE on its own, then a key change of a new row.
    db.execute(&txns(&[
        "insert into a select g, 'again' from generate_series(100, 120) g",
        "truncate a",
        "insert into a values (1, 'one')",
        "update a set id = 2 where id = 1",
    ]))
    .await;
    let n =
        assert_converges(&client, "select * from a", &client, "select * from shadow.a", WAIT).await;
    assert_eq!(n, 1);
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "log:\n{log}");
}

// ---------------------------------------------------------------------------
// 5. foreign keys between shadow tables

/// Many small transactions over a parent and a child table, each valid
/// under non-deferrable foreign keys, in phases (each applied before the
/// next starts, so later phases work on rows the target already has):
/// 0 inserts parents then children; 1 re-parents and deletes a parent after
/// moving its children to a new one; 2 brings the deleted parent back and
/// moves a child to it from a parent that then goes (in 1 and 2 a coalesced
/// batch that deletes before it upserts removes a parent the target's
/// children still point at); 3 deletes every third round, children first.
fn fk_workload(phase: u8, rounds: std::ops::Range<i32>) -> String {
    let mut sql = String::new();
    for r in rounds {
        let b = r * 10;
        let (p1, p2, p3) = (b + 1, b + 2, b + 3);
        let (c1, c2, c3, c4, c5) = (b + 1, b + 2, b + 3, b + 4, b + 5);
        match phase {
            0 => {
                let _ = writeln!(
                    sql,
                    "begin; insert into parent values ({p1}, 'p{p1}'), ({p2}, 'p{p2}');
                     insert into child values ({c1}, {p1}, 0), ({c2}, {p1}, 0), ({c3}, {p1}, 0),
                                              ({c4}, {p1}, 0);
                     commit;"
                );
            }
            1 => {
                // Re-parent two children.
                let _ = writeln!(
                    sql,
                    "begin; update child set parent_id = {p2} where id in ({c1}, {c2}); commit;"
                );
                // A new parent takes the other children over; the old one goes.
                let _ = writeln!(
                    sql,
                    "begin; insert into parent values ({p3}, 'p{p3}');
                     update child set parent_id = {p3} where parent_id = {p1};
                     delete from parent where id = {p1}; commit;"
                );
                // Delete a child, touch the others.
                let _ = writeln!(
                    sql,
                    "begin; delete from child where id = {c4};
                     update child set v = v + 1 where parent_id = {p2};
                     update parent set name = name || '!' where id = {p2}; commit;"
                );
            }
            2 => {
                // The deleted parent comes back and takes a child over from p3, which goes.
                let _ = writeln!(
                    sql,
                    "begin; insert into parent values ({p1}, 'again');
                     insert into child values ({c5}, {p1}, 5);
                     update child set parent_id = {p1} where id = {c3};
                     delete from parent where id = {p3}; commit;"
                );
            }
            _ => {
                if r % 3 == 2 {
                    let (lo, hi) = (b + 1, b + 9);
                    let _ = writeln!(
                        sql,
                        "begin; delete from child where parent_id between {lo} and {hi};
                         delete from parent where id between {lo} and {hi}; commit;"
                    );
                }
            }
        }
    }
    sql
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_deferrable_foreign_keys_between_shadow_tables_hold() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table parent (id int primary key, name text not null);
         create table child (id int primary key, parent_id int not null references parent (id),
                             v int not null);
         create schema shadow;
         create table shadow.parent (id int primary key, name text not null);
         create table shadow.child (id int primary key,
                                    parent_id int not null references shadow.parent (id),
                                    v int not null);",
    )
    .await;
    // Children listed first: the applier must order by the foreign key.
    let tables = r#"
[[tables]]
source = "public.child"
target = "shadow.child"

[[tables]]
source = "public.parent"
target = "shadow.parent"
"#;
    let ws = Walshift::with_tables(&db, None, tables, "");
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    let client = db.client().await;
    let mut counts = Vec::new();
    for phase in 0..4 {
        for chunk in [0..20, 20..40, 40..60] {
            db.execute(&fk_workload(phase, chunk)).await;
        }
        let parents = assert_converges(
            &client,
            "select * from parent",
            &client,
            "select * from shadow.parent",
            WAIT,
        )
        .await;
        let children = assert_converges(
            &client,
            "select * from child",
            &client,
            "select * from shadow.child",
            WAIT,
        )
        .await;
        counts.push((parents, children));
    }
    assert_eq!(counts, [(120, 240), (120, 180), (120, 240), (80, 160)], "rows after each phase");
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "log:\n{log}");
}

// ---------------------------------------------------------------------------
// 6. strict replay

/// A unique value rotated through a temporary one: valid in source order,
/// but the coalesced batch (1:b and 2:a, in either order) hits the
/// non-deferrable unique index, so the batch is replayed row by row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_value_rotation_is_replayed_row_by_row() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table users (id int primary key, email text not null unique);
         create schema shadow;
         create table shadow.users (id int primary key, email text not null unique);",
    )
    .await;
    let tables = "[[tables]]\nsource = \"public.users\"\ntarget = \"shadow.users\"\n";
    let ws = Walshift::with_tables(&db, None, tables, "");
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    let client = db.client().await;
    let (source, target) = ("select * from users", "select * from shadow.users");
    db.execute("insert into users values (1, 'a'), (2, 'b')").await;
    assert_converges(&client, source, &client, target, WAIT).await;

    db.execute(
        "begin;
         update users set email = 'tmp' where id = 1;
         update users set email = 'a' where id = 2;
         update users set email = 'b' where id = 1;
         commit;",
    )
    .await;
    assert_converges(&client, source, &client, target, WAIT).await;
    assert_rows(&client, target, &["(1,b)", "(2,a)"], &run.stderr()).await;
    assert!(
        run.stderr().contains("row by row"),
        "expected a strict replay; log:\n{}",
        run.stderr()
    );

    // After the replay, ordinary batches go on.
    db.execute(&txns(&[
        "insert into users values (3, 'c')",
        "update users set email = 'd' where id = 3",
        "insert into users select g, 'e' || g from generate_series(10, 40) g",
    ]))
    .await;
    assert_converges(&client, source, &client, target, WAIT).await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "log:\n{log}");
}

// ---------------------------------------------------------------------------
// 7. a constraint the mapping violates

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_constraint_violation_stops_naming_table_key_and_lsn() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table payments (id int primary key, amount int not null);
         create schema shadow;
         create table shadow.payments (id int primary key, amount int not null check (amount >= 0));",
    )
    .await;
    let tables = "[[tables]]\nsource = \"public.payments\"\ntarget = \"shadow.payments\"\n";
    let ws = Walshift::with_tables(&db, None, tables, "");
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    let client = db.client().await;
    let target = "select * from shadow.payments";
    db.execute("insert into payments values (1, 10)").await;
    assert_converges(&client, "select * from payments", &client, target, WAIT).await;

    // Valid transactions right before the offending one, and one after it.
    db.execute(&txns(&[
        "insert into payments values (2, 20)",
        "insert into payments values (3, 30)",
        "insert into payments values (6, 60); insert into payments values (7, -5)",
        "insert into payments values (8, 80)",
    ]))
    .await;
    let (code, log) = run.wait(WAIT).await;
    assert_eq!(code, Some(1), "the run stops with a runtime failure; log:\n{log}");
    let error = error_line(&log);
    for needle in ["shadow.payments", "id=7", "check constraint"] {
        assert!(error.contains(needle), "expected {needle:?} in the error line; log:\n{log}");
    }
    assert!(committing_lsn(error).is_some(), "expected the source LSN in the error; log:\n{log}");
    // The transactions before the offending one are applied; it and what
    // follows are not.
    assert_rows(&client, target, &["(1,10)", "(2,20)", "(3,30)"], &log).await;
}

// ---------------------------------------------------------------------------
// 8. schema drift

const DRIFT_DDL: &str = "
create table t (id int primary key, v text, mapped_col text);
create schema shadow;
create table shadow.t (id int primary key, v text, m text);
";

const DRIFT_TABLES: &str = r#"
[[tables]]
source = "public.t"
target = "shadow.t"
[tables.columns]
id = "id"
v = "v"
m = "mapped_col"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_source_column_is_ignored_and_the_run_goes_on() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(DRIFT_DDL).await;
    let ws = Walshift::with_tables(&db, None, DRIFT_TABLES, "");
    ws.run_ok(&["setup"]).await;
    let mut run = ws.spawn_run();
    let client = db.client().await;
    let (source, target) = ("select id, v, mapped_col from t", "select id, v, m from shadow.t");
    db.execute("insert into t select g, 'v' || g, 'm' || g from generate_series(1, 20) g").await;
    assert_converges(&client, source, &client, target, WAIT).await;

    db.execute(&txns(&[
        "alter table t add column extra text",
        "insert into t select g, 'v' || g, 'm' || g, 'x' || g from generate_series(21, 40) g",
        "update t set extra = 'e', v = 'changed' where id <= 5",
        "update t set mapped_col = 'mm' where id = 30; update t set id = 300 where id = 30",
        "delete from t where id = 40",
    ]))
    .await;
    assert_converges(&client, source, &client, target, WAIT).await;
    assert!(!run.has_exited(), "run exited after an added column; log:\n{}", run.stderr());
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_mapped_source_column_stops_the_run() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(DRIFT_DDL).await;
    let ws = Walshift::with_tables(&db, None, DRIFT_TABLES, "");
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    let client = db.client().await;
    db.execute("insert into t select g, 'v' || g, 'm' || g from generate_series(1, 3) g").await;
    assert_converges(
        &client,
        "select id, v, mapped_col from t",
        &client,
        "select id, v, m from shadow.t",
        WAIT,
    )
    .await;

    db.execute(&txns(&[
        "alter table t drop column mapped_col",
        "insert into t values (100, 'after')",
        "update t set v = 'after' where id = 1",
    ]))
    .await;
    let (code, log) = run.wait(WAIT).await;
    assert_eq!(code, Some(1), "the run stops with a runtime failure; log:\n{log}");
    assert_log_has(&log, &["public.t.mapped_col", "dropped", "shadow.t"]);
    assert_rows(&client, "select * from shadow.t", &["(1,v1,m1)", "(2,v2,m2)", "(3,v3,m3)"], &log)
        .await;
}
