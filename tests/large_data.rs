//! Large and unusual data through backfill, stream and verify: a 200 MB
//! `bytea` value and a 1 GB source transaction with walshift's peak RSS
//! bounded, a table wider than a function's 100 arguments, a partitioned
//! source published through its root, arrays of composite types, and a text
//! key made of collation traps cut by one-row chunks.
//!
//! The two heavy tests share one private cluster (a larger `max_wal_size`,
//! and their gigabytes stay off the shared cluster) and run one at a time.
//! Peak RSS is the process's `VmHWM`, read while it still runs.

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use walshift::runtime::tasks::spawn_named;

use crate::backfill::{wait_caught_up, wait_caught_up_within, wait_progress};
use crate::support::cli::{RunProcess, Walshift};
use crate::support::pg::{ClusterOptions, PgCluster, TestDb};
use crate::support::shadow::assert_converges;
use crate::support::wait::wait_until;

const WAIT: Duration = Duration::from_secs(90);
/// The heavy tests' waits: a debug build on a shared 2-core machine.
const HEAVY_WAIT: Duration = Duration::from_secs(300);
const MIB: f64 = 1024.0 * 1024.0;
/// walshift's own memory besides the large values (about 20 MiB measured),
/// with room for allocator slack.
const BASELINE: u64 = 128 << 20;

// ---------------------------------------------------------------------------
// helpers

/// The private cluster of the heavy tests, started on first use.
fn heavy_cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        PgCluster::start(ClusterOptions {
            settings: vec![
                // A 1 GB transaction without a checkpoint storm.
                ("max_wal_size".into(), "4GB".into()),
            ],
            ..ClusterOptions::default()
        })
    })
}

/// Held by a heavy test for its whole run, so the two never overlap (their
/// RSS figures are per process, but their run times are not).
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `VmHWM` (peak resident set size) of a running process, in bytes.
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Peak RSS of a running `walshift run`, in bytes.
fn run_peak(run: &RunProcess) -> u64 {
    let pid = run.pid().expect("walshift run is still running");
    vm_hwm(pid).expect("read VmHWM of walshift run")
}

/// Runs `walshift <args>` to its end, sampling its peak RSS every 5 ms
/// until it exits; returns the exit code, the peak (bytes) and the log.
async fn run_with_peak(
    ws: &Walshift,
    args: &[&str],
    timeout: Duration,
) -> (Option<i32>, u64, String) {
    let mut process = ws.spawn(args);
    let pid = process.pid().expect("just spawned");
    let started = Instant::now();
    let mut peak = 0;
    loop {
        if let Some(hwm) = vm_hwm(pid) {
            peak = peak.max(hwm);
        }
        if process.has_exited() {
            break;
        }
        assert!(started.elapsed() < timeout, "walshift {args:?} did not exit within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (code, log) = process.wait(Duration::from_secs(10)).await;
    (code, peak, log)
}

/// `walshift verify`, expected clean; returns its peak RSS in bytes.
async fn verify_clean(ws: &Walshift, timeout: Duration) -> u64 {
    let (code, peak, log) = run_with_peak(ws, &["verify"], timeout).await;
    if code != Some(0) {
        let details = ws.run(&["verify", "--json"]).await;
        panic!(
            "walshift verify exited {code:?}, expected 0 (clean)\nlog:\n{log}\nverify --json: {}",
            String::from_utf8_lossy(&details.stdout)
        );
    }
    peak
}

/// Stops a run and asserts it exited cleanly.
async fn stop(run: RunProcess) -> String {
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "walshift run did not exit cleanly:\n{log}");
    log
}

/// Waits until the backfill of `target_table` is complete.
async fn wait_backfilled(client: &Client, target_table: &str, timeout: Duration) {
    wait_progress(client, target_table, "backfill complete", timeout, |p| p.complete()).await;
}

/// `count(*)` and an order-independent digest of every row's text.
async fn digest(client: &Client, table: &str) -> (i64, String) {
    let row = client
        .query_one(
            &format!(
                "select count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0)::text \
                 from {table} as t"
            ),
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("digest of {table}: {e}"));
    (row.get(0), row.get(1))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB
}

/// A small concurrent workload: runs `statements` (each its own
/// transaction, `{n}` replaced by a counter) in a loop until stopped.
struct Workload {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Workload {
    fn start(client: Client, statements: &[&str]) -> Workload {
        let statements: Vec<String> = statements.iter().map(|s| (*s).to_owned()).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (s, d) = (Arc::clone(&stop), Arc::clone(&done));
        let task = spawn_named("test-large-data-workload", async move {
            let mut n: u64 = 0;
            while !s.load(Ordering::Relaxed) {
                for sql in &statements {
                    n += 1;
                    let sql = sql.replace("{n}", &n.to_string());
                    client
                        .batch_execute(&sql)
                        .await
                        .unwrap_or_else(|e| panic!("workload: {sql}\nfailed: {e:?}"));
                }
                d.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Workload { stop, done, task }
    }

    /// Stops it after at least `rounds` rounds; returns the rounds run.
    async fn stop_after(self, rounds: u64) -> u64 {
        let done = Arc::clone(&self.done);
        wait_until(&format!("{rounds} workload rounds"), WAIT, async || {
            done.load(Ordering::Relaxed) >= rounds
        })
        .await;
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("the workload task panicked");
        self.done.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------
// 1. a 200 MB bytea value

/// Size of the large value.
const BIG_VALUE: usize = 200 << 20;

/// `BIG_VALUE` random (incompressible) bytes.
fn random_bytes() -> Vec<u8> {
    let mut v = vec![0u8; BIG_VALUE];
    fastrand::fill(&mut v);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_bytea_value_passes_backfill_stream_and_verify_in_bounded_memory() {
    let _heavy = HEAVY.lock().await;
    let db = TestDb::new(heavy_cluster()).await;
    db.execute(
        "create table blobs (id int primary key, tag text not null, b bytea);
         alter table blobs alter column b set storage external;
         insert into blobs select g, 'small ' || g, decode(md5(g::text), 'hex')
           from generate_series(10, 40) g;
         create schema shadow;
         create table shadow.blobs (like public.blobs including all);",
    )
    .await;
    let client = db.client().await;
    let started = Instant::now();
    client
        .execute("insert into blobs values (1, 'big', $1)", &[&random_bytes()])
        .await
        .expect("insert the 200 MB value");
    let stored: i64 =
        client.query_one("select pg_total_relation_size('blobs')", &[]).await.unwrap().get(0);
    assert!(stored > BIG_VALUE as i64, "the value is stored uncompressed: {stored} bytes");
    eprintln!("200 MB value written in {:.1} s", started.elapsed().as_secs_f64());

    let ws = Walshift::with_tables(
        &db,
        None,
        "[[tables]]\nsource = \"public.blobs\"\ntarget = \"shadow.blobs\"\n",
        "[backfill]\nchunk_rows_min = 1\nchunk_rows_max = 4\n[verify]\nenabled = false\n",
    );
    ws.run_ok(&["setup"]).await;
    let compare = async |timeout| {
        assert_converges(
            &client,
            "select id, tag, length(b), md5(b) from public.blobs",
            &client,
            "select id, tag, length(b), md5(b) from shadow.blobs",
            timeout,
        )
        .await
    };

    // Backfill: the value exists before the slot.
    let started = Instant::now();
    let run = ws.spawn_run();
    wait_backfilled(&client, "shadow.blobs", HEAVY_WAIT).await;
    wait_caught_up(&client, &db.slot_name()).await;
    let backfill_peak = run_peak(&run);
    stop(run).await;
    compare(WAIT).await;
    let backfill_s = started.elapsed().as_secs_f64();

    // Stream: a new 200 MB value inserted; once it is applied, an update
    // that leaves it unchanged (TOAST 'u') and a new 200 MB value for the
    // backfilled row; small transactions all along. (One huge row at a time:
    // back to back, two may be held at once, see docs/apply.md.)
    let started = Instant::now();
    let run = ws.spawn_run();
    let workload = Workload::start(
        db.client().await,
        &[
            "update blobs set tag = 'w{n}' where id = 10 + {n} % 31",
            "insert into blobs values (100 + {n}, 'new', decode(md5('{n}'), 'hex'))",
        ],
    );
    client
        .execute("insert into blobs values (2, 'big 2', $1)", &[&random_bytes()])
        .await
        .expect("insert a second 200 MB value");
    wait_caught_up_within(&client, &db.slot_name(), HEAVY_WAIT).await;
    client.batch_execute("update blobs set tag = 'big 2, renamed' where id = 2").await.unwrap();
    client.execute("update blobs set b = $1 where id = 1", &[&random_bytes()]).await.unwrap();
    workload.stop_after(20).await;
    wait_caught_up_within(&client, &db.slot_name(), HEAVY_WAIT).await;
    let stream_peak = run_peak(&run);
    stop(run).await;
    compare(WAIT).await;
    let stream_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let verify_peak = verify_clean(&ws, HEAVY_WAIT).await;
    let verify_s = started.elapsed().as_secs_f64();
    eprintln!(
        "200 MB bytea: peak RSS backfill {:.0} MiB ({backfill_s:.1} s), stream {:.0} MiB \
         ({stream_s:.1} s), verify {:.0} MiB ({verify_s:.1} s)",
        mib(backfill_peak),
        mib(stream_peak),
        mib(verify_peak)
    );
    let value = BIG_VALUE as u64;
    // The backfill reads the value in binary: it is held twice, in the
    // source connection's receive buffer and as the row read from it.
    assert!(
        backfill_peak < 2 * value + BASELINE,
        "backfill peak RSS {:.0} MiB: more than twice the value",
        mib(backfill_peak)
    );
    // pgoutput sends a bytea as hex text, twice its size; the stream holds
    // that text once, as received, and writes it to the target in pieces.
    assert!(
        stream_peak < 2 * value + BASELINE,
        "stream peak RSS {:.0} MiB: more than the value's text once",
        mib(stream_peak)
    );
    assert!(verify_peak < BASELINE, "verify peak RSS {:.0} MiB", mib(verify_peak));
}

// ---------------------------------------------------------------------------
// 2. a 1 GB source transaction

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gb_source_transaction_streams_in_bounded_memory() {
    let _heavy = HEAVY.lock().await;
    let db = TestDb::new(heavy_cluster()).await;
    db.execute(
        "create table wide (id bigint primary key, body text not null, n int);
         insert into wide select g, repeat(md5(g::text), 32), g from generate_series(1, 2000) g;
         create schema shadow;
         create table shadow.wide (like public.wide including all);",
    )
    .await;
    let client = db.client().await;
    let ws = Walshift::with_tables(
        &db,
        None,
        "[[tables]]\nsource = \"public.wide\"\ntarget = \"shadow.wide\"\n",
        "[verify]\nenabled = false\n",
    );
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    wait_backfilled(&client, "shadow.wide", WAIT).await;
    wait_caught_up(&client, &db.slot_name()).await;
    let idle_peak = run_peak(&run);

    // One transaction of 1,000,000 rows of ~1 KB (inline, uncompressed:
    // below the TOAST threshold), with small transactions committing
    // while the walsender decodes it.
    let started = Instant::now();
    let before: String =
        client.query_one("select pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0);
    let workload = Workload::start(
        db.client().await,
        &[
            "update wide set n = -{n} where id = 1 + {n} % 2000",
            "delete from wide where id = 2000 - {n} % 50",
        ],
    );
    client
        .batch_execute(
            "insert into wide select g, repeat(md5(g::text), 32), g
               from generate_series(1000001, 2000000) g",
        )
        .await
        .unwrap();
    let wal: i64 = client
        .query_one(
            "select pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::text::pg_lsn)::int8",
            &[&before],
        )
        .await
        .unwrap()
        .get(0);
    let written_s = started.elapsed().as_secs_f64();
    workload.stop_after(10).await;
    wait_caught_up_within(&client, &db.slot_name(), HEAVY_WAIT).await;
    let drain_s = started.elapsed().as_secs_f64();
    let peak = run_peak(&run);
    stop(run).await;
    assert_eq!(digest(&client, "public.wide").await, digest(&client, "shadow.wide").await);
    let started = Instant::now();
    let verify_peak = verify_clean(&ws, HEAVY_WAIT).await;
    eprintln!(
        "1 GB transaction: {:.0} MiB of WAL written in {written_s:.1} s, streamed and applied \
         {drain_s:.1} s after it started; walshift peak RSS {:.0} MiB (idle before it {:.0} MiB); \
         verify {:.1} s, peak RSS {:.0} MiB",
        wal as f64 / MIB,
        mib(peak),
        mib(idle_peak),
        started.elapsed().as_secs_f64(),
        mib(verify_peak)
    );
    assert!(wal > 1_000_000_000, "the transaction wrote {wal} bytes of WAL, expected ~1 GB");
    // Bounded by the batch (5,000 rows, 32 MiB), not by the transaction.
    assert!(peak < 256 << 20, "peak RSS {:.0} MiB while streaming 1 GB", mib(peak));
    assert!(verify_peak < BASELINE, "verify peak RSS {:.0} MiB", mib(verify_peak));
}

// ---------------------------------------------------------------------------
// 3. a table wider than a function's 100 arguments

/// Columns besides the key: more than `FUNC_MAX_ARGS` (100), so a statement
/// that passed every column to one function call would fail.
const WIDE_COLUMNS: usize = 110;

/// The type and the value (an SQL expression over `g`) of wide column `i`;
/// every seventh value of a column is NULL.
fn wide_column(i: usize) -> (&'static str, String) {
    let (ty, value) = match i % 12 {
        0 => ("int", format!("(g * {i}) % 1000")),
        1 => ("text", format!("'t{i} ' || g || E' \\\\ \"q\", (x) NULL'")),
        2 => ("numeric", format!("round((g * {i})::numeric / 7, 1 + g % 5) * 10 ^ (g % 3)")),
        3 => (
            "timestamptz",
            format!("timestamptz '2024-02-29 23:59:59.5+05' + g * {i} * interval '61.25 seconds'"),
        ),
        4 => (
            "jsonb",
            format!(
                "jsonb_build_object('g', g, 'i', {i}, 'a', jsonb_build_array(g, 'x', null, 1.50))"
            ),
        ),
        5 => ("bool", format!("(g + {i}) % 2 = 0")),
        6 => ("bytea", format!("decode(md5(g::text || '{i}'), 'hex')")),
        7 => ("uuid", format!("md5(g::text || 'u{i}')::uuid")),
        8 => ("int[]", format!("array[g, {i}, null, -g]")),
        9 => ("text[]", "array['a,b', 'NULL', null, '\"' || g, '{}', '']".to_owned()),
        10 => ("float8", format!("g / 3.0::float8 * {i}")),
        _ => ("date", format!("date '2024-01-01' + g * {i}")),
    };
    (ty, format!("case when (g + {i}) % 7 = 0 then null else {value} end"))
}

/// `insert into wide100 select g, <every column> from generate_series(from, to) g`.
fn wide_insert(from: &str, to: &str) -> String {
    let values: Vec<String> = (1..=WIDE_COLUMNS).map(|i| wide_column(i).1).collect();
    format!(
        "insert into wide100 select g, {} from generate_series({from}, {to}) g",
        values.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_with_110_columns_of_mixed_types_is_copied_streamed_and_verified() {
    let db = TestDb::new(PgCluster::shared()).await;
    let columns: Vec<String> =
        (1..=WIDE_COLUMNS).map(|i| format!("c{i:03} {}", wide_column(i).0)).collect();
    db.execute(&format!(
        "create table wide100 (id bigint primary key, {});
         {};
         create schema shadow;
         create table shadow.wide100 (like public.wide100 including all);",
        columns.join(", "),
        wide_insert("1", "3000")
    ))
    .await;
    let client = db.client().await;
    let ws = Walshift::with_tables(
        &db,
        None,
        "[[tables]]\nsource = \"public.wide100\"\ntarget = \"shadow.wide100\"\n",
        "[backfill]\nchunk_rows_min = 20\nchunk_rows_max = 100\n[verify]\nenabled = false\n",
    );
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    // Inserts, updates of many columns (to values and to NULL), deletes and
    // key re-inserts while the backfill runs.
    let insert = wide_insert("10000 + {n}", "10000 + {n}");
    let workload = Workload::start(
        db.client().await,
        &[
            insert.as_str(),
            "update wide100 set c012 = -c012, c001 = c001 || ' upd', c003 = null, \
             c004 = c004 || '{\"u\": {n}}', c008 = c008 || 1, c009 = null, c010 = c010 + 7 \
             where id = 1 + ({n} * 37) % 3000",
            "delete from wide100 where id = 1 + ({n} * 53) % 3000",
            "insert into wide100 (id, c012, c001) values (1 + ({n} * 53) % 3000, {n}, 'back') \
             on conflict do nothing",
        ],
    );
    wait_backfilled(&client, "shadow.wide100", WAIT).await;
    let rounds = workload.stop_after(20).await;
    // After the backfill: the stream alone.
    client
        .batch_execute(&format!(
            "{}; update wide100 set c002 = c002 * 2, c010 = null, c009 = '{{}}' where id % 10 = 0; \
             delete from wide100 where id % 13 = 0; update wide100 set id = id + 100000 where id % 17 = 0",
            wide_insert("20001", "20100")
        ))
        .await
        .unwrap();
    wait_caught_up(&client, &db.slot_name()).await;
    let rows = assert_converges(
        &client,
        "select * from public.wide100",
        &client,
        "select * from shadow.wide100",
        WAIT,
    )
    .await;
    stop(run).await;
    verify_clean(&ws, WAIT).await;
    eprintln!("110 columns: {rows} rows, {rounds} workload rounds during the backfill");
}

// ---------------------------------------------------------------------------
// 4. a partitioned source table

const ORDERS_DDL: &str = "
create table orders (region text not null, id bigint not null, amount numeric(12,2),
                     note text, primary key (region, id)) partition by list (region);
create table orders_eu partition of orders for values in ('eu') partition by hash (id);
create table orders_eu_0 partition of orders_eu for values with (modulus 2, remainder 0);
create table orders_eu_1 partition of orders_eu for values with (modulus 2, remainder 1);
create table orders_us partition of orders for values in ('us');
create table orders_rest partition of orders default;
insert into orders select (array['eu', 'us', 'apac', 'eu'])[1 + g % 4], g, g * 1.25, 'n' || g
  from generate_series(1, 3000) g;
create schema shadow;
create table shadow.orders (region text not null, id bigint not null, amount numeric(12,2),
                            note text, primary key (region, id));
";

/// Moves row `{n}` to the next region (another partition, another key).
const MOVE_ORDER: &str = "update orders set region = case region when 'eu' then 'us' \
     when 'us' then 'apac' else 'eu' end, amount = amount + 1 where id = 1 + ({n} * 7) % 3000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_source_table_is_published_through_its_root() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(ORDERS_DDL).await;
    let client = db.client().await;
    let ws = Walshift::with_tables(
        &db,
        None,
        "[[tables]]\nsource = \"public.orders\"\ntarget = \"shadow.orders\"\n",
        "[backfill]\nchunk_rows_min = 50\nchunk_rows_max = 200\n[verify]\nenabled = false\n",
    );
    // An existing publication that publishes the partitions as themselves
    // is refused with the fix.
    let publication = db.publication_name();
    db.execute(&format!("create publication \"{publication}\" for table orders")).await;
    let out = ws.run(&["setup"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "setup should refuse the publication:\n{stderr}");
    assert!(
        stderr.contains("publish_via_partition_root = true"),
        "setup should name the fix:\n{stderr}"
    );
    db.execute(&format!("drop publication \"{publication}\"")).await;
    ws.run_ok(&["setup"]).await;
    let via_root: bool = client
        .query_one("select pubviaroot from pg_publication where pubname = $1", &[&publication])
        .await
        .unwrap()
        .get(0);
    assert!(via_root, "setup creates the publication with publish_via_partition_root");

    let run = ws.spawn_run();
    let workload = Workload::start(
        db.client().await,
        &[
            MOVE_ORDER,
            "update orders set note = note || '.' where id = 1 + ({n} * 11) % 3000",
            "delete from orders where id = 1 + ({n} * 13) % 3000",
            "insert into orders values ((array['eu', 'us', 'apac'])[1 + {n} % 3], 100000 + {n}, \
             {n}, 'new')",
        ],
    );
    wait_backfilled(&client, "shadow.orders", WAIT).await;
    let rounds = workload.stop_after(20).await;
    // The stream alone: moves across partitions and sub-partitions, a
    // TRUNCATE of the whole tree is left out (it would empty the test).
    client
        .batch_execute(
            "update orders set region = 'eu' where region = 'us' and id % 5 = 0;
             update orders set region = 'apac' where region = 'eu' and id % 7 = 0;
             update orders set id = id + 200000 where region = 'eu' and id % 11 = 0;
             delete from orders_us where id % 3 = 0;
             insert into orders_eu_1 select 'eu', g, 1, 'direct' from generate_series(900000, 900400) g
               where satisfies_hash_partition('orders_eu'::regclass, 2, 1, g::bigint);",
        )
        .await
        .unwrap();
    wait_caught_up(&client, &db.slot_name()).await;
    let rows = assert_converges(
        &client,
        "select * from public.orders",
        &client,
        "select * from shadow.orders",
        WAIT,
    )
    .await;
    stop(run).await;
    verify_clean(&ws, WAIT).await;
    eprintln!("partitioned: {rows} rows, {rounds} workload rounds during the backfill");
}

// ---------------------------------------------------------------------------
// 5. arrays of composite types

const PRICES_DDL: &str = r#"
create type money_pair as (amount numeric, currency text);
create table prices (id int primary key, pairs money_pair[], best money_pair, note text);
insert into prices
select g,
       array[row(g * 1.50, 'EUR')::money_pair, row(null, 'a,b "c" (d) \ NULL')::money_pair,
             null, row(0.10, '')::money_pair, row(-g, null)::money_pair],
       case when g % 5 = 0 then null else row(g, 'USD')::money_pair end,
       'n' || g
  from generate_series(1, 1000) g;
insert into prices values
  (1001, '{}', row(null, null), 'empty array, all-null composite'),
  (1002, null, null, 'nulls'),
  (1003, array[[row(1, 'a'), row(2, 'b')], [row(3, '{x}'), row(4, '"')]]::money_pair[],
   row(1e-20, 'tiny'), 'two dimensions');
create schema shadow;
create type shadow.money_pair as (amount numeric, currency text);
create table shadow.prices (id int primary key, pairs shadow.money_pair[],
                            pairs_public money_pair[], best shadow.money_pair, note text);
"#;

const PRICES_MAPPING: &str = r#"[[tables]]
source = "public.prices"
target = "shadow.prices"
[tables.columns]
id = "id"
pairs = "pairs::text::shadow.money_pair[]"
pairs_public = "pairs"
best = "best::text::shadow.money_pair"
note = "note"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrays_of_composite_types_are_copied_streamed_and_verified() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(PRICES_DDL).await;
    let client = db.client().await;
    let ws = Walshift::with_tables(
        &db,
        None,
        PRICES_MAPPING,
        "[backfill]\nchunk_rows_min = 20\nchunk_rows_max = 100\n[verify]\nenabled = false\n",
    );
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    let workload = Workload::start(
        db.client().await,
        &[
            "update prices set pairs = pairs || row({n} * 0.25, 'X,{n}')::money_pair \
             where id = 1 + ({n} * 7) % 1000",
            "update prices set best = null, pairs = '{}' where id = 1 + ({n} * 11) % 1000",
            "delete from prices where id = 1 + ({n} * 13) % 1000",
            "insert into prices values (5000 + {n}, array[row({n}, '\"{n}\"')]::money_pair[], \
             row(1.000, 'EUR'), null)",
        ],
    );
    wait_backfilled(&client, "shadow.prices", WAIT).await;
    let rounds = workload.stop_after(20).await;
    client
        .batch_execute(
            "update prices set pairs = array[row(9.90, 'a\"b')]::money_pair[] where id % 10 = 0;
             update prices set pairs = pairs[2:3] where id % 10 = 1;
             update prices set id = id + 10000 where id % 17 = 0;",
        )
        .await
        .unwrap();
    wait_caught_up(&client, &db.slot_name()).await;
    let rows = assert_converges(
        &client,
        "select id, pairs::text, pairs::text, best::text, note from public.prices",
        &client,
        "select id, pairs::text, pairs_public::text, best::text, note from shadow.prices",
        WAIT,
    )
    .await;
    stop(run).await;
    verify_clean(&ws, WAIT).await;
    eprintln!("composite arrays: {rows} rows, {rounds} workload rounds during the backfill");
}

// ---------------------------------------------------------------------------
// 6. a text key made of collation traps

/// Keys that differ only in case, accents (precomposed and combining),
/// whitespace, quoting and array/row syntax, or that sort differently in a
/// linguistic collation than in bytes.
const TRAPS: &[&str] = &[
    "a", "A", "b", "B", "e", "E", "é", "É", "e\u{301}", "E\u{301}", "è", "ê", "ë", " a", "a ",
    "a\t", "\ta", "a\n", "", " ", "  ", "\t", "a b", "a  b", "ab", "aB", "Ab", "AB", "a,b", "(x)",
    "\"q\"", "\\", "'", "{", "}", "NULL", "null", "ß", "ss", "SS", "ẞ", "ﬁ", "fi", "ı", "I", "i",
    "İ", "0", "00", "-1", "+1", "😀", "Ä", "A\u{308}", "ä", "a\u{308}", "z", "Z", "ø", "o", "œ",
    "oe",
];

/// Every trap and every trap with a suffix: 124 keys.
fn trap_keys() -> Vec<String> {
    TRAPS.iter().flat_map(|t| [(*t).to_owned(), format!("{t}1")]).collect()
}

/// A linguistic (ICU) collation if the server has one, else `C.utf8`.
async fn linguistic_collation(client: &Client) -> String {
    client
        .query_one(
            "select coalesce(
               (select collname::text from pg_collation
                 where collname in ('en-x-icu', 'und-x-icu') order by collname limit 1),
               (select collname::text from pg_collation where collname in ('C.utf8', 'C.UTF-8')
                 limit 1), 'default')",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// `walshift verify --json` (plus `extra`): exit code and the reported
/// differences as `(target, key, kind)`.
async fn verify_differences(
    ws: &Walshift,
    extra: &[&str],
) -> (Option<i32>, Vec<(String, Vec<String>, String)>) {
    let mut args = vec!["verify", "--json"];
    args.extend_from_slice(extra);
    let out = ws.run(&args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "verify --json: {e}\nstdout: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let mut found = Vec::new();
    for t in json["tables"].as_array().into_iter().flatten() {
        for d in t["differences"].as_array().into_iter().flatten() {
            let key = d["key"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_owned())
                .collect();
            found.push((
                d["table"].as_str().unwrap().to_owned(),
                key,
                d["kind"].as_str().unwrap().to_owned(),
            ));
        }
    }
    found.sort();
    (out.status.code(), found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_key_of_collation_traps_is_cut_into_one_row_chunks_without_skips() {
    let db = TestDb::new(PgCluster::shared()).await;
    let client = db.client().await;
    let collation = linguistic_collation(&client).await;
    // words_icu: the same linguistic collation on both sides; words_mixed:
    // linguistic on the source, "C" on the target (verification compares
    // both in "C" then).
    db.execute(&format!(
        "create table words_icu (k text collate \"{collation}\" primary key, v int not null);
         create table words_mixed (k text collate \"{collation}\" primary key, v int not null);
         create schema shadow;
         create table shadow.words_icu (like public.words_icu including all);
         create table shadow.words_c (k text collate \"C\" primary key, v int not null);"
    ))
    .await;
    let keys = trap_keys();
    for table in ["words_icu", "words_mixed"] {
        client
            .execute(
                &format!("insert into {table} select k, n from unnest($1::text[]) with ordinality as u(k, n)"),
                &[&keys],
            )
            .await
            .unwrap();
    }
    let ws = Walshift::with_tables(
        &db,
        None,
        "[[tables]]\nsource = \"public.words_icu\"\ntarget = \"shadow.words_icu\"\n\
         [[tables]]\nsource = \"public.words_mixed\"\ntarget = \"shadow.words_c\"\n",
        "[backfill]\nchunk_rows_min = 1\nchunk_rows_max = 2\n\
         [verify]\nenabled = false\nchunk_rows_min = 1\nchunk_rows_max = 3\n",
    );
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    // words_icu changes while it is copied (picked by position in the
    // linguistic order, so the workload needs no quoting).
    let workload = Workload::start(
        db.client().await,
        &[
            "update words_icu set v = v + 1000 where k = \
             (select k from words_icu order by k offset ({n} * 7) % 100 limit 1)",
            "insert into words_icu select k || '{n}', {n} from words_icu \
             order by k offset ({n} * 3) % 90 limit 1 on conflict do nothing",
            "delete from words_icu where k = \
             (select k from words_icu order by k offset ({n} * 11) % 110 limit 1)",
        ],
    );
    wait_backfilled(&client, "shadow.words_icu", WAIT).await;
    let rounds = workload.stop_after(10).await;
    let mixed =
        wait_progress(&client, "shadow.words_c", "backfill complete", WAIT, |p| p.complete()).await;
    // Nothing changed words_mixed: every key copied exactly once.
    assert_eq!(mixed.rows_copied, keys.len() as i64, "rows copied into shadow.words_c: {mixed:?}");
    // The stream: key changes onto and off traps.
    client
        .batch_execute(
            "update words_icu set k = k || chr(769) || chr(769) where k in ('e', 'E', 'a', 'A');
             insert into words_icu values ('éz', 1), ('e' || chr(769) || 'z', 2);
             update words_mixed set k = 'moved ' || k where k in ('a', 'b', 'ß', 'i', 'ı');
             update words_mixed set v = -v where k like '% %';
             delete from words_mixed where k in ('', ' ', 'NULL');
             insert into words_mixed values ('', 0), (' ', 0), ('NULL', 0);",
        )
        .await
        .unwrap();
    wait_caught_up(&client, &db.slot_name()).await;
    for (source, target) in [("words_icu", "words_icu"), ("words_mixed", "words_c")] {
        assert_converges(
            &client,
            &format!("select k, v from public.{source}"),
            &client,
            &format!("select k, v from shadow.{target}"),
            WAIT,
        )
        .await;
    }
    stop(run).await;
    verify_clean(&ws, WAIT).await;

    // Differences on trap keys are reported for exactly those keys, and
    // repaired.
    client
        .batch_execute(
            "update shadow.words_c set v = -1 where k = 'e' || chr(769);
             delete from shadow.words_c where k = 'A';
             insert into shadow.words_c values ('a' || chr(9), 5) on conflict (k) do update set v = 5;
             update shadow.words_icu set v = -1 where k = 'e' || chr(769) || 'z';",
        )
        .await
        .unwrap();
    let (code, found) = verify_differences(&ws, &[]).await;
    let expected = vec![
        ("shadow.words_c".to_owned(), vec!["A".to_owned()], "missing".to_owned()),
        ("shadow.words_c".to_owned(), vec!["a\t".to_owned()], "different".to_owned()),
        ("shadow.words_c".to_owned(), vec!["e\u{301}".to_owned()], "different".to_owned()),
        ("shadow.words_icu".to_owned(), vec!["e\u{301}z".to_owned()], "different".to_owned()),
    ];
    assert_eq!((code, found), (Some(1), expected));
    let (code, _) = verify_differences(&ws, &["--repair"]).await;
    assert_eq!(code, Some(0), "verify --repair leaves a clean copy");
    verify_clean(&ws, WAIT).await;
    eprintln!(
        "collation traps ({collation}): {} keys in one- and two-row chunks, {rounds} workload rounds",
        keys.len()
    );
}
