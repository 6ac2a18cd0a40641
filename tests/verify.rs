//! Verification: `walshift verify` and the periodic verification inside
//! `walshift run` compare transform(source) with the target, report each
//! difference with its key and kind, never report a change in flight, and
//! repair.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::Client;
use walshift::runtime::tasks::spawn_named;

use crate::backfill::{WAIT, wait_caught_up};
use crate::support::cli::{Walshift, expect_exit_2};
use crate::support::pg::{ClusterOptions, PgCluster, TestDb};
use crate::support::shadow::assert_converges;
use crate::support::wait::wait_until;

// ---------------------------------------------------------------------------
// helpers

/// `walshift verify --json` (plus `extra` args): exit code and the parsed report.
async fn verify_json(ws: &Walshift, extra: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let mut args = vec!["verify", "--json"];
    args.extend_from_slice(extra);
    let out = ws.run(&args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("verify --json: {e}\nstdout: {stdout}\nstderr: {stderr}"));
    (out.status.code(), json, stderr)
}

/// `(table, key joined by '|', kind, confirmed)` of every reported difference.
fn reported(report: &serde_json::Value) -> BTreeSet<(String, String, String, bool)> {
    let mut out = BTreeSet::new();
    for t in report["tables"].as_array().into_iter().flatten() {
        for d in t["differences"].as_array().into_iter().flatten() {
            let key: Vec<&str> =
                d["key"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
            out.insert((
                d["table"].as_str().unwrap().to_owned(),
                key.join("|"),
                d["kind"].as_str().unwrap().to_owned(),
                d["confirmed"].as_bool().unwrap(),
            ));
        }
    }
    out
}

fn diff(table: &str, key: &str, kind: &str) -> (String, String, String, bool) {
    (table.to_owned(), key.to_owned(), kind.to_owned(), true)
}

/// `public.t (id int primary key, v int)` with `rows` rows, an empty
/// `shadow.t`, and a config mapping them with `extra` TOML (no setup yet).
async fn int_table(db: &TestDb<'_>, rows: u32, extra: &str) -> Walshift {
    db.execute(&format!(
        "create table t (id int primary key, v int);
         insert into t select g, g from generate_series(1, {rows}) g;
         create schema shadow; create table shadow.t (id int primary key, v int);"
    ))
    .await;
    Walshift::with_tables(
        db,
        None,
        "[[tables]]\nsource = \"public.t\"\ntarget = \"shadow.t\"\n",
        extra,
    )
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}")).get(0)
}

const ITEMS_DDL: &str = "
create table items (id bigint primary key, amount_cents bigint not null, note text,
                    doc text, region text not null default 'eu');
alter table items alter column doc set storage external;
insert into items select g, g * 10, case when g % 3 = 0 then null else 'n' || g end, null,
       case when g % 10 = 0 then 'us' else 'eu' end
  from generate_series(1, 5000) g;
-- Out-of-line TOAST: incompressible values of 8 KB.
update items set doc = (select string_agg(md5(random()::text || i::text), '')
                        from generate_series(1, 256) i) where id in (11, 21, 31);
analyze items;
create schema shadow;
create table shadow.items (id bigint primary key, amount numeric(12,2), note text, doc text,
                           region text);
alter table shadow.items alter column doc set storage external;
";

const ITEMS_MAPPING: &str = "[[tables]]
source = \"public.items\"
target = \"shadow.items\"
filter = \"region = 'eu'\"
[tables.columns]
id = \"id\"
amount = \"amount_cents / 100.0\"
note = \"note\"
doc = \"doc\"
region = \"region\"
";

/// A migrated `items` table with every kind of difference made behind
/// walshift's back in `target`; returns the expected differences.
async fn corrupt_items(target: &Client) -> BTreeSet<(String, String, String, bool)> {
    target
        .batch_execute(
            "update shadow.items set amount = amount + 0.01 where id = 7;
             delete from shadow.items where id = 8;
             insert into shadow.items values (100001, 1, 'extra', null, 'eu');
             update shadow.items set doc = doc || 'x' where id = 21;
             update shadow.items set note = '' where id = 3;
             insert into shadow.items values (40, 4, 'n40', null, 'us');",
        )
        .await
        .unwrap();
    [
        diff("shadow.items", "7", "different"),
        diff("shadow.items", "8", "missing"),
        diff("shadow.items", "100001", "extra"),
        diff("shadow.items", "21", "different"),
        diff("shadow.items", "3", "different"),
        diff("shadow.items", "40", "extra"),
    ]
    .into_iter()
    .collect()
}

async fn detects_every_kind(source: &TestDb<'_>, target: Option<&TestDb<'_>>) {
    source.execute(ITEMS_DDL).await;
    let target_url = target.map(|t| t.url());
    if let Some(t) = target {
        t.execute(
            "create schema shadow;
             create table shadow.items (id bigint primary key, amount numeric(12,2), note text,
                                        doc text, region text);
             alter table shadow.items alter column doc set storage external;",
        )
        .await;
    }
    let ws = Walshift::with_tables(
        source,
        target_url.as_deref(),
        ITEMS_MAPPING,
        "[verify]\nchunk_rows_min = 300\nchunk_rows_max = 1000\n",
    );
    ws.run_ok(&["setup"]).await;
    ws.run_ok(&["backfill"]).await;
    let target_client = match target {
        Some(t) => t.client().await,
        None => source.client().await,
    };
    let toasted = count(
        &target_client,
        "select count(*) from shadow.items where id = 21 and pg_column_size(doc) > 8000",
    )
    .await;
    assert_eq!(toasted, 1, "the doc of id 21 is stored out of line, uncompressed");

    let (code, report, stderr) = verify_json(&ws, &[]).await;
    assert_eq!(code, Some(0), "a fresh copy verifies clean: {report}\n{stderr}");
    assert_eq!(report["result"], "clean");
    assert_eq!(report["tables"][0]["counters"]["rows"], 4500, "{report}");

    let expected = corrupt_items(&target_client).await;
    let (code, report, stderr) = verify_json(&ws, &[]).await;
    assert_eq!(code, Some(1), "differences exit 1: {stderr}");
    assert_eq!(report["result"], "differences");
    assert_eq!(reported(&report), expected, "{report}");
    let seven = report["tables"][0]["differences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["key"][0] == "7")
        .unwrap();
    assert_eq!(seven["columns"][0]["column"], "amount");
    assert_eq!(seven["columns"][0]["source"], "0.7");
    assert_eq!(seven["columns"][0]["target"], "0.71");

    // Human output names the keys too.
    let out = ws.run(&["verify"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("shadow.items key (8): missing in target"), "{text}");
    assert!(text.contains("shadow.items key (100001): extra in target"), "{text}");
    assert!(text.contains("amount: source \"0.7\" target \"0.71\""), "{text}");

    // Stored for status and the controller.
    let stored = count(
        &target_client,
        "select count(*) from walshift.verify_differences where target_table = 'shadow.items'",
    )
    .await;
    assert_eq!(stored, 6);
    let status = ws.run_ok(&["status"]).await;
    assert!(
        status.contains("shadow.items (walshift verify): last full pass differences"),
        "{status}"
    );
    assert!(status.contains("shadow.items key (8): missing"), "{status}");

    // Repair (no run streams), then clean.
    let (code, report, stderr) = verify_json(&ws, &["--repair"]).await;
    assert_eq!(code, Some(0), "repaired: {report}\n{stderr}");
    // 7, 8, 21, 3 from the source; 40 is outside the filter (deleted by the
    // rewrite through the mapping); 100001 is gone from the source.
    assert_eq!(report["repairs"][0]["rewritten"], 5, "{report}");
    assert_eq!(report["repairs"][0]["deleted"], 1, "{report}");
    let (code, report, _) = verify_json(&ws, &[]).await;
    assert_eq!(code, Some(0), "clean after the repair: {report}");
    let source_client = source.client().await;
    assert_converges(
        &source_client,
        "select id, (amount_cents / 100.0)::numeric(12,2), note, doc, region from public.items \
         where region = 'eu'",
        &target_client,
        "select id, amount, note, doc, region from shadow.items",
        WAIT,
    )
    .await;
}

// ---------------------------------------------------------------------------
// detection

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detects_and_repairs_every_kind_of_difference_same_database() {
    let db = TestDb::new(PgCluster::shared()).await;
    detects_every_kind(&db, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detects_and_repairs_every_kind_of_difference_cross_cluster() {
    let source = TestDb::new(PgCluster::shared()).await;
    let target_cluster = PgCluster::start(ClusterOptions::default());
    let target = TestDb::new(&target_cluster).await;
    detects_every_kind(&source, Some(&target)).await;
}

// ---------------------------------------------------------------------------
// equal after the cast: no false positive

/// Values whose text differs but which are equal after the cast to the
/// target column's type compare equal: numeric scale, -0, json key order
/// into jsonb, timestamptz under another time zone (the target database
/// runs in Asia/Tokyo, the source in UTC; an expression that formats a
/// timestamp is evaluated in the target's zone, as apply does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_equal_after_the_cast_report_nothing() {
    let source = TestDb::new(PgCluster::shared()).await;
    let target = TestDb::new(PgCluster::shared()).await;
    source
        .execute(
            "create table vals (id int primary key, n numeric, f float8, j json,
                                ts timestamptz, t text);
             insert into vals select g, g / 2.0, g * 0.1, '{\"b\": 2, \"a\": [1, 2]}',
                    timestamptz '2026-01-01 12:00:00+00' + g * interval '1 hour', 'x' || g
               from generate_series(1, 400) g;
             insert into vals values (0, 0, 0, '{}', 'epoch', '');",
        )
        .await;
    target
        .execute(&format!(
            "alter database {} set timezone = 'Asia/Tokyo';
             create schema shadow;
             create table shadow.vals (id int primary key, n numeric, f float8, j jsonb,
                                       ts timestamptz, ts_text text, t text);",
            target.name()
        ))
        .await;
    let ws = Walshift::with_tables(
        &source,
        Some(&target.url()),
        "[[tables]]\nsource = \"public.vals\"\ntarget = \"shadow.vals\"\n[tables.columns]\n\
         id = \"id\"\nn = \"n\"\nf = \"f\"\nj = \"j\"\nts = \"ts\"\nts_text = \"ts::text\"\nt = \"t\"\n",
        "",
    );
    ws.run_ok(&["setup"]).await;
    ws.run_ok(&["backfill"]).await;
    let t = target.client().await;
    // The same values, written differently.
    t.batch_execute(
        "update shadow.vals set n = n::numeric(20,6) where id % 2 = 1;
         update shadow.vals set f = '-0' where id = 0;
         update shadow.vals set ts = ts at time zone 'UTC' at time zone 'America/New_York'
           where false;",
    )
    .await
    .unwrap();
    let scaled = count(&t, "select count(*) from shadow.vals where n::text like '%.500000'").await;
    assert!(scaled > 100, "the target holds numerics with another scale");
    let minus_zero = count(&t, "select count(*) from shadow.vals where f::text = '-0'").await;
    assert_eq!(minus_zero, 1);
    let tokyo = count(&t, "select count(*) from shadow.vals where ts_text like '%+09'").await;
    assert!(tokyo > 0, "apply formatted ts::text in the target's zone");
    let (code, report, stderr) = verify_json(&ws, &[]).await;
    assert_eq!(code, Some(0), "{report}\n{stderr}");
    assert_eq!(report["result"], "clean");
    assert_eq!(report["tables"][0]["counters"]["rows"], 401);
    // And a real difference in such a column is still found.
    t.batch_execute("update shadow.vals set n = n + 0.000001 where id = 5").await.unwrap();
    let (code, report, _) = verify_json(&ws, &[]).await;
    assert_eq!(code, Some(1));
    assert_eq!(reported(&report), [diff("shadow.vals", "5", "different")].into_iter().collect());
}

// ---------------------------------------------------------------------------
// key types and collations

/// Composite, uuid and ICU-collated text keys, and a text key whose target
/// column sorts differently (ICU on the source, "C" on the target): key
/// ranges cut in the same place on both sides, and exactly the corrupted
/// keys are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_uuid_and_collated_keys_report_exact_keys() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        r#"
create table regional (region text not null, id bigint not null, v int not null,
                       primary key (region, id));
insert into regional
  select (array['eu', 'us', 'EU', 'Ünïcode', 'a b', 'x,y', '(q)', 'ap'])[1 + g % 8], g / 8, g
  from generate_series(0, 2999) g;
create table tokens (id uuid primary key, v int not null);
insert into tokens select md5(g::text)::uuid, g from generate_series(1, 2500) g;
create table names (name text collate "und-x-icu" primary key, v int not null);
insert into names
  select (array['Émile', 'emile', 'EMILE', 'Zoë', 'zoe', 'ábc', 'Abc', 'abd', 'ß', 'SS', 'Ø',
                'o', 'Ő'])[1 + g % 13] || '-' || (g / 13), g
  from generate_series(0, 2599) g;
create schema shadow;
create table shadow.regional (region text not null, id bigint not null, v int not null,
                              primary key (region, id));
create table shadow.tokens (token uuid primary key, v int not null);
create table shadow.names (name text collate "C" primary key, v int not null);
"#,
    )
    .await;
    let ws = Walshift::with_tables(
        &db,
        None,
        "[[tables]]\nsource = \"public.regional\"\ntarget = \"shadow.regional\"\n\
         [[tables]]\nsource = \"public.tokens\"\ntarget = \"shadow.tokens\"\n\
         [tables.columns]\ntoken = \"id\"\nv = \"v\"\n\
         [[tables]]\nsource = \"public.names\"\ntarget = \"shadow.names\"\n",
        "[verify]\nchunk_rows_min = 100\nchunk_rows_max = 300\n",
    );
    ws.run_ok(&["setup"]).await;
    ws.run_ok(&["backfill"]).await;
    let (code, report, stderr) = verify_json(&ws, &[]).await;
    assert_eq!(code, Some(0), "{report}\n{stderr}");
    let c = db.client().await;
    c.batch_execute(
        "update shadow.regional set v = -1 where region = 'Ünïcode' and id = 100;
         delete from shadow.regional where region = 'a b' and id = 7;
         update shadow.tokens set v = -1 where token = md5('77')::uuid;
         insert into shadow.tokens values ('00000000-0000-0000-0000-000000000001', 1);
         update shadow.names set v = -1 where name = 'ß-3';
         delete from shadow.names where name = 'Zoë-40';
         insert into shadow.names values ('zzz', 1);",
    )
    .await
    .unwrap();
    let uuid77: String = c.query_one("select md5('77')::uuid::text", &[]).await.unwrap().get(0);
    let (code, report, _) = verify_json(&ws, &[]).await;
    assert_eq!(code, Some(1));
    let expected: BTreeSet<_> = [
        diff("shadow.regional", "Ünïcode|100", "different"),
        diff("shadow.regional", "a b|7", "missing"),
        diff("shadow.tokens", &uuid77, "different"),
        diff("shadow.tokens", "00000000-0000-0000-0000-000000000001", "extra"),
        diff("shadow.names", "ß-3", "different"),
        diff("shadow.names", "Zoë-40", "missing"),
        diff("shadow.names", "zzz", "extra"),
    ]
    .into_iter()
    .collect();
    assert_eq!(reported(&report), expected, "{report}");
}

// ---------------------------------------------------------------------------
// bad input

/// Unknown table, incomplete backfill, no setup: exit 2 naming the problem,
/// and nothing written to the state schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_2_and_writes_nothing() {
    let db = TestDb::new(PgCluster::shared()).await;
    let ws = int_table(&db, 100, "").await;
    // No setup yet.
    expect_exit_2(&ws, &["verify"], &["walshift setup"]).await;
    ws.run_ok(&["setup"]).await;
    // Backfill not run yet.
    expect_exit_2(&ws, &["verify"], &["shadow.t", "backfill", "not"]).await;
    expect_exit_2(&ws, &["verify", "--table", "nope"], &["--table nope", "shadow.t"]).await;
    let c = db.client().await;
    let rows = count(&c, "select count(*) from walshift.verify_tables").await;
    assert_eq!(rows, 0, "nothing recorded");
    let rows = count(&c, "select count(*) from shadow.t").await;
    assert_eq!(rows, 0, "nothing written to the target");
    // --repair while `run` streams: refused, naming the running instance,
    // and the corrupted row is left for the operator (or the run) to repair.
    let run = ws.spawn_run();
    wait_until("the backfill", WAIT, async || {
        (count(&c, "select count(*) from shadow.t").await == 100).then_some(())
    })
    .await;
    wait_until("the run to stream", WAIT, async || {
        run.stderr().contains("streaming").then_some(())
    })
    .await;
    c.batch_execute("update shadow.t set v = -1 where id = 5").await.unwrap();
    expect_exit_2(
        &ws,
        &["verify", "--repair"],
        &["walshift run is streaming from slot", "walsender pid", "nothing was changed"],
    )
    .await;
    assert_eq!(count(&c, "select v::bigint from shadow.t where id = 5").await, -1);
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
}

// ---------------------------------------------------------------------------
// incremental passes

/// After a clean full pass, an incremental pass inside `run` re-hashes only
/// the keys the stream changed: a few changes, a few key batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_pass_rehashes_only_changed_keys() {
    let db = TestDb::new(PgCluster::shared()).await;
    let ws = int_table(
        &db,
        20000,
        "[verify]\ninterval_seconds = 1\nfull_pass_interval_seconds = 3600\n\
         chunk_rows_min = 1000\nchunk_rows_max = 1000\n",
    )
    .await;
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    let c = db.client().await;
    let last = |kind: &'static str| {
        let c = &c;
        async move {
            c.query_opt(
                "select last_chunks, last_rows, last_result from walshift.verify_tables \
                 where runner = 'run' and last_kind = $1",
                &[&kind],
            )
            .await
            .unwrap()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, String>(2)))
        }
    };
    let full = wait_until("a clean full pass", WAIT, async || {
        last("full").await.filter(|(_, _, r)| r == "clean")
    })
    .await;
    assert_eq!(full.1, 20000);
    assert!(full.0 >= 20, "a full pass hashes every 1,000-row range: {full:?}");
    c.batch_execute("update t set v = -v where id in (5, 9000, 19999)").await.unwrap();
    let inc = wait_until("an incremental pass over the changed keys", WAIT, async || {
        let r = c
            .query_opt(
                "select last_chunks, last_rows, last_result from walshift.verify_tables \
                 where runner = 'run' and last_kind = 'incremental' and last_rows > 0",
                &[],
            )
            .await
            .unwrap();
        r.map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, String>(2)))
    })
    .await;
    assert_eq!(inc, (1, 3, "clean".to_owned()), "one batch of the three changed keys");
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
}

// ---------------------------------------------------------------------------
// online: writes continue during verification

const HOT_DDL: &str = "
create table hot (id bigint primary key, v bigint not null, amount_cents bigint not null,
                  note text);
insert into hot select g * 10, g, g * 3, 'n' || g from generate_series(1, 20000) g;
analyze hot;
create schema shadow;
create table shadow.hot (id bigint primary key, v bigint not null, amount numeric(14,2),
                         note text);
";

const HOT_MAPPING: &str = "[[tables]]
source = \"public.hot\"
target = \"shadow.hot\"
[tables.columns]
id = \"id\"
v = \"v\"
amount = \"amount_cents / 100.0\"
note = \"note\"
";

/// Keys the workload hits: 300 spread over the whole key range (every
/// 666th row) plus new keys past the end.
fn hot_keys() -> Vec<i64> {
    (0..300).map(|i| 10 + i * 666 * 10).collect()
}

/// A randomized write workload on hot keys: updates of several keys per
/// statement, deletes, re-inserts, new keys. Counts the rows changed.
fn hot_workload(
    url: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    changes: Arc<AtomicU64>,
) -> JoinHandle<()> {
    spawn_named("test-hot-workload", async move {
        let client = crate::support::pg::connect(&url).await.expect("workload connection");
        let mut rng = fastrand::Rng::with_seed(seed);
        let keys = hot_keys();
        let mut fresh = 1_000_000 + (seed % 1000) as i64 * 100_000;
        while !stop.load(Ordering::Relaxed) {
            // Sorted: two workers lock rows in the same order (no deadlock).
            let mut pick: Vec<i64> = (0..8).map(|_| keys[rng.usize(0..keys.len())]).collect();
            pick.sort_unstable();
            pick.dedup();
            let k = pick[0];
            let (sql, params): (&str, Vec<i64>) = match rng.u32(0..100) {
                0..=59 => (
                    "update hot set v = v + 1, amount_cents = amount_cents + 7, \
                            note = md5(random()::text) where id = any($1)",
                    pick,
                ),
                60..=74 => ("delete from hot where id = $1", vec![k]),
                75..=89 => (
                    "insert into hot values ($1, 0, 1, 'again') \
                             on conflict (id) do update set v = hot.v - 1",
                    vec![k],
                ),
                _ => {
                    fresh += 1;
                    ("insert into hot values ($1, 1, 2, null)", vec![fresh])
                }
            };
            let n = if params.len() > 1 {
                client.execute(sql, &[&params]).await
            } else {
                client.execute(sql, &[&params[0]]).await
            };
            match n {
                Ok(n) => {
                    changes.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => panic!("workload: {sql}: {e}"),
            }
        }
    })
}

/// `(kind, finished_at)` of the last pass of `runner = 'run'`, and whether
/// any difference is stored.
async fn run_passes(c: &Client) -> (Option<(String, String, String)>, i64) {
    let last = c
        .query_opt(
            "select last_kind, last_finished_at::text, last_result from walshift.verify_tables \
             where runner = 'run' and last_finished_at is not null",
            &[],
        )
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1), r.get(2)));
    let diffs = count(c, "select count(*) from walshift.verify_differences").await;
    (last, diffs)
}

fn seed() -> u64 {
    let seed = std::env::var("WALSHIFT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("workload seed {seed} (replay with WALSHIFT_TEST_SEED={seed})");
    seed
}

/// A randomized workload of more than 2,000 changes/s on hot keys across the
/// whole key range runs while `run` verifies for over a minute (full passes
/// every 5 s, incremental ones in between): no difference is ever reported.
/// Then one target row is corrupted behind walshift's back, with the
/// workload still running: exactly that key is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_verification_reports_nothing_in_flight_and_exactly_a_real_difference() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(HOT_DDL).await;
    let ws = Walshift::with_tables(
        &db,
        None,
        HOT_MAPPING,
        "[verify]\ninterval_seconds = 1\nfull_pass_interval_seconds = 5\n\
         chunk_rows_min = 500\nchunk_rows_max = 4000\nmax_lag_seconds = 30\n",
    );
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    let c = db.client().await;
    wait_until("the first clean full pass", WAIT, async || {
        run_passes(&c).await.0.filter(|(k, _, r)| k == "full" && r == "clean")
    })
    .await;
    let seed = seed();
    let stop = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(AtomicU64::new(0));
    let workers: Vec<JoinHandle<()>> = (0..2)
        .map(|i| {
            hot_workload(db.url(), seed.wrapping_add(i), Arc::clone(&stop), Arc::clone(&changes))
        })
        .collect();
    let started = Instant::now();
    let mut passes: BTreeSet<(String, String)> = BTreeSet::new();
    while started.elapsed() < Duration::from_secs(62) || passes.len() < 10 {
        assert!(started.elapsed() < Duration::from_secs(240), "too few passes: {passes:?}");
        let (last, diffs) = run_passes(&c).await;
        let stored: Vec<String> = c
            .query("select key::text || ' ' || kind from walshift.verify_differences", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            diffs,
            0,
            "a change in flight was reported as a difference: {stored:?}\n{}",
            run.stderr()
        );
        if let Some((kind, at, result)) = last {
            assert_eq!(result, "clean", "pass {kind} at {at} not clean\n{}", run.stderr());
            passes.insert((kind, at));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rate = changes.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    assert!(rate >= 2000.0, "the workload made only {rate:.0} changes/s");
    let kinds: BTreeSet<&str> = passes.iter().map(|(k, _)| k.as_str()).collect();
    assert!(kinds.contains("full") && kinds.contains("incremental"), "{passes:?}");
    eprintln!("{} passes in {:?} at {rate:.0} changes/s", passes.len(), started.elapsed());

    // A real difference, made while the workload runs: exactly that key.
    c.execute("update shadow.hot set note = 'corrupted' where id = 50", &[]).await.unwrap();
    let found = wait_until("the corrupted key to be reported", WAIT, async || {
        let rows = c
            .query("select key, kind, confirmed from walshift.verify_differences", &[])
            .await
            .unwrap();
        (!rows.is_empty()).then(|| {
            rows.iter()
                .map(|r| (r.get::<_, Vec<String>>(0), r.get::<_, String>(1), r.get::<_, bool>(2)))
                .collect::<Vec<_>>()
        })
    })
    .await;
    assert_eq!(found, vec![(vec!["50".to_owned()], "different".to_owned(), true)]);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
}

/// With `[verify] repair = true`, differences of every kind made while a
/// workload runs are repaired by the running instance between its
/// transactions, and the target converges to transform(source).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_repairs_differences_under_a_running_workload() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(HOT_DDL).await;
    let ws = Walshift::with_tables(
        &db,
        None,
        HOT_MAPPING,
        "[verify]\ninterval_seconds = 1\nfull_pass_interval_seconds = 3\nrepair = true\n\
         chunk_rows_min = 500\nchunk_rows_max = 4000\n",
    );
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    let c = db.client().await;
    wait_until("the first clean full pass", WAIT, async || {
        run_passes(&c).await.0.filter(|(k, _, r)| k == "full" && r == "clean")
    })
    .await;
    let seed = seed();
    let stop = Arc::new(AtomicBool::new(false));
    let changes = Arc::new(AtomicU64::new(0));
    let worker = hot_workload(db.url(), seed, Arc::clone(&stop), Arc::clone(&changes));
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every kind, on cold keys and on hot ones.
    c.batch_execute(
        "update shadow.hot set note = 'bad' where id in (30, 40, 6670);
         delete from shadow.hot where id in (70, 13330);
         insert into shadow.hot values (15, 1, 1, 'extra'), (16, 2, 2, 'extra');",
    )
    .await
    .unwrap();
    let repaired = wait_until("the running instance to repair", WAIT, async || {
        run.stderr().contains("repaired rows from the source").then_some(())
    });
    repaired.await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    worker.await.unwrap();
    wait_caught_up(&c, &db.slot_name()).await;
    assert_converges(
        &c,
        "select id, v, (amount_cents / 100.0)::numeric(14,2), note from public.hot",
        &c,
        "select id, v, amount, note from shadow.hot",
        WAIT,
    )
    .await;
    // The next clean pass clears the stored differences.
    wait_until("a clean pass after the repair", WAIT, async || {
        let (last, diffs) = run_passes(&c).await;
        last.filter(|(_, _, r)| r == "clean" && diffs == 0)
    })
    .await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "{log}");
}

// ---------------------------------------------------------------------------
// crash

/// `kill -9` of `walshift verify` in the middle of a long pass: the next
/// `walshift verify` resumes after the last chunk the state schema records,
/// and the finished pass counted every row and chunk exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_verification_resumes_after_the_last_verified_chunk() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table t (id int primary key, v text);
         insert into t select g, md5(g::text) from generate_series(1, 60000) g;
         create schema shadow; create table shadow.t (id int primary key, v text);",
    )
    .await;
    let ws = Walshift::with_tables(
        &db,
        None,
        "[[tables]]\nsource = \"public.t\"\ntarget = \"shadow.t\"\n",
        "[verify]\nchunk_rows_min = 1000\nchunk_rows_max = 1000\nmax_rows_per_second = 8000\n",
    );
    ws.run_ok(&["setup"]).await;
    ws.run_ok(&["backfill"]).await;
    let c = db.client().await;
    let pass = async |c: &Client| {
        c.query_one(
            "select pass_kind, pass_last_key, pass_chunks, pass_rows from walshift.verify_tables \
             where runner = 'cli'",
            &[],
        )
        .await
        .map(|r| {
            (
                r.get::<_, Option<String>>(0),
                r.get::<_, Option<Vec<String>>>(1),
                r.get::<_, i64>(2),
                r.get::<_, i64>(3),
            )
        })
        .ok()
    };
    let verify = ws.spawn(&["verify"]);
    wait_until("verify to check 12 chunks", WAIT, async || pass(&c).await.filter(|p| p.2 >= 12))
        .await;
    tokio::time::sleep(Duration::from_millis(fastrand::u64(0..400))).await;
    verify.kill9().await;
    crate::backfill::wait_sessions_gone(&c).await;
    let (kind, key, chunks, rows) = pass(&c).await.unwrap();
    assert_eq!(kind.as_deref(), Some("full"), "the pass is still recorded as in progress");
    let key = key.expect("a cursor is stored");
    assert!(chunks < 60, "the pass was interrupted ({chunks} chunks)");
    assert_eq!(rows, chunks * 1000, "each stored chunk counted its rows once");
    assert_eq!(key, vec![(chunks * 1000).to_string()], "the cursor is the last chunk's last key");
    let out = ws.run(&["verify", "--json"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("resuming the interrupted verification pass")
            && stderr.contains(&format!("chunks={chunks}")),
        "{stderr}"
    );
    let (chunks_total, rows_total): (i64, i64) = c
        .query_one(
            "select last_chunks, last_rows from walshift.verify_tables where runner = 'cli'",
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(rows_total, 60000, "every row counted once over both runs");
    assert_eq!(chunks_total, 61, "60 chunks and the empty end, each once");
}

// ---------------------------------------------------------------------------
// shipping

/// A mapping that calls a function only the target has cannot be hashed on
/// the source: the table is verified by shipping its rows to the target,
/// says so, and still finds exactly the differing keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_only_the_target_has_is_verified_by_shipping_rows() {
    let source = TestDb::new(PgCluster::shared()).await;
    let target = TestDb::new(PgCluster::shared()).await;
    source
        .execute(
            "create table t (id int primary key, cents bigint not null);
             insert into t select g, g * 7 from generate_series(1, 3000) g;",
        )
        .await;
    target
        .execute(
            "create schema shadow;
             create function shadow.euros(bigint) returns numeric language sql immutable
               as 'select $1 / 100.0';
             create table shadow.t (id int primary key, eur numeric(12,2));",
        )
        .await;
    let ws = Walshift::with_tables(
        &source,
        Some(&target.url()),
        "[[tables]]\nsource = \"public.t\"\ntarget = \"shadow.t\"\n[tables.columns]\n\
         id = \"id\"\neur = \"shadow.euros(cents)\"\n",
        "[verify]\nchunk_rows_min = 500\nchunk_rows_max = 500\n",
    );
    ws.run_ok(&["setup"]).await;
    ws.run_ok(&["backfill"]).await;
    let (code, report, stderr) = verify_json(&ws, &[]).await;
    assert_eq!(code, Some(0), "{report}\n{stderr}");
    assert_eq!(report["tables"][0]["path"], "ship", "{report}");
    assert_eq!(report["tables"][0]["counters"]["rows"], 3000);
    let t = target.client().await;
    t.batch_execute(
        "update shadow.t set eur = 0 where id = 1234;
         delete from shadow.t where id = 2999;
         insert into shadow.t values (5000, 1);",
    )
    .await
    .unwrap();
    let (code, report, _) = verify_json(&ws, &[]).await;
    assert_eq!(code, Some(1));
    let expected: BTreeSet<_> = [
        diff("shadow.t", "1234", "different"),
        diff("shadow.t", "2999", "missing"),
        diff("shadow.t", "5000", "extra"),
    ]
    .into_iter()
    .collect();
    assert_eq!(reported(&report), expected, "{report}");
    let out = ws.run(&["verify"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("shadow.t (rows shipped to the target)"), "{text}");
}
