//! walshift's state schema is versioned (`walshift::state::schema`): a newer
//! walshift upgrades an older schema in place when a migration in progress
//! restarts, and refuses (exit 2, nothing changed) a schema newer than it
//! knows or migrated from SQL other than its own files.
//!
//! # The first release's schema
//!
//! walshift has no release tag (`git tag` is empty; Cargo.toml says 0.1.0
//! in every commit), so the first release is taken to be the tree just
//! before version 6 was added: commit 3e32566, the parent of eb1a8e8 (the
//! write cutover, which added `sql/0006_cutover.sql`). Its state schema is
//! `sql/0001`-`0005` exactly as they are today: `git log -- sql/` shows no
//! change to them after 3e32566 (the one in-place edit, of 0005, came
//! before it; 0007 repairs a schema that predates that edit).
//!
//! The test builds that schema from those files, not by dropping newer
//! objects from a current one: `setup` and `run` run with
//! `WALSHIFT_TEST_SCHEMA_VERSION=5`, which stops the state schema at
//! version 5. The rows in it are then written by walshift's real pipeline
//! against the version-5 tables, and they are the rows the first release
//! wrote: the code that writes them (`src/state/{progress,backfill,
//! verify}.rs`) has not changed since 3e32566. The first release's
//! controller cannot run against version 5 with today's code (it reads the
//! version-6 columns of `walshift.commands`), so its rows (an audit entry,
//! an answered command) are inserted as it wrote them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_postgres::Client;
use walshift::runtime::tasks::spawn_named;

use crate::backfill::{
    Progress, WAIT, backfilling_lines, progress, status_json, wait_caught_up, wait_progress,
};
use crate::support::cli::{Walshift, expect_exit_2};
use crate::support::pg::{PgCluster, TestDb};
use crate::support::shadow::assert_converges;
use crate::support::wait::wait_until;

/// The version the first release's state schema ends at (see the module doc).
const FIRST_RELEASE: &str = "5";
/// The test hook limiting the state schema's version.
const SCHEMA_VERSION_ENV: &str = walshift::state::schema::TEST_SCHEMA_VERSION_ENV;

const DDL: &str = "
create table alpha (id bigint primary key, v text not null, n int not null);
insert into alpha select g, 'a' || g, g % 10 from generate_series(1, 3000) g;
create table beta (id bigint primary key, v text not null, n int not null);
insert into beta select g, 'b' || g, g % 7 from generate_series(1, 30000) g;
analyze;
create schema shadow;
create table shadow.alpha (id bigint primary key, label text not null, n10 int not null);
create table shadow.beta (id bigint primary key, v text not null, n int not null);
";

const TABLES: &str = r#"
[[tables]]
source = "public.alpha"
target = "shadow.alpha"
[tables.columns]
id = "id"
label = "upper(v)"
n10 = "n * 10"

[[tables]]
source = "public.beta"
target = "shadow.beta"
"#;

const ALPHA_SOURCE: &str = "select id, upper(v), n * 10 from alpha";
const ALPHA_TARGET: &str = "select id, label, n10 from shadow.alpha";
const BETA_SOURCE: &str = "select * from beta";
const BETA_TARGET: &str = "select * from shadow.beta";

/// The recorded state schema versions.
async fn versions(client: &Client) -> Vec<i32> {
    client
        .query("select version from walshift.schema_migrations order by version", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Updates, inserts, deletes and re-inserts on both tables, ~200
/// transactions/s, until `stop`; returns how many it committed.
fn spawn_workload(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    spawn_named("test-schema-workload", async move {
        let client = crate::support::pg::connect(&url).await.expect("workload connects");
        let mut rng = fastrand::Rng::new();
        let mut next_beta = 1_000_000;
        let mut committed = 0;
        while !stop.load(Ordering::Relaxed) {
            let (a, b, gone) = (rng.i64(1..=3000), rng.i64(1..=30000), rng.i64(1..=30000));
            next_beta += 1;
            let sql = format!(
                "begin;
                 update alpha set v = v || 'u', n = n + 1 where id = {a};
                 delete from alpha where id = {b} % 3000 + 1;
                 insert into alpha values ({b} % 3000 + 1, 'again', 3) on conflict (id) do nothing;
                 update beta set n = n + 1, v = v || 'w' where id = {b};
                 delete from beta where id = {gone};
                 insert into beta values ({next_beta}, 'new', 1);
                 commit;"
            );
            client.batch_execute(&sql).await.expect("workload transaction");
            committed += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        committed
    })
}

/// A migration in progress on the first release's state schema (version
/// 5): restarted by this walshift while a workload writes, it upgrades the
/// schema in place, resumes the backfill where it was, converges, keeps the
/// old release's rows, and says so in the log, the audit trail and
/// `schema_migrations`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_from_the_first_release_continues_a_migration_in_progress() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(DDL).await;
    let client = db.client().await;
    // The first release's run copies slowly (so it is stopped mid-copy) and
    // verifies every second; today's copies at full speed.
    let old = Walshift::with_tables(
        &db,
        None,
        TABLES,
        "[backfill]\nchunk_rows_min = 1000\nchunk_rows_max = 1000\nmax_rows_per_second = 3000\n\
         [verify]\ninterval_seconds = 1\nfull_pass_interval_seconds = 1\n",
    );
    let new = Walshift::with_tables(
        &db,
        None,
        TABLES,
        "[backfill]\nchunk_rows_min = 5000\nchunk_rows_max = 5000\n\
         [verify]\ninterval_seconds = 1\nfull_pass_interval_seconds = 1\n",
    );
    let first_release = [(SCHEMA_VERSION_ENV, FIRST_RELEASE)];
    let (code, log) = old.spawn_with_env(&["setup"], &first_release).wait(WAIT).await;
    assert_eq!(code, Some(0), "setup at version 5:\n{log}");
    assert_eq!(versions(&client).await, [1, 2, 3, 4, 5]);
    let newer_objects: (bool, bool) = client
        .query_one(
            "select to_regclass('walshift.cutover_attempts') is not null, exists (select 1 from \
             pg_attribute where attrelid = 'walshift.schema_migrations'::regclass \
             and attname = 'checksum')",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(newer_objects, (false, false), "the version-5 schema has objects of 6 or 7");

    let stop = Arc::new(AtomicBool::new(false));
    let workload = spawn_workload(db.url(), Arc::clone(&stop));

    // The first release's run: alpha copied and verified clean, beta
    // mid-copy, changes streamed.
    let run = old.spawn_with_env(&["run"], &first_release);
    wait_progress(&client, "shadow.alpha", "complete", WAIT, Progress::complete).await;
    wait_until("a clean verification pass of shadow.alpha", WAIT, async || {
        client
            .query_one(
                "select exists (select 1 from walshift.verify_tables \
                 where target_table = 'shadow.alpha' and last_result = 'clean')",
                &[],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
    wait_progress(&client, "shadow.beta", "copying", WAIT, |p| p.rows_copied >= 3000).await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(!log.contains("upgraded walshift's state schema"), "{log}");
    let before = progress(&client, "shadow.beta").await.unwrap();
    assert!(!before.complete(), "beta was copied before the restart: {before:?}");
    let applied_before: String = client
        .query_one("select applied_lsn::text from walshift.progress where migration = 'test'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions(&client).await, [1, 2, 3, 4, 5]);
    // The first release's controller left a decision and an answered
    // command (its columns only).
    db.execute(
        "insert into walshift.audit (migration, kind, from_state, to_state, read_new, version, \
             reason, actor) \
         values ('test', 'decision', 'in_sync', 'verified', 0, 1, \
             'first release: verification clean', 'old-release:1:1'); \
         insert into walshift.commands (migration, command, requested_by, answered_at, ok, answer) \
         values ('test', 'resume', 'dba@old-release', now(), true, 'resumed');",
    )
    .await;

    // Today's walshift, restarted while the workload goes on.
    let run = new.spawn_run();
    wait_progress(&client, "shadow.beta", "complete", WAIT, Progress::complete).await;
    assert_eq!(versions(&client).await, [1, 2, 3, 4, 5, 6, 7]);
    let status = status_json(&new).await;
    assert_eq!(crate::backfill::status_entry(&status, "shadow.beta")["state"], "complete");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let transactions = workload.await.expect("workload");
    wait_caught_up(&client, &db.slot_name()).await;
    assert_converges(&client, ALPHA_SOURCE, &client, ALPHA_TARGET, WAIT).await;
    let n = assert_converges(&client, BETA_SOURCE, &client, BETA_TARGET, WAIT).await;
    assert!(n >= 30_000, "beta has {n} rows");
    assert!(transactions > 100, "the workload committed {transactions} transactions");
    let human = new.run_ok(&["status"]).await;
    assert!(human.contains("shadow.beta <- public.beta: complete"), "{human}");
    let history = new.run_ok(&["history"]).await;
    assert!(history.contains("first release: verification clean"), "{history}");
    assert!(history.contains("upgraded in place from version 5 to 7"), "{history}");
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");

    // The upgrade: logged, recorded, audited.
    assert!(log.contains("upgraded walshift's state schema in place"), "{log}");
    assert!(log.contains("from=5") && log.contains("to=7"), "{log}");
    // The copy went on from the first release's cursor.
    let first = backfilling_lines(&log)
        .into_iter()
        .find(|l| l.contains("shadow.beta"))
        .unwrap_or_else(|| panic!("no `backfilling` line for shadow.beta in:\n{log}"));
    assert!(first.contains(&format!("rows_copied={}", before.rows_copied)), "{first}");
    let applied_after: bool = client
        .query_one(
            "select applied_lsn > $1::text::pg_lsn from walshift.progress where migration = 'test'",
            &[&applied_before],
        )
        .await
        .unwrap()
        .get(0);
    assert!(applied_after, "the applied position did not move past {applied_before}");
    let rows = client
        .query(
            "select version, checksum, applied_by from walshift.schema_migrations order by version",
            &[],
        )
        .await
        .unwrap();
    for row in &rows {
        let version: i32 = row.get(0);
        let checksum: Option<String> = row.get(1);
        let applied_by: Option<String> = row.get(2);
        if version <= 5 {
            // Applied by the first release: nothing to compare with.
            assert_eq!((checksum, applied_by), (None, None), "version {version}");
        } else {
            let file = if version == 6 { "0006_cutover.sql" } else { "0007_schema_checksums.sql" };
            assert_eq!(checksum.as_deref(), Some(sha256sum(file).as_str()), "version {version}");
            let by = applied_by.unwrap_or_default();
            assert!(
                by.starts_with(concat!("walshift ", env!("CARGO_PKG_VERSION"), " on ")),
                "{by}"
            );
        }
    }
    let audit: Vec<String> = client
        .query("select reason from walshift.audit where kind = 'schema'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert!(
        audit[0].contains(
            "from version 5 to 7 (0006_cutover.sql, 0007_schema_checksums.sql) by walshift"
        ),
        "{audit:?}"
    );
    let old_command: (Option<String>, bool) = client
        .query_one("select picked_at::text, failed from walshift.commands", &[])
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(old_command, (None, false));
    // And the copy is right, by walshift's own full pass.
    let out = new.run_ok(&["verify"]).await;
    assert!(out.contains("verification clean: target = transform(source)"), "{out}");
}

/// `sha256sum sql/<file>`: what `schema_migrations.checksum` records.
fn sha256sum(file: &str) -> String {
    let path = format!("{}/sql/{file}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("sha256sum").arg(&path).output().expect("run sha256sum");
    assert!(out.status.success(), "sha256sum {path}: {out:?}");
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
}

/// Everything walshift keeps: each `walshift.*` table's rows, the shadow
/// tables, the slots, publications and migrations of the database.
async fn snapshot(client: &Client) -> Vec<String> {
    let tables: Vec<String> = client
        .query(
            "select tablename from pg_tables where schemaname = 'walshift' order by tablename",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = Vec::new();
    for t in tables.iter().map(|t| format!("walshift.{t}")).chain(["shadow.alpha".into()]) {
        let sql = format!(
            "select count(*)::text || ' ' || coalesce(md5(string_agg(x::text, '|' \
             order by x::text)), '') from {t} as x"
        );
        let digest: String = client.query_one(&sql, &[]).await.unwrap().get(0);
        out.push(format!("{t}: {digest}"));
    }
    let objects: String = client
        .query_one(
            "select (select string_agg(slot_name || ' ' || coalesce(confirmed_flush_lsn::text, ''), \
                 ', ' order by slot_name) from pg_replication_slots \
                 where database = current_database()) \
             || ' / ' || (select coalesce(string_agg(pubname, ', ' order by pubname), '') \
                 from pg_publication)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    out.push(objects);
    out
}

/// A state schema at a version this walshift does not know (999): `run`,
/// `status`, `setup` (also of a migration it would create), `verify`,
/// `backfill`, `history` and `teardown --yes` each exit 2 with the message
/// and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_state_schema_is_refused_by_every_command_and_left_alone() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table alpha (id bigint primary key, v text not null, n int not null);
         insert into alpha select g, 'a' || g, g % 10 from generate_series(1, 2000) g;
         create schema shadow;
         create table shadow.alpha (id bigint primary key, label text not null, n10 int not null);",
    )
    .await;
    let alpha = &TABLES[..TABLES.find("\n[[tables]]\nsource = \"public.beta\"").unwrap()];
    let ws = Walshift::with_tables(&db, None, alpha, "");
    ws.run_ok(&["setup"]).await;
    let client = db.client().await;
    let run = ws.spawn_run();
    wait_progress(&client, "shadow.alpha", "complete", WAIT, Progress::complete).await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
    // A change a run would stream, and the version from the future.
    db.execute(
        "update alpha set v = 'changed' where id = 1; \
         insert into walshift.schema_migrations (version, name) values (999, 'from_the_future');",
    )
    .await;
    let before = snapshot(&client).await;

    let message = format!(
        "walshift's state schema on the target is at version 999, this walshift knows up to {}: \
         upgrade walshift (or use the walshift that ran setup)",
        walshift::state::schema::LATEST_VERSION
    );
    for args in [
        &["run"][..],
        &["status"],
        &["status", "--json"],
        &["setup"],
        &["verify"],
        &["backfill"],
        &["history"],
        &["teardown", "--yes"],
    ] {
        expect_exit_2(&ws, args, &[&message, "nothing was changed"]).await;
    }
    // Setup of another migration would create a slot, a publication and a
    // registration: none is created.
    let other = Walshift::with_config(&format!(
        "[migration]\nname = \"other\"\n\n[source]\nurl = \"{}\"\nslot = \"{}_other\"\n\
         publication = \"{}_other\"\n{alpha}",
        db.url(),
        db.slot_name(),
        db.publication_name()
    ));
    expect_exit_2(&other, &["setup"], &[&message]).await;
    assert_eq!(snapshot(&client).await, before);

    // Without the row from the future, the same walshift works again.
    db.execute("delete from walshift.schema_migrations where version = 999").await;
    ws.run_ok(&["status"]).await;
}

/// A version recorded with another checksum than this walshift's file (the
/// file was edited after it was applied): refused with both checksums and
/// the statement that records this walshift's once the schema matches;
/// after it, everything works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_migration_file_is_reported_with_the_way_out() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table alpha (id bigint primary key, v text not null, n int not null);
         create schema shadow;
         create table shadow.alpha (id bigint primary key, label text not null, n10 int not null);",
    )
    .await;
    let alpha = &TABLES[..TABLES.find("\n[[tables]]\nsource = \"public.beta\"").unwrap()];
    let ws = Walshift::with_tables(&db, None, alpha, "");
    ws.run_ok(&["setup"]).await;
    let client = db.client().await;
    let recorded: String = client
        .query_one("select checksum from walshift.schema_migrations where version = 6", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, sha256sum("0006_cutover.sql"));
    db.execute("update walshift.schema_migrations set checksum = 'deadbeef' where version = 6")
        .await;
    let fix = format!(
        "update walshift.schema_migrations set name = 'cutover', checksum = '{recorded}' where \
         version = 6;"
    );
    for args in [&["run"][..], &["status"], &["setup"]] {
        expect_exit_2(
            &ws,
            args,
            &[
                "version 6 is recorded as \"cutover\" with checksum deadbeef",
                &format!("sql/0006_cutover.sql (\"cutover\") has checksum {recorded}"),
                "nothing was changed",
                &fix,
            ],
        )
        .await;
    }
    db.execute(&fix).await;
    let out = ws.run_ok(&["setup"]).await;
    assert!(out.contains("state schema walshift: up to date"), "{out}");
    ws.run_ok(&["status"]).await;
}

/// Two walshifts upgrading the same version-5 schema at once apply each
/// file once (the advisory lock), and the loser sees nothing left to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_upgrades_apply_each_version_once() {
    let db = TestDb::new(PgCluster::shared()).await;
    let mut a = db.client().await;
    let mut b = db.client().await;
    let first = walshift::state::schema::migrate_to(&mut a, 5).await.unwrap();
    assert_eq!((first.from, first.to, first.applied.len()), (0, 5, 5));
    let (x, y) = tokio::join!(
        walshift::state::schema::migrate_to(&mut a, walshift::state::schema::LATEST_VERSION),
        walshift::state::schema::migrate_to(&mut b, walshift::state::schema::LATEST_VERSION),
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    let mut applied = x.applied.clone();
    applied.extend(y.applied.iter());
    assert_eq!(applied, ["0006_cutover.sql", "0007_schema_checksums.sql"], "{x:?} {y:?}");
    assert_eq!(versions(&a).await, [1, 2, 3, 4, 5, 6, 7]);
    let n: i64 = a
        .query_one(
            "select count(*) from pg_attribute where attrelid = \
             'walshift.schema_migrations'::regclass and attname in ('checksum', 'applied_by')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
}
