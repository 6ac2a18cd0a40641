//! Backfill: rows that existed before the slot, copied in keyset chunks
//! while the stream applies changes.
//!
//! The helpers here ([`progress`], [`wait_progress`], [`status_json`]) are
//! shared with `backfill_crash.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use walshift::runtime::tasks::spawn_named;

use crate::support::cli::{Walshift, expect_exit_2};
use crate::support::pg::{PgCluster, TestDb};
use crate::support::shadow::{assert_converges, rows};
use crate::support::wait::wait_until;

pub(crate) const WAIT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------
// helpers

/// One table's row of `walshift.backfill` on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Progress {
    pub last_key: Option<Vec<String>>,
    pub rows_copied: i64,
    pub chunks: i64,
    pub pauses: i64,
    pub paused_reason: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
}

impl Progress {
    pub fn complete(&self) -> bool {
        self.completed_at.is_some()
    }
}

/// The `walshift.backfill` row of `target_table` (`schema.table`), if any.
pub(crate) async fn progress(target: &Client, target_table: &str) -> Option<Progress> {
    let row = target
        .query_opt(
            "select last_key, rows_copied, chunks, pauses, paused_reason, started_at::text, \
             completed_at::text from walshift.backfill where target_table = $1",
            &[&target_table],
        )
        .await
        .unwrap_or_else(|e| panic!("reading walshift.backfill of {target_table}: {e}"))?;
    Some(Progress {
        last_key: row.get(0),
        rows_copied: row.get(1),
        chunks: row.get(2),
        pauses: row.get(3),
        paused_reason: row.get(4),
        started_at: row.get(5),
        completed_at: row.get(6),
    })
}

/// Waits until `target_table`'s progress satisfies `pred`; returns it.
#[track_caller]
pub(crate) fn wait_progress<'a>(
    target: &'a Client,
    target_table: &'a str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Progress) -> bool + 'a,
) -> impl Future<Output = Progress> + 'a {
    wait_until(&format!("{target_table}: {what}"), timeout, async move || {
        progress(target, target_table).await.filter(|p| pred(p))
    })
}

/// `walshift status --json`, parsed.
pub(crate) async fn status_json(ws: &Walshift) -> serde_json::Value {
    let out = ws.run_ok(&["status", "--json"]).await;
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("status --json: {e}: {out}"))
}

/// The `backfill[]` entry of `target_table` in `status --json`.
pub(crate) fn status_entry<'s>(
    status: &'s serde_json::Value,
    target_table: &str,
) -> &'s serde_json::Value {
    status["backfill"]
        .as_array()
        .and_then(|a| a.iter().find(|b| b["target"] == target_table))
        .unwrap_or_else(|| panic!("no backfill entry for {target_table} in {status}"))
}

/// A config copying `public.<table>` into `shadow.<table>` (same columns)
/// with `extra` TOML (e.g. a `[backfill]` section), after `setup`.
pub(crate) async fn one_table(db: &TestDb<'_>, table: &str, extra: &str) -> Walshift {
    let ws = Walshift::with_tables(
        db,
        None,
        &format!("[[tables]]\nsource = \"public.{table}\"\ntarget = \"shadow.{table}\"\n"),
        extra,
    );
    ws.run_ok(&["setup"]).await;
    ws
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

/// Waits until no `walshift:*` session is left in `client`'s database: a
/// killed run's last statements (a COMMIT already sent) have finished.
pub(crate) async fn wait_sessions_gone(client: &Client) {
    wait_until("the killed run's sessions to end", WAIT, async || {
        client
            .query_one(
                "select count(*) = 0 from pg_stat_activity \
                 where datname = current_database() and application_name like 'walshift:%'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
}

/// Waits until walshift confirmed (applied durably) everything written to
/// the source so far.
pub(crate) async fn wait_caught_up(source: &Client, slot: &str) {
    wait_caught_up_within(source, slot, WAIT).await;
}

/// Like [`wait_caught_up`] with another timeout.
pub(crate) async fn wait_caught_up_within(source: &Client, slot: &str, timeout: Duration) {
    let lsn: String =
        source.query_one("select pg_current_wal_lsn()::text", &[]).await.unwrap().get(0);
    wait_until(&format!("slot {slot} confirms {lsn}"), timeout, async || {
        source
            .query_one(
                "select confirmed_flush_lsn >= $1::text::pg_lsn from pg_replication_slots \
                 where slot_name = $2",
                &[&lsn, &slot],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
}

/// The `backfilling` log lines of a run.
pub(crate) fn backfilling_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" backfilling ")).collect()
}

// ---------------------------------------------------------------------------
// the command

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_command_copies_preexisting_rows_and_exits() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table events (id bigint primary key, body text not null, n int);
         insert into events select g, 'row ' || g, g % 7 from generate_series(1, 20000) g;
         analyze events;
         create schema shadow;
         create table shadow.events (id bigint primary key, body text not null, n2 int);",
    )
    .await;
    let ws = Walshift::with_tables(
        &db,
        None,
        "[[tables]]\nsource = \"public.events\"\ntarget = \"shadow.events\"\n[tables.columns]\nid = \"id\"\nbody = \"body\"\nn2 = \"n * 2\"\n",
        "[backfill]\nchunk_rows_min = 500\nchunk_rows_max = 4000\n",
    );
    ws.run_ok(&["setup"]).await;
    let out = ws.run_ok(&["backfill"]).await;
    assert!(
        out.contains("backfilled shadow.events from public.events: 20000 rows in"),
        "stdout: {out}"
    );
    let client = db.client().await;
    assert_converges(
        &client,
        "select id, body, n * 2 from public.events",
        &client,
        "select id, body, n2 from shadow.events",
        WAIT,
    )
    .await;
    let status = ws.run_ok(&["status"]).await;
    assert!(
        status.contains("shadow.events <- public.events: complete 20,000/20,000 rows (100.0%)"),
        "{status}"
    );
}

// ---------------------------------------------------------------------------
// key types

const KEY_TYPES_DDL: &str = r#"
create table regional (region text not null, id bigint not null, v int not null,
                       primary key (region, id));
insert into regional
  select (array['eu', 'us', 'EU', 'Ünïcode', 'a b', 'x,y', '(q)', 'ap'])[1 + g % 8], g / 8, g
  from generate_series(0, 2999) g;
create table tokens (id uuid primary key, v int not null);
insert into tokens select gen_random_uuid(), g from generate_series(1, 2500) g;
create table names (name text collate "und-x-icu" primary key, v int not null);
insert into names
  select (array['Émile', 'emile', 'EMILE', 'Zoë', 'zoe', 'ábc', 'Abc', 'abd', 'ß', 'SS', 'Ø',
                'o', 'Ő'])[1 + g % 13] || '-' || (g / 13), g
  from generate_series(0, 2599) g;
create table codes (code text collate "C" primary key, v int not null);
insert into codes
  select (array['Émile', 'emile', 'Zoë', 'zoe', 'ábc', 'Abc', 'ß', 'SS'])[1 + g % 8]
         || '/' || g, g
  from generate_series(0, 2399) g;
analyze;
create schema shadow;
create table shadow.regional (region text not null, id bigint not null, v int not null,
                              primary key (region, id));
create table shadow.tokens (token uuid primary key, v int not null);
create table shadow.names (name text collate "und-x-icu" primary key, v int not null);
create table shadow.codes (code text collate "C" primary key, v int not null);
"#;

const KEY_TYPES_TABLES: &str = r#"
[[tables]]
source = "public.regional"
target = "shadow.regional"

[[tables]]
source = "public.tokens"
target = "shadow.tokens"
[tables.columns]
token = "id"
v = "v"

[[tables]]
source = "public.names"
target = "shadow.names"

[[tables]]
source = "public.codes"
target = "shadow.codes"
"#;

/// (source table, target table, key as text in the source, compare source,
/// compare target)
const KEY_TYPES: &[(&str, &str, &str, &str, &str)] = &[
    (
        "regional",
        "shadow.regional",
        "region || '|' || id",
        "select region, id, v from regional",
        "select region, id, v from shadow.regional",
    ),
    (
        "tokens",
        "shadow.tokens",
        "id::text",
        "select id, v from tokens",
        "select token, v from shadow.tokens",
    ),
    (
        "names",
        "shadow.names",
        "name",
        "select name, v from names",
        "select name, v from shadow.names",
    ),
    (
        "codes",
        "shadow.codes",
        "code",
        "select code, v from codes",
        "select code, v from shadow.codes",
    ),
];

/// One statement of the key-types workload on table `t` (an index into
/// [`KEY_TYPES`]) and key `k` (as the table's key text). Returns whether it
/// inserted a key the table never had.
async fn key_types_statement(
    client: &Client,
    rng: &mut fastrand::Rng,
    t: usize,
    k: &str,
    fresh: u64,
) -> bool {
    let op = rng.u32(0..100);
    let (table, _, _, _, _) = KEY_TYPES[t];
    let where_key = match t {
        0 => "region = split_part($1, '|', 1) and id = split_part($1, '|', 2)::bigint",
        1 => "id = $1::text::uuid",
        2 => "name = $1",
        _ => "code = $1",
    };
    let sql = match op {
        0..=49 => format!("update {table} set v = v + 1 where {where_key}"),
        50..=74 => format!("delete from {table} where {where_key}"),
        // Re-insert a key (a no-op unless it was deleted).
        75..=89 => match t {
            0 => "insert into regional values (split_part($1, '|', 1), \
                  split_part($1, '|', 2)::bigint, -1) on conflict do nothing"
                .to_owned(),
            1 => "insert into tokens values ($1::text::uuid, -1) on conflict do nothing".to_owned(),
            2 => "insert into names values ($1, -1) on conflict do nothing".to_owned(),
            _ => "insert into codes values ($1, -1) on conflict do nothing".to_owned(),
        },
        // A key the table never had, anywhere in the key range.
        _ => {
            let sql = match t {
                0 => format!(
                    "insert into regional values \
                     ((array['eu', 'us', 'EU', 'zz'])[1 + {fresh} % 4], 1000000 + {fresh}, -2)"
                ),
                1 => "insert into tokens values (gen_random_uuid(), -2)".to_owned(),
                2 => format!("insert into names values ('Ébauche ' || {fresh}, -2)"),
                _ => format!("insert into codes values ('Zz ' || {fresh}, -2)"),
            };
            client.execute(&sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            return true;
        }
    };
    client.execute(&sql, &[&k]).await.unwrap_or_else(|e| panic!("{sql} [{k}]: {e}"));
    false
}

/// Composite (text, bigint), uuid, ICU-collated and "C"-collated text keys
/// with mixed case and accents, copied in chunks of 100-300 rows while
/// rows are updated, deleted and inserted across the key range: the target
/// ends equal to the source, and no key was copied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_types_composite_uuid_and_collated_text_copy_exactly() {
    let db = TestDb::new(PgCluster::shared()).await;
    let client = db.client().await;
    let icu: i64 =
        count(&client, "select count(*) from pg_collation where collname = 'und-x-icu'").await;
    assert_eq!(icu, 1, "this test needs the ICU collation und-x-icu");
    db.execute(KEY_TYPES_DDL).await;
    // The ICU order really differs from the byte order the keys would have
    // in the database's default collation (C).
    let differs: bool = client
        .query_one(
            "select array_agg(name order by name) <> array_agg(name order by name collate \"C\") \
             from names",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(differs);
    let ws = Walshift::with_tables(
        &db,
        None,
        KEY_TYPES_TABLES,
        "[backfill]\nchunk_rows_min = 100\nchunk_rows_max = 300\ntarget_chunk_ms = 20\n\
         max_rows_per_second = 2500\n",
    );
    ws.run_ok(&["setup"]).await;
    let mut initial = Vec::new();
    let mut keys = Vec::new();
    for (table, _, key, _, _) in KEY_TYPES {
        let rows = client.query(&format!("select {key} from {table}"), &[]).await.unwrap();
        initial.push(rows.len() as i64);
        keys.push(rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>());
    }

    let seed = fastrand::u64(..);
    eprintln!("key types workload seed {seed}");
    let run = ws.spawn_run();
    let stop = Arc::new(AtomicBool::new(false));
    let fresh = Arc::new(AtomicU64::new(0));
    let workload = {
        let (stop, fresh, url) = (Arc::clone(&stop), Arc::clone(&fresh), db.url());
        spawn_named("test-key-types-workload", async move {
            let client = crate::support::pg::connect(&url).await.expect("workload connection");
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut statements = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = rng.usize(0..KEY_TYPES.len());
                let k = &keys[t][rng.usize(0..keys[t].len())];
                let n = fresh.load(Ordering::Relaxed);
                if key_types_statement(&client, &mut rng, t, k, n).await {
                    fresh.fetch_add(1, Ordering::Relaxed);
                }
                statements += 1;
                tokio::time::sleep(Duration::from_millis(rng.u64(1..6))).await;
            }
            statements
        })
    };
    // Every table complete, with the workload running all along.
    let mut done = Vec::new();
    for (_, target, _, _, _) in KEY_TYPES {
        done.push(
            wait_progress(&client, target, "backfill complete", WAIT, Progress::complete).await,
        );
    }
    stop.store(true, Ordering::Relaxed);
    let statements = workload.await.expect("workload task");
    let fresh = fresh.load(Ordering::Relaxed) as i64;
    assert!(statements > 200, "the workload ran only {statements} statements (seed {seed})");
    for (i, (_, target, _, source_sql, target_sql)) in KEY_TYPES.iter().enumerate() {
        let n = assert_converges(&client, source_sql, &client, target_sql, WAIT).await;
        let p = &done[i];
        // A key is copied at most once: the cursor only moves forward.
        assert!(
            p.rows_copied <= initial[i] + fresh,
            "{target}: {} rows copied of {} keys that ever existed (seed {seed}): {p:?}",
            p.rows_copied,
            initial[i] + fresh
        );
        assert!(p.chunks >= initial[i] / 300, "{target}: only {} chunks: {p:?}", p.chunks);
        assert!(n > 0, "{target} ended empty");
    }
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "log:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
}

// ---------------------------------------------------------------------------
// empty and emptied tables

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_table_completes_with_zero_rows() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table nothing (id bigint primary key, v text);
         analyze nothing;
         create schema shadow;
         create table shadow.nothing (id bigint primary key, v text);",
    )
    .await;
    let ws = one_table(&db, "nothing", "").await;
    let out = ws.run_ok(&["backfill"]).await;
    assert!(out.contains("backfilled shadow.nothing from public.nothing: 0 rows"), "{out}");
    let client = db.client().await;
    let p = progress(&client, "shadow.nothing").await.expect("a walshift.backfill row");
    assert!(p.complete(), "{p:?}");
    assert_eq!((p.rows_copied, p.last_key.as_deref()), (0, None), "{p:?}");
    let status = ws.run_ok(&["status"]).await;
    assert!(
        status.contains("shadow.nothing <- public.nothing: complete 0/0 rows (100.0%)"),
        "{status}"
    );
    let json = status_json(&ws).await;
    let entry = status_entry(&json, "shadow.nothing");
    assert_eq!(entry["state"], "complete", "{json}");
    assert_eq!(entry["rows_copied"], 0, "{json}");
    assert_eq!(count(&client, "select count(*) from shadow.nothing").await, 0);

    // Rows written later arrive through the stream; the completed copy is
    // not started again.
    let run = ws.spawn_run();
    db.execute("insert into nothing values (1, 'later')").await;
    assert_converges(
        &client,
        "select * from nothing",
        &client,
        "select * from shadow.nothing",
        WAIT,
    )
    .await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(progress(&client, "shadow.nothing").await, Some(p));
}

/// Every row is deleted while the backfill copies the table, some before
/// and some after the cursor passed them, and rows inserted meanwhile are
/// deleted too: the target ends empty (no ghost rows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_all_deleted_during_the_backfill_leave_no_ghosts() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table doomed (id bigint primary key, v text not null);
         insert into doomed select g, 'v' || g from generate_series(1, 6000) g;
         analyze doomed;
         create schema shadow;
         create table shadow.doomed (id bigint primary key, v text not null);",
    )
    .await;
    let ws = one_table(
        &db,
        "doomed",
        "[backfill]\nchunk_rows_min = 200\nchunk_rows_max = 200\nmax_rows_per_second = 1500\n",
    )
    .await;
    let client = db.client().await;
    let run = ws.spawn_run();
    wait_progress(&client, "shadow.doomed", "copying", WAIT, |p| p.rows_copied >= 600).await;
    // Rows inserted during the copy, ahead of and behind the cursor.
    db.execute(
        "insert into doomed select g, 'new' from generate_series(6001, 6200) g;
         insert into doomed select -g, 'new' from generate_series(1, 200) g;",
    )
    .await;
    let mut ids: Vec<i64> = (1..=6200).chain(-200..=-1).collect();
    fastrand::shuffle(&mut ids);
    let mut deleted_while_copying = 0;
    for batch in ids.chunks(400) {
        client.execute("delete from doomed where id = any($1)", &[&batch]).await.unwrap();
        if !progress(&client, "shadow.doomed").await.unwrap().complete() {
            deleted_while_copying += 1;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(deleted_while_copying >= 3, "the copy finished too early to test anything");
    let p = wait_progress(&client, "shadow.doomed", "complete", WAIT, Progress::complete).await;
    assert!(p.rows_copied < 6400, "{p:?}");
    let n = assert_converges(
        &client,
        "select * from doomed",
        &client,
        "select * from shadow.doomed",
        WAIT,
    )
    .await;
    assert_eq!(n, 0);
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
}

/// A TRUNCATE of the source while its backfill runs, then new rows behind
/// and ahead of the cursor: no pre-truncate row survives in the target,
/// every new row arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_during_the_backfill_leaves_only_newer_rows() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table churn (id bigint primary key, v text not null);
         insert into churn select g, 'old' || g from generate_series(1, 6000) g;
         analyze churn;
         create schema shadow;
         create table shadow.churn (id bigint primary key, v text not null);",
    )
    .await;
    let ws = one_table(
        &db,
        "churn",
        "[backfill]\nchunk_rows_min = 200\nchunk_rows_max = 200\nmax_rows_per_second = 2000\n",
    )
    .await;
    let client = db.client().await;
    let run = ws.spawn_run();
    wait_progress(&client, "shadow.churn", "copying", WAIT, |p| p.rows_copied >= 1000).await;
    db.execute("update churn set v = 'touched' where id % 500 = 0").await;
    db.execute("truncate churn").await;
    // New rows all over the key range, in several transactions.
    for start in [1, 2001, 4001, 5801, 9001] {
        db.execute(&format!(
            "insert into churn select g, 'new' || g from generate_series({start}, {}) g",
            start + 150
        ))
        .await;
    }
    let p = progress(&client, "shadow.churn").await.unwrap();
    assert!(!p.complete(), "the copy finished before the truncate: {p:?}");
    wait_progress(&client, "shadow.churn", "complete", WAIT, Progress::complete).await;
    let n = assert_converges(
        &client,
        "select * from churn",
        &client,
        "select * from shadow.churn",
        WAIT,
    )
    .await;
    assert_eq!(n, 5 * 151);
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
}

// ---------------------------------------------------------------------------
// rate cap

/// `max_rows_per_second` spaces the chunks: with chunks of 100 rows and a
/// cap of 250 rows/s, chunks commit about 400 ms apart (a chunk's write
/// time shifts its commit by a few ms), never two within 200 ms. (The
/// checkpoint row is polled every 10 ms.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_cap_spaces_every_chunk() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table capped (id bigint primary key, v text not null);
         insert into capped select g, 'v' || g from generate_series(1, 1000) g;
         analyze capped;
         create schema shadow;
         create table shadow.capped (id bigint primary key, v text not null);",
    )
    .await;
    let ws = one_table(
        &db,
        "capped",
        "[backfill]\nchunk_rows_min = 100\nchunk_rows_max = 100\nmax_rows_per_second = 250\n",
    )
    .await;
    let client = db.client().await;
    let run = ws.spawn_run();
    let mut samples: Vec<(Instant, i64)> = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let p = progress(&client, "shadow.capped").await;
        if let Some(p) = &p {
            samples.push((Instant::now(), p.rows_copied));
        }
        if p.as_ref().is_some_and(Progress::complete) {
            break;
        }
        assert!(Instant::now() < deadline, "the copy did not complete: {p:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
    // When the checkpoint moved, and by how much.
    let mut commits: Vec<(Instant, i64)> = Vec::new();
    let mut previous = 0;
    for &(t, rows) in &samples {
        if rows != previous {
            commits.push((t, rows - previous));
            previous = rows;
        }
    }
    let first = commits.first().expect("a first chunk").0;
    let last = commits.last().unwrap().0;
    let timeline: Vec<String> =
        commits.iter().map(|(t, n)| format!("+{n} at {} ms", (*t - first).as_millis())).collect();
    let too_close = commits.windows(2).any(|w| w[1].0 - w[0].0 < Duration::from_millis(200));
    let too_big = commits.iter().any(|c| c.1 > 100);
    assert!(
        !too_close && !too_big,
        "more than one 100-row chunk within 200 ms at a cap of 250 rows/s: {timeline:?}\nlog:\n{log}"
    );
    // On average too: 10 chunks, the first at once.
    assert!(last - first >= Duration::from_millis(3200), "{timeline:?}");
}

// ---------------------------------------------------------------------------
// lag throttle

/// With `max_lag_seconds = 1`, transactions the target needs seconds to
/// apply (a row trigger on the shadow table sleeps 1.5 s for marked rows:
/// a slow target, deterministic and cheap on CPU, unlike a write burst
/// whose apply time depends on the machine) make the stream fall behind:
/// the copy pauses (visible in `walshift status`), then resumes and
/// completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_over_max_lag_pauses_the_copy_then_it_resumes() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table slow (id bigint primary key, v text not null);
         insert into slow select g, 'v' || g from generate_series(1, 8000) g;
         create table burst (id bigint primary key, n int not null);
         analyze;
         create schema shadow;
         create table shadow.slow (id bigint primary key, v text not null);
         create table shadow.burst (id bigint primary key, n int not null);
         create function shadow.slow_apply() returns trigger language plpgsql
           as $$ begin perform pg_sleep(1.5); return new; end $$;
         create trigger slow_apply before insert on shadow.burst
           for each row when (new.n = 99) execute function shadow.slow_apply();
         -- Meant to fire for walshift's writes (setup refuses origin triggers).
         alter table shadow.burst enable always trigger slow_apply;",
    )
    .await;
    let ws = Walshift::with_tables(
        &db,
        None,
        "[[tables]]\nsource = \"public.slow\"\ntarget = \"shadow.slow\"\n\
         [[tables]]\nsource = \"public.burst\"\ntarget = \"shadow.burst\"\n",
        "[backfill]\nchunk_rows_min = 200\nchunk_rows_max = 200\nmax_rows_per_second = 1000\n\
         max_lag_seconds = 1\n",
    );
    ws.run_ok(&["setup"]).await;
    let client = db.client().await;
    let run = ws.spawn_run();
    wait_progress(&client, "shadow.slow", "copying", WAIT, |p| p.rows_copied >= 1000).await;

    // Watch for the pause in the state schema.
    let seen = Arc::new(std::sync::Mutex::new(None::<String>));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (seen, stop, url) = (Arc::clone(&seen), Arc::clone(&stop), db.url());
        spawn_named("test-pause-watcher", async move {
            let client = crate::support::pg::connect(&url).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                if let Some(reason) =
                    progress(&client, "shadow.slow").await.and_then(|p| p.paused_reason)
                {
                    *seen.lock().unwrap() = Some(reason);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Three slow transactions, and small ones committed all along, so the
    // stream has a backlog whose oldest transaction is seconds old.
    let writer = {
        let url = db.url();
        spawn_named("test-lag-writer", async move {
            let client = crate::support::pg::connect(&url).await.unwrap();
            let started = Instant::now();
            let mut i = 0i64;
            while started.elapsed() < Duration::from_secs(5) {
                i += 1;
                let n = if i % 10 == 1 && i < 30 { 99 } else { 0 };
                client.execute("insert into burst values ($1, $2)", &[&i, &n]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    let mut json_paused = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let json = status_json(&ws).await;
        let entry = status_entry(&json, "shadow.slow").clone();
        if entry["state"] == "paused" {
            let text = ws.run_ok(&["status"]).await;
            json_paused = Some((entry, text));
            break;
        }
        if entry["state"] == "complete" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writer.await.unwrap();
    let p = wait_progress(&client, "shadow.slow", "complete", WAIT, Progress::complete).await;
    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(p.pauses >= 1, "the copy never paused: {p:?}\nlog:\n{log}");
    let reason = seen.expect("paused_reason was never seen set");
    assert!(reason.contains("replication lag"), "{reason}");
    assert!(reason.contains("is over backfill.max_lag_seconds (1 s)"), "{reason}");
    let (entry, text) = json_paused.expect("status --json never showed the table paused");
    assert!(
        entry["paused_reason"].as_str().is_some_and(|r| r.contains("replication lag")),
        "{entry}"
    );
    assert!(entry["pauses"].as_u64().is_some_and(|n| n >= 1), "{entry}");
    assert!(text.contains("shadow.slow <- public.slow: paused "), "{text}");
    assert!(text.contains(", paused: replication lag "), "{text}");
    assert!(log.contains("backfill paused"), "{log}");
    assert!(log.contains("backfill resumed"), "{log}");
    let json = status_json(&ws).await;
    let entry = status_entry(&json, "shadow.slow");
    assert_eq!(entry["state"], "complete", "{json}");
    assert_eq!(entry["pauses"].as_i64(), Some(p.pauses), "{json}");
    assert_eq!(entry["paused_reason"], serde_json::Value::Null, "{json}");
    let text = ws.run_ok(&["status"]).await;
    assert!(
        text.contains(&format!(
            "shadow.slow <- public.slow: complete 8,000/8,000 rows (100.0%), {} pause(s)",
            p.pauses
        )),
        "{text}"
    );
    for (s, t) in [("slow", "shadow.slow"), ("burst", "shadow.burst")] {
        assert_converges(
            &client,
            &format!("select * from {s}"),
            &client,
            &format!("select * from {t}"),
            WAIT,
        )
        .await;
    }
}

// ---------------------------------------------------------------------------
// walshift backfill --table --restart

const TWO_TABLES_DDL: &str = "
create table alpha (id bigint primary key, v text not null, n int not null);
insert into alpha select g, 'a' || g, g % 10 from generate_series(1, 5000) g;
create table beta (id bigint primary key, v text not null);
insert into beta select g, 'b' || g from generate_series(1, 3000) g;
analyze;
create schema shadow;
create table shadow.alpha (id bigint primary key, label text not null, n10 int not null);
create table shadow.beta (id bigint primary key, v text not null);
";

const ALPHA: &str = r#"
[[tables]]
source = "public.alpha"
target = "shadow.alpha"
[tables.columns]
id = "id"
label = "upper(v)"
n10 = "n * 10"
"#;

const BETA: &str = r#"
[[tables]]
source = "public.beta"
target = "shadow.beta"
"#;

const ALPHA_SOURCE: &str = "select id, upper(v), n * 10 from alpha";
const ALPHA_TARGET: &str = "select id, label, n10 from shadow.alpha";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recopies_one_table_and_refuses_while_running() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(TWO_TABLES_DDL).await;
    let ws = Walshift::with_tables(
        &db,
        None,
        &format!("{ALPHA}{BETA}"),
        "[backfill]\nchunk_rows_min = 500\nchunk_rows_max = 1000\n",
    );
    ws.run_ok(&["setup"]).await;
    let client = db.client().await;
    let run = ws.spawn_run();
    wait_progress(&client, "shadow.alpha", "complete", WAIT, Progress::complete).await;
    let beta = wait_progress(&client, "shadow.beta", "complete", WAIT, Progress::complete).await;
    assert_converges(&client, ALPHA_SOURCE, &client, ALPHA_TARGET, WAIT).await;
    let alpha = progress(&client, "shadow.alpha").await.unwrap();

    // Corrupt the target directly.
    client
        .execute("update shadow.alpha set label = 'corrupt', n10 = -1 where id % 97 = 0", &[])
        .await
        .unwrap();
    client.execute("update shadow.beta set v = 'corrupt' where id % 89 = 0", &[]).await.unwrap();
    let corrupt_alpha = rows(&client, ALPHA_TARGET).await;

    // While run streams, --restart is refused and changes nothing.
    let stderr = expect_exit_2(
        &ws,
        &["backfill", "--table", "shadow.alpha", "--restart"],
        &[&format!("replication slot {} is in use", db.slot_name()), "nothing was changed"],
    )
    .await;
    assert!(stderr.contains("stop the running `walshift run`"), "{stderr}");
    assert_eq!(progress(&client, "shadow.alpha").await.as_ref(), Some(&alpha));
    assert_eq!(rows(&client, ALPHA_TARGET).await, corrupt_alpha);

    // Bad --table names exit 2 and list the mapped tables.
    expect_exit_2(
        &ws,
        &["backfill", "--table", "nope"],
        &["--table nope", "public.alpha -> shadow.alpha", "public.beta -> shadow.beta"],
    )
    .await;
    // --restart without --table: rejected by the argument parser.
    let out = ws.run(&["backfill", "--restart"]).await;
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--table"), "{stderr}");

    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
    let out = ws.run_ok(&["backfill", "--table", "shadow.alpha", "--restart"]).await;
    assert!(out.contains("backfilled shadow.alpha from public.alpha: 5000 rows"), "{out}");
    // The re-copy fixed alpha right away (nothing else writes).
    let expected = rows(&client, ALPHA_SOURCE).await;
    assert_eq!(rows(&client, ALPHA_TARGET).await, expected);
    let again = progress(&client, "shadow.alpha").await.unwrap();
    assert!(again.complete(), "{again:?}");
    assert_eq!(again.rows_copied, 5000, "{again:?}");
    assert_ne!(again.completed_at, alpha.completed_at, "alpha was not copied again");
    // beta was left alone: same progress, still corrupt.
    assert_eq!(progress(&client, "shadow.beta").await.as_ref(), Some(&beta));
    let corrupt: i64 = count(&client, "select count(*) from shadow.beta where v = 'corrupt'").await;
    assert_eq!(corrupt, 3000 / 89);
    let status = ws.run_ok(&["status"]).await;
    assert!(
        status.contains("shadow.alpha <- public.alpha: complete 5,000/5,000 rows (100.0%)"),
        "{status}"
    );
    assert!(
        status.contains("shadow.beta <- public.beta: complete 3,000/3,000 rows (100.0%)"),
        "{status}"
    );
}

// ---------------------------------------------------------------------------
// a table added later

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_added_later_is_backfilled_alone() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(TWO_TABLES_DDL).await;
    let ws = Walshift::with_tables(&db, None, ALPHA, "");
    ws.run_ok(&["setup"]).await;
    let client = db.client().await;
    let run = ws.spawn_run();
    let alpha = wait_progress(&client, "shadow.alpha", "complete", WAIT, Progress::complete).await;
    db.execute("update alpha set n = n + 1 where id % 50 = 0").await;
    assert_converges(&client, ALPHA_SOURCE, &client, ALPHA_TARGET, WAIT).await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(progress(&client, "shadow.beta").await, None);

    // beta joins the publication and the mapping.
    db.execute(&format!(
        "insert into beta select g, 'late' || g from generate_series(3001, 4000) g;
         alter publication {} add table beta;",
        db.publication_name()
    ))
    .await;
    let both = Walshift::with_tables(
        &db,
        None,
        &format!("{ALPHA}{BETA}"),
        "[backfill]\nchunk_rows_min = 300\nchunk_rows_max = 300\n",
    );
    let out = both.run_ok(&["backfill"]).await;
    assert!(out.contains("backfilled shadow.beta from public.beta: 4000 rows in"), "{out}");
    let beta = progress(&client, "shadow.beta").await.unwrap();
    assert!(beta.complete(), "{beta:?}");
    assert_eq!((beta.rows_copied, beta.chunks), (4000, 14), "{beta:?}");
    assert_eq!(progress(&client, "shadow.alpha").await, Some(alpha), "alpha was copied again");
    assert_converges(&client, "select * from beta", &client, "select * from shadow.beta", WAIT)
        .await;
    // Both stream from now on.
    let run = both.spawn_run();
    db.execute("update beta set v = 'x' where id % 7 = 0; update alpha set v = 'y' where id < 10")
        .await;
    assert_converges(&client, "select * from beta", &client, "select * from shadow.beta", WAIT)
        .await;
    assert_converges(&client, ALPHA_SOURCE, &client, ALPHA_TARGET, WAIT).await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
    let status = both.run_ok(&["status"]).await;
    assert!(
        status.contains("shadow.beta <- public.beta: complete 4,000/4,000 rows (100.0%)"),
        "{status}"
    );
}

// ---------------------------------------------------------------------------
// key change of a row not yet copied

/// A key change whose TOASTed column is unchanged, of a row the backfill
/// has not reached yet, to a key the backfill has already passed: neither
/// the stream (the target has no row to update) nor the copy (the new key
/// is behind the cursor) may lose it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_change_with_unchanged_toast_ahead_of_the_cursor_is_not_lost() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table docs (id bigint primary key, note text, doc text);
         alter table docs alter column doc set storage external;
         insert into docs select g, 'n' || g, 'small' from generate_series(1, 4000) g;
         update docs set doc = (select string_agg(md5(random()::text || s || id), '')
                                from generate_series(1, 300) s) where id > 3990;
         analyze docs;
         create schema shadow;
         create table shadow.docs (id bigint primary key, note text, doc text);",
    )
    .await;
    let ws = one_table(
        &db,
        "docs",
        "[backfill]\nchunk_rows_min = 200\nchunk_rows_max = 200\nmax_rows_per_second = 2000\n",
    )
    .await;
    let client = db.client().await;
    let run = ws.spawn_run();
    wait_progress(&client, "shadow.docs", "copying", WAIT, |p| p.rows_copied >= 600).await;
    // 3995 and 3996 are ahead of the cursor, -3995 and 0 behind it. (The
    // same move of a row whose doc is inline, 3000 to -3000, is a full-row
    // change: delete the old key, upsert the new one.)
    db.execute("update docs set id = -id where id = 3995").await;
    db.execute("update docs set id = 0, note = 'moved' where id = 3996").await;
    db.execute("update docs set id = -id where id = 3000").await;
    let p = progress(&client, "shadow.docs").await.unwrap();
    assert!(!p.complete(), "{p:?}");
    wait_progress(&client, "shadow.docs", "complete", WAIT, Progress::complete).await;
    wait_caught_up(&client, &db.slot_name()).await;
    let source_sql = "select id, note, md5(doc) from docs";
    let target_sql = "select id, note, md5(doc) from shadow.docs";
    let (expected, actual) = (rows(&client, source_sql).await, rows(&client, target_sql).await);
    assert!(
        expected == actual,
        "{}\nrun log:\n{}",
        crate::support::shadow::diff(&expected, &actual),
        run.stderr()
    );
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
}

/// A key change whose TOASTed column is unchanged, of a row the target
/// already has, to a key in the range the next chunk copies: the chunk's
/// snapshot is newer than the applied position, so the chunk writes the
/// row at its new key *before* the stream applies the key change, which
/// must then still apply (the chunk already holds its result), not fail on
/// the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_change_with_unchanged_toast_into_the_next_chunk_is_applied() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table docs (id bigint primary key, note text, doc text);
         alter table docs alter column doc set storage external;
         insert into docs select g * 10, 'n' || g, 'small' from generate_series(1, 3000) g;
         insert into docs values (1, 'toasted', (select string_agg(md5(random()::text || s), '')
                                                 from generate_series(1, 300) s));
         analyze docs;
         create schema shadow;
         create table shadow.docs (id bigint primary key, note text, doc text);",
    )
    .await;
    let ws = one_table(
        &db,
        "docs",
        "[backfill]\nchunk_rows_min = 100\nchunk_rows_max = 100\nmax_rows_per_second = 500\n",
    )
    .await;
    let client = db.client().await;
    let run = ws.spawn_run();
    let p = wait_progress(&client, "shadow.docs", "copying", WAIT, |p| p.rows_copied >= 300).await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
    let p = progress(&client, "shadow.docs").await.unwrap_or(p);
    assert!(!p.complete(), "{p:?}");
    // Row 1 is in the target; move it just past the cursor, doc unchanged.
    let cursor: i64 = p.last_key.as_ref().unwrap()[0].parse().unwrap();
    db.execute(&format!("update docs set id = {} where id = 1", cursor + 1)).await;
    let mut run = ws.spawn_run();
    let source_sql = "select id, note, md5(doc) from docs";
    let target_sql = "select id, note, md5(doc) from shadow.docs";
    let expected = rows(&client, source_sql).await;
    let started = Instant::now();
    loop {
        let actual = rows(&client, target_sql).await;
        if actual == expected {
            break;
        }
        assert!(
            !run.has_exited() && started.elapsed() < WAIT,
            "the target did not converge (the run {}):\n{}\nrun log:\n{}",
            if run.has_exited() { "exited" } else { "is still running" },
            crate::support::shadow::diff(&expected, &actual),
            run.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
}
