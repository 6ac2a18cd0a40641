//! Backfill under `kill -9`: the checkpoint is atomic with each chunk's
//! rows, a restarted run resumes after the last committed chunk (or range,
//! with parallel writers), and a copy interrupted several times while a
//! random workload hammers the table still ends with target =
//! transform(source), row for row.
//!
//! Atomicity is also checked deterministically (`*_commit_together`): the
//! test holds the checkpoint table locked, freezes walshift (SIGSTOP) while
//! its checkpoint write waits, and looks at what a crash would leave.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_postgres::Client;
use walshift::runtime::tasks::spawn_named;

use crate::backfill::{
    Progress, WAIT, backfilling_lines, one_table, progress, status_json, wait_progress,
    wait_sessions_gone,
};
use crate::support::cli::{RunProcess, Walshift};
use crate::support::pg::{ClusterOptions, PgCluster, TestDb};
use crate::support::shadow::{assert_converges, diff, rows};

// ---------------------------------------------------------------------------
// resume after kill -9

/// A quiet table copied in fixed chunks of 1000 rows, killed mid-way: the
/// target holds exactly the rows the checkpoint counts, the restarted run
/// resumes after the last committed key, and the finished copy counted
/// every row and chunk once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_backfill_resumes_at_the_last_committed_chunk() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table quiet (id bigint primary key, v text not null, n int not null);
         insert into quiet select g, md5(g::text), g % 100 from generate_series(1, 50000) g;
         analyze quiet;
         create schema shadow;
         create table shadow.quiet (id bigint primary key, v text not null, n int not null);",
    )
    .await;
    let ws = one_table(
        &db,
        "quiet",
        "[backfill]\nchunk_rows_min = 1000\nchunk_rows_max = 1000\nmax_rows_per_second = 10000\n",
    )
    .await;
    let client = db.client().await;
    let run = ws.spawn_run();
    wait_progress(&client, "shadow.quiet", "copying", WAIT, |p| p.rows_copied >= 12_000).await;
    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..300))).await;
    let log = run.kill9().await;
    wait_sessions_gone(&client).await;
    let at_kill = progress(&client, "shadow.quiet").await.unwrap();
    assert!(!at_kill.complete(), "the copy finished before the kill: {at_kill:?}\n{log}");
    // (a) The checkpoint is atomic with the rows (read in one snapshot).
    let (in_target, counted): (i64, i64) = client
        .query_one(
            "select (select count(*) from shadow.quiet), \
             (select rows_copied from walshift.backfill where target_table = 'shadow.quiet')",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((in_target, counted), (at_kill.rows_copied, at_kill.rows_copied), "{at_kill:?}");
    assert_eq!(at_kill.rows_copied % 1000, 0, "{at_kill:?}");
    assert_eq!(at_kill.chunks * 1000, at_kill.rows_copied, "{at_kill:?}");
    let last_key = at_kill.last_key.clone().expect("a cursor after the first chunks");
    assert_eq!(last_key, [at_kill.rows_copied.to_string()], "{at_kill:?}");
    let max_id: i64 =
        client.query_one("select max(id) from shadow.quiet", &[]).await.unwrap().get(0);
    assert_eq!(max_id.to_string(), last_key[0]);

    // (b) The restarted run starts after the last committed chunk.
    let run = ws.spawn_run();
    let done = wait_progress(&client, "shadow.quiet", "complete", WAIT, Progress::complete).await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
    let lines = backfilling_lines(&log);
    let first = lines.first().unwrap_or_else(|| panic!("no `backfilling` line in:\n{log}"));
    assert!(first.contains(&format!("after=({})", last_key[0])), "{first}");
    assert!(first.contains(&format!("rows_copied={}", at_kill.rows_copied)), "{first}");
    // (c) No chunk was counted twice.
    // 50 chunks of 1000 rows, plus the empty read that finds the end of
    // the table (a full chunk cannot tell it was the last), which is
    // committed as a chunk of its own.
    assert_eq!((done.rows_copied, done.chunks), (50_000, 51), "{done:?}");
    assert_eq!(done.last_key.as_deref(), Some(&["50000".to_owned()][..]), "{done:?}");
    let n = assert_converges(
        &client,
        "select * from quiet",
        &client,
        "select * from shadow.quiet",
        WAIT,
    )
    .await;
    assert_eq!(n, 50_000);
    let status = ws.run_ok(&["status"]).await;
    assert!(
        status.contains("shadow.quiet <- public.quiet: complete 50,000/50,000 rows (100.0%)"),
        "{status}"
    );
}

/// The same with parallel writers: chunks of 8000 rows cut into 4 ranges
/// of 2000, each committed with its own checkpoint. A kill leaves the
/// target holding exactly the committed ranges, and the copy resumes after
/// the last of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_parallel_ranges_resumes_after_the_last_committed_range() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table quiet (id bigint primary key, v text not null, n int not null);
         insert into quiet select g, md5(g::text), g % 100 from generate_series(1, 48000) g;
         analyze quiet;
         create schema shadow;
         create table shadow.quiet (id bigint primary key, v text not null, n int not null);",
    )
    .await;
    let ws = Walshift::with_tables(
        &db,
        None,
        "[[tables]]\nsource = \"public.quiet\"\ntarget = \"shadow.quiet\"\n",
        "[backfill]\nchunk_rows_min = 8000\nchunk_rows_max = 8000\nmax_rows_per_second = 12000\n\
         parallelism = 4\n",
    );
    ws.run_ok(&["setup"]).await;
    let client = db.client().await;
    let run = ws.spawn_run();
    wait_progress(&client, "shadow.quiet", "copying", WAIT, |p| p.rows_copied >= 8000).await;
    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..600))).await;
    let log = run.kill9().await;
    wait_sessions_gone(&client).await;
    let (in_target, at_kill) = client
        .query_one(
            "select (select count(*) from shadow.quiet), \
             (select rows_copied from walshift.backfill where target_table = 'shadow.quiet')",
            &[],
        )
        .await
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
        .unwrap();
    let p = progress(&client, "shadow.quiet").await.unwrap();
    assert!(!p.complete(), "the copy finished before the kill: {p:?}\n{log}");
    assert_eq!(in_target, at_kill, "{p:?}");
    assert_eq!(at_kill % 2000, 0, "{p:?}");
    assert_eq!(p.last_key, Some(vec![at_kill.to_string()]), "{p:?}");
    let run = ws.spawn_run();
    let done = wait_progress(&client, "shadow.quiet", "complete", WAIT, Progress::complete).await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
    let first = backfilling_lines(&log);
    let first = first.first().unwrap_or_else(|| panic!("no `backfilling` line in:\n{log}"));
    assert!(first.contains(&format!("after=({at_kill})")), "{first}");
    assert_eq!(done.rows_copied, 48_000, "{done:?}");
    assert_converges(&client, "select * from quiet", &client, "select * from shadow.quiet", WAIT)
        .await;
}

// ---------------------------------------------------------------------------
// the checkpoint commits with its rows, deterministically

/// Sends `signal` (`STOP`, `CONT`) to the run.
fn signal(run: &RunProcess, signal: &str) {
    let pid = run.pid().expect("the run is alive");
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Holds `table` locked until the applier's backend waits for it, then
/// freezes the run (SIGSTOP), releases the lock and waits until the backend
/// has run everything the run had sent: what a `kill -9` at that moment
/// would leave on the target.
async fn freeze_while_waiting_for(client: &Client, locker: &Client, table: &str, run: &RunProcess) {
    locker
        .batch_execute(&format!("begin; lock table {table} in access exclusive mode"))
        .await
        .unwrap();
    let applier = "select count(*) from pg_stat_activity where application_name = 'walshift:apply' \
                   and datname = current_database()";
    crate::support::wait::wait_until("the applier to wait for the lock", WAIT, async || {
        client
            .query_one(&format!("{applier} and wait_event_type = 'Lock'"), &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    signal(run, "STOP");
    locker.batch_execute("commit").await.unwrap();
    crate::support::wait::wait_until("the applier's backend to go idle", WAIT, async || {
        client
            .query_one(&format!("{applier} and state like 'idle%'"), &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
}

/// A chunk's rows and its checkpoint commit in one target transaction,
/// checked deterministically rather than by a lucky kill: the test holds
/// `walshift.backfill` locked so the chunk's checkpoint write waits, freezes
/// walshift while it waits, releases the lock and looks at the target in
/// one snapshot. Whatever walshift sent before the freeze has run by then;
/// rows committed without their checkpoint would show as `count(*) >
/// rows_copied`, and a `kill -9` now would leave them so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_rows_and_their_checkpoint_commit_together() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table quiet (id bigint primary key, v text not null);
         insert into quiet select g, md5(g::text) from generate_series(1, 5000) g;
         analyze quiet;
         create schema shadow;
         create table shadow.quiet (id bigint primary key, v text not null);",
    )
    .await;
    let ws = one_table(
        &db,
        "quiet",
        "[backfill]\nchunk_rows_min = 500\nchunk_rows_max = 500\nmax_rows_per_second = 2000\n",
    )
    .await;
    let client = db.client().await;
    let locker = db.client().await;
    let run = ws.spawn_run();
    wait_progress(&client, "shadow.quiet", "copying", WAIT, |p| p.rows_copied >= 1000).await;
    freeze_while_waiting_for(&client, &locker, "walshift.backfill", &run).await;
    let (in_target, counted): (i64, i64) = client
        .query_one(
            "select (select count(*) from shadow.quiet), \
             (select rows_copied from walshift.backfill where target_table = 'shadow.quiet')",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    let log = run.kill9().await;
    assert_eq!(
        in_target, counted,
        "the target holds {in_target} rows but the checkpoint counts {counted}: a chunk \
         committed without its checkpoint\nlog:\n{log}"
    );
    let run = ws.spawn_run();
    let done = wait_progress(&client, "shadow.quiet", "complete", WAIT, Progress::complete).await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(done.rows_copied, 5000, "{done:?}");
    assert_converges(&client, "select * from quiet", &client, "select * from shadow.quiet", WAIT)
        .await;
}

/// The same for the stream: a transaction's rows and the applied position
/// (`walshift.progress`) commit together. (Not a backfill property, but the
/// checkpoint the backfill's ordering relies on, checked the same way.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_rows_and_their_applied_position_commit_together() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table t (id bigint primary key, v text not null);
         create schema shadow;
         create table shadow.t (id bigint primary key, v text not null);",
    )
    .await;
    let ws = one_table(&db, "t", "").await;
    let client = db.client().await;
    let locker = db.client().await;
    let run = ws.spawn_run();
    db.execute("insert into t values (1, 'one')").await;
    assert_converges(&client, "select * from t", &client, "select * from shadow.t", WAIT).await;
    let before: String =
        crate::support::wait::wait_until("an applied position", WAIT, async || {
            client
                .query_opt("select applied_lsn::text from walshift.progress", &[])
                .await
                .unwrap()
                .map(|r| r.get::<_, String>(0))
        })
        .await;
    // Row 2's transaction is applied while walshift.progress is locked.
    // Heartbeats (transactions without rows) also move the applied
    // position; row 2's commit ends before `row_2_end`.
    let writer = db.client().await;
    let (locked, row_2_end) = tokio::join!(
        freeze_while_waiting_for(&client, &locker, "walshift.progress", &run),
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            writer.batch_execute("insert into t values (2, 'two')").await.unwrap();
            let lsn: String =
                writer.query_one("select pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
            lsn
        }
    );
    let _: () = locked;
    let (in_target, after): (i64, String) = client
        .query_one(
            "select (select count(*) from shadow.t), \
             (select applied_lsn::text from walshift.progress)",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    let past_row_2: bool = client
        .query_one("select $1::text::pg_lsn >= $2::text::pg_lsn", &[&after, &row_2_end])
        .await
        .unwrap()
        .get(0);
    let log = run.kill9().await;
    assert!(
        (in_target == 1 && !past_row_2) || (in_target == 2 && after != before),
        "the target holds {in_target} rows with the applied position at {after} (it was {before} \
         with 1 row): a transaction committed without its applied position\nlog:\n{log}"
    );
    let run = ws.spawn_run();
    assert_converges(&client, "select * from t", &client, "select * from shadow.t", WAIT).await;
    // Stop it once it is running (a signal during start-up ends it with the
    // signal's default action).
    crate::support::wait::wait_until("the restarted run to stream", WAIT, async || {
        run.stderr().contains("streaming").then_some(())
    })
    .await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
}

// ---------------------------------------------------------------------------
// randomized workload, kill -9 mid-backfill

const ROWS: i64 = 100_000;

/// Rows with `id % BIG_EVERY = 0` have an out-of-line TOASTed `doc`.
const BIG_EVERY: i64 = 400;

/// About 10 KB of incompressible hex, different per row (`$seed` is
/// mixed in so the subquery is evaluated per row).
fn big(seed: &str) -> String {
    format!(
        "(select string_agg(md5(random()::text || s || {seed}), '') from generate_series(1, 320) s)"
    )
}

fn source_ddl() -> String {
    format!(
        "create table docs (id bigint primary key, owner text not null,
                            amount_cents bigint not null, doc text, version int not null);
         alter table docs alter column doc set storage external;
         insert into docs
           select g, 'Owner ' || g, (g * 7919) % 1000000,
                  case when g % {BIG_EVERY} = 0 then {} else 'short ' || g end, 0
           from generate_series(1, {ROWS}) g;
         analyze docs;",
        big("g")
    )
}

const SHADOW_DDL: &str = "
create schema shadow;
create table shadow.docs (doc_id bigint primary key, owner_name text not null,
                          amount numeric(14, 2) not null, doc text, origin text not null,
                          version int not null);
";

const DOCS_TABLE: &str = r#"
[[tables]]
source = "public.docs"
target = "shadow.docs"
[tables.columns]
doc_id = "id"
owner_name = "owner"
amount = "amount_cents / 100.0"
doc = "doc"
origin = "'legacy'"
version = "version"
"#;

const DOCS_SOURCE: &str = "select id, owner, (amount_cents / 100.0)::numeric(14, 2), md5(doc), \
                           length(doc), 'legacy'::text, version from docs";
const DOCS_TARGET: &str =
    "select doc_id, owner_name, amount, md5(doc), length(doc), origin, version from shadow.docs";

/// What the workload did.
#[derive(Debug, Default)]
struct Tally {
    transactions: u64,
    /// Unchanged-TOAST updates of rows ahead of the backfill cursor.
    ahead_toast_updates: u64,
    deletes: u64,
    reinserts: u64,
    inserts: u64,
    key_changes: u64,
}

/// The key of the backfill cursor on the target (0 before the first chunk,
/// `i64::MAX` once complete).
async fn cursor(target: &Client) -> i64 {
    match progress(target, "shadow.docs").await {
        Some(p) if p.complete() => i64::MAX,
        Some(Progress { last_key: Some(k), .. }) => k[0].parse().unwrap_or(0),
        _ => 0,
    }
}

/// One workload task: random transactions over a hot set of keys spread
/// over the whole key range, until `stop`.
fn spawn_docs_workload(
    source_url: String,
    target_url: String,
    seed: u64,
    task: i64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Tally> {
    spawn_named("test-docs-workload", async move {
        let mut client = crate::support::pg::connect(&source_url).await.expect("workload source");
        let target = crate::support::pg::connect(&target_url).await.expect("workload target");
        let mut rng = fastrand::Rng::with_seed(seed);
        // Disjoint key spaces per task for new keys.
        let mut next_new = ROWS + 1 + task * 1_000_000;
        // Each task has keys of its own (so a re-insert never races the
        // other task's, and transactions never deadlock): odd or even ids,
        // odd or even multiples of BIG_EVERY.
        let mut hot: Vec<i64> = (0..800)
            .map(|_| rng.i64(1..=ROWS))
            .filter(|id| id % 2 == task && id % BIG_EVERY != 0)
            .collect();
        hot.extend(
            (1..=ROWS / BIG_EVERY).filter(|i| i % 2 == task && rng.bool()).map(|i| i * BIG_EVERY),
        );
        let mut tally = Tally::default();
        let mut last_cursor = (0, std::time::Instant::now() - Duration::from_secs(1));
        let big = big("$1::bigint");
        while !stop.load(Ordering::Relaxed) {
            if last_cursor.1.elapsed() > Duration::from_millis(200) {
                last_cursor = (cursor(&target).await, std::time::Instant::now());
            }
            let tx = client.transaction().await.expect("begin");
            for _ in 0..rng.usize(1..=3) {
                let id = hot[rng.usize(0..hot.len())];
                let result = match rng.u32(0..100) {
                    0..=24 => {
                        tx.execute(
                            "update docs set amount_cents = amount_cents + $2, \
                             version = version + 1 where id = $1",
                            &[&id, &rng.i64(-500..500)],
                        )
                        .await
                    }
                    // Unchanged TOAST on a row the backfill has not copied.
                    25..=44 => {
                        let c = last_cursor.0;
                        let first = c / BIG_EVERY + 1;
                        let last = ROWS / BIG_EVERY;
                        if c == i64::MAX || first > last - 5 {
                            Ok(0)
                        } else {
                            let i = rng.i64(first..=last - 1);
                            let ahead = (i + (i + task) % 2) * BIG_EVERY;
                            let n = tx
                                .execute(
                                    "update docs set owner = owner || '+', \
                                     version = version + 1 where id = $1",
                                    &[&ahead],
                                )
                                .await;
                            if matches!(n, Ok(1)) {
                                tally.ahead_toast_updates += 1;
                            }
                            n
                        }
                    }
                    45..=52 => {
                        tx.execute(&format!("update docs set doc = {big} where id = $1"), &[&id])
                            .await
                    }
                    53..=57 => {
                        tx.execute(
                            "update docs set doc = 'short again', version = version + 1 \
                             where id = $1",
                            &[&id],
                        )
                        .await
                    }
                    58..=69 => {
                        tally.deletes += 1;
                        tx.execute("delete from docs where id = $1", &[&id]).await
                    }
                    // Re-insert the same key (deleted just before, or earlier).
                    70..=81 => {
                        tally.reinserts += 1;
                        let deleted = tx.execute("delete from docs where id = $1", &[&id]).await;
                        let doc = if rng.bool() { big.clone() } else { "'reborn'".to_owned() };
                        match deleted {
                            Ok(_) => {
                                tx.execute(
                                    &format!(
                                        "insert into docs values ($1, 'Reborn ' || $1::bigint, \
                                         $2, {doc}, 100)"
                                    ),
                                    &[&id, &rng.i64(0..100_000)],
                                )
                                .await
                            }
                            e => e,
                        }
                    }
                    82..=93 => {
                        next_new += 1;
                        tally.inserts += 1;
                        let doc = if rng.u32(0..4) == 0 { big.clone() } else { "'new'".to_owned() };
                        tx.execute(
                            &format!(
                                "insert into docs values ($1, 'New ' || $1::bigint, $2, {doc}, 0)"
                            ),
                            &[&next_new, &rng.i64(0..100_000)],
                        )
                        .await
                    }
                    // Key change to a fresh key, past the end of the
                    // existing range (the backfill copies it later, or the
                    // stream applies it), also of rows whose out-of-line
                    // doc stays unchanged (a partial update that moves the
                    // row; see the `key_change_with_unchanged_toast_*`
                    // tests in backfill.rs for the two cases in isolation).
                    _ => {
                        next_new += 1;
                        let n = tx
                            .execute(
                                "update docs set id = $2, version = version + 1 where id = $1",
                                &[&id, &next_new],
                            )
                            .await;
                        if matches!(n, Ok(1)) {
                            tally.key_changes += 1;
                        }
                        n
                    }
                };
                result.expect("workload statement");
            }
            tx.commit().await.expect("commit");
            tally.transactions += 1;
            tokio::time::sleep(Duration::from_millis(rng.u64(2..8))).await;
        }
        tally
    })
}

/// Waits until the target equals transform(source); panics with the
/// difference and the run's log.
async fn converges_or_log(source: &Client, target: &Client, run: &RunProcess, seed: u64) -> usize {
    let started = std::time::Instant::now();
    loop {
        let expected = rows(source, DOCS_SOURCE).await;
        let actual = rows(target, DOCS_TARGET).await;
        if expected == actual {
            return expected.len();
        }
        if started.elapsed() > WAIT {
            panic!(
                "seed {seed}: the target did not converge to transform(source) within {WAIT:?}\n\
                 {}\nrun log:\n{}",
                diff(&expected, &actual),
                run.stderr()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The randomized crash scenario: 100,000 rows (250 with an out-of-line
/// ~10 KB `doc`), a mapping with renames, an expression and a constant, two
/// workload tasks (updates, unchanged-TOAST updates of rows ahead of the
/// cursor, deletes, re-inserts, new keys, key changes), `kill -9` three
/// times mid-copy, then target = transform(source). `target` is `None` for
/// the same database; `backfill` is the `[backfill]` section's body.
async fn backfill_survives_kill_9_under_load(
    source: &TestDb<'_>,
    target: Option<&TestDb<'_>>,
    backfill: &str,
) {
    source.execute(&source_ddl()).await;
    let target_db = target.unwrap_or(source);
    target_db.execute(SHADOW_DDL).await;
    let source_client = source.client().await;
    let target_client = target_db.client().await;
    // The big values really live out of line, uncompressed.
    let toast: i64 = source_client
        .query_one(
            "select pg_relation_size(reltoastrelid) from pg_class where oid = 'docs'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(toast > 2_000_000, "docs' TOAST table holds only {toast} bytes");
    let ws = Walshift::with_tables(
        source,
        target.map(|t| t.url()).as_deref(),
        DOCS_TABLE,
        &format!("[apply]\nbatch_max_rows = 500\n[backfill]\n{backfill}"),
    );
    ws.run_ok(&["setup"]).await;

    // WALSHIFT_TEST_SEED replays a failed run's workload choices (not its
    // timing).
    let seed = std::env::var("WALSHIFT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("backfill crash workload seed {seed}");
    let stop = Arc::new(AtomicBool::new(false));
    let workloads: Vec<_> = (0..2)
        .map(|task| {
            spawn_docs_workload(
                source.url(),
                target_db.url(),
                seed.wrapping_add(task as u64),
                task,
                Arc::clone(&stop),
            )
        })
        .collect();
    let mut rng = fastrand::Rng::with_seed(seed ^ 0xc0ffee);
    let mut copied_at_kills = Vec::new();
    let mut previous = 0;
    for round in 0..3 {
        let run = ws.spawn_run();
        let want = previous + 5000;
        wait_progress(&target_client, "shadow.docs", "copying", WAIT, |p| {
            p.rows_copied >= want || p.complete()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rng.u64(0..400))).await;
        let log = run.kill9().await;
        assert!(!log.contains("panicked"), "walshift panicked (seed {seed}):\n{log}");
        wait_sessions_gone(&target_client).await;
        let p = progress(&target_client, "shadow.docs").await.unwrap();
        assert!(
            !p.complete() && p.rows_copied > previous,
            "kill {round}: the copy is not mid-way or did not advance (seed {seed}): {p:?}"
        );
        copied_at_kills.push(p.rows_copied);
        previous = p.rows_copied;
        // Down for a while: the workload goes on.
        tokio::time::sleep(Duration::from_millis(rng.u64(100..1000))).await;
    }
    let run = ws.spawn_run();
    let done =
        wait_progress(&target_client, "shadow.docs", "complete", WAIT, Progress::complete).await;
    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    for w in workloads {
        let t = w.await.expect("workload task");
        tally.transactions += t.transactions;
        tally.ahead_toast_updates += t.ahead_toast_updates;
        tally.deletes += t.deletes;
        tally.reinserts += t.reinserts;
        tally.inserts += t.inserts;
        tally.key_changes += t.key_changes;
    }
    eprintln!("workload (seed {seed}): {tally:?}; rows copied at kills {copied_at_kills:?}");
    let n = converges_or_log(&source_client, &target_client, &run, seed).await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "seed {seed}; log:\n{log}");
    assert!(n as i64 > ROWS / 2, "seed {seed}: only {n} rows");
    assert!(tally.transactions > 300, "seed {seed}: {tally:?}");
    assert!(tally.ahead_toast_updates > 20, "seed {seed}: {tally:?}");
    assert!(done.rows_copied >= ROWS - tally.deletes as i64 - tally.key_changes as i64, "{done:?}");
    let json = status_json(&ws).await;
    let entry = crate::backfill::status_entry(&json, "shadow.docs");
    assert_eq!(entry["state"], "complete", "{json}");
    assert_eq!(entry["rows_copied"].as_i64(), Some(done.rows_copied), "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_under_load_survives_kill_9_same_database() {
    let db = TestDb::new(PgCluster::shared()).await;
    backfill_survives_kill_9_under_load(
        &db,
        None,
        "chunk_rows_min = 2000\nchunk_rows_max = 2000\nmax_rows_per_second = 8000\n\
         parallelism = 1\n",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_under_load_survives_kill_9_cross_cluster() {
    let source = TestDb::new(PgCluster::shared()).await;
    let target_cluster = PgCluster::start(ClusterOptions::default());
    let target = TestDb::new(&target_cluster).await;
    // Chunks of 4000 rows written as two ranges on two connections.
    backfill_survives_kill_9_under_load(
        &source,
        Some(&target),
        "chunk_rows_min = 4000\nchunk_rows_max = 4000\nmax_rows_per_second = 8000\n\
         parallelism = 2\n",
    )
    .await;
}
