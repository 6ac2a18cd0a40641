//! Crash safety, atomicity, large transactions and cross-cluster apply,
//! under concurrent randomized workloads against the real binary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_postgres::Client;
use walshift::runtime::tasks::spawn_named;

use crate::support::cli::Walshift;
use crate::support::pg::{ClusterOptions, PgCluster, TestDb};
use crate::support::shadow::assert_converges;
use crate::support::wait::wait_until;

const WAIT: Duration = Duration::from_secs(90);

const SOURCE_DDL: &str = "
create table accounts (id bigint primary key, owner text not null, balance bigint not null,
                       note text);
create table entries (id bigint primary key, account_id bigint not null, amount bigint not null,
                      memo text);
";

const SHADOW_DDL: &str = "
create schema ledger;
create table ledger.accounts (account_id bigint primary key, owner_lower text not null,
                              balance_units numeric(20, 2) not null, note text,
                              source text not null);
create table ledger.entries (entry_id bigint primary key, account_id bigint not null,
                             amount bigint not null, memo_len int);
";

const TABLES: &str = r#"
[[tables]]
source = "public.accounts"
target = "ledger.accounts"
[tables.columns]
account_id = "id"
owner_lower = "lower(owner)"
balance_units = "balance / 100.0"
note = "note"
source = "'legacy'"

[[tables]]
source = "public.entries"
target = "ledger.entries"
filter = "amount <> 0"
[tables.columns]
entry_id = "id"
account_id = "account_id"
amount = "amount"
memo_len = "length(memo)"
"#;

const COMPARE: &[(&str, &str)] = &[
    (
        "select id, lower(owner), (balance / 100.0)::numeric(20,2), note, 'legacy'::text from public.accounts",
        "select account_id, owner_lower, balance_units, note, source from ledger.accounts",
    ),
    (
        "select id, account_id, amount, length(memo) from public.entries where amount <> 0",
        "select entry_id, account_id, amount, memo_len from ledger.entries",
    ),
];

/// One random source transaction: 1 to 8 statements over both tables —
/// inserts, updates, deletes, key updates, multi-row updates.
async fn random_transaction(
    client: &mut Client,
    rng: &mut fastrand::Rng,
    base_id: i64,
    next_id: &mut i64,
) {
    let tx = client.transaction().await.expect("begin");
    for _ in 0..rng.usize(1..=8) {
        let id = rng.i64(base_id + 1..(*next_id).max(base_id + 2));
        let amount = rng.i64(-3..1000);
        let result = match rng.u32(0..100) {
            0..=34 => {
                *next_id += 1;
                let new = *next_id;
                tx.execute(
                    "insert into accounts values ($1, 'Owner ' || $1::bigint, $2, repeat('n', ($1::bigint % 7)::int))",
                    &[&new, &amount],
                )
                .await
                .and(
                    tx.execute(
                        "insert into entries values ($1, $1, $2, repeat('m', ($1::bigint % 5)::int))",
                        &[&new, &amount],
                    )
                    .await,
                )
            }
            35..=59 => {
                tx.execute(
                    "update accounts set balance = balance + $2 where id = $1",
                    &[&id, &amount],
                )
                .await
            }
            60..=69 => {
                tx.execute(
                    "update entries set amount = $2, memo = null where id = $1",
                    &[&id, &amount],
                )
                .await
            }
            70..=77 => tx.execute("delete from accounts where id = $1", &[&id]).await,
            78..=83 => tx.execute("delete from entries where id = $1", &[&id]).await,
            84..=91 => {
                // Key update to a fresh key.
                *next_id += 1;
                let new = *next_id;
                tx.execute(
                    "update accounts set id = $2, owner = upper(owner) where id = $1",
                    &[&id, &new],
                )
                .await
            }
            _ => {
                let low = id;
                let high = id + rng.i64(1..20);
                tx.execute(
                    "update entries set amount = amount + 1 where id between $1 and $2",
                    &[&low, &high],
                )
                .await
            }
        };
        result.expect("workload statement");
    }
    tx.commit().await.expect("commit");
}

/// Runs random transactions until `stop`; returns how many committed.
fn spawn_workload(
    db_url: String,
    seed: u64,
    base_id: i64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<u64> {
    spawn_named("test-workload", async move {
        let mut client = crate::support::pg::connect(&db_url).await.expect("workload connection");
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut next_id = base_id;
        let mut count = 0;
        while !stop.load(Ordering::Relaxed) {
            random_transaction(&mut client, &mut rng, base_id, &mut next_id).await;
            count += 1;
        }
        count
    })
}

async fn applied_lsn(target: &Client) -> Option<String> {
    target
        .query_opt("select applied_lsn::text from walshift.progress", &[])
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

/// `kill -9` of `walshift run` at random moments, at least 10 times, under a
/// random workload; source and target on different clusters. At the end the
/// target equals transform(source) row for row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_loses_and_duplicates_nothing_cross_cluster() {
    let source = TestDb::new(PgCluster::shared()).await;
    let target_cluster = PgCluster::start(ClusterOptions::default());
    let target = TestDb::new(&target_cluster).await;
    source.execute(SOURCE_DDL).await;
    target.execute(SHADOW_DDL).await;
    let ws = Walshift::with_tables(
        &source,
        Some(&target.url()),
        TABLES,
        "[apply]\nbatch_max_rows = 500\n",
    );
    ws.run_ok(&["setup"]).await;

    let seed = fastrand::u64(..);
    eprintln!("workload seed {seed}");
    let stop = Arc::new(AtomicBool::new(false));
    // Two writers, so a backlog builds while walshift is down.
    let workloads = [
        spawn_workload(source.url(), seed, 0, Arc::clone(&stop)),
        spawn_workload(source.url(), seed.wrapping_add(1), 1 << 40, Arc::clone(&stop)),
    ];
    let target_client = target.client().await;
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
    let mut positions = Vec::new();
    for round in 0..12 {
        let before = applied_lsn(&target_client).await;
        let run = ws.spawn_run();
        // Crash at a random moment: every third round during start-up, the
        // others once this run has committed something (start-up can take
        // long on a loaded machine), at a random point of its drain.
        let delay = if round % 3 == 0 {
            rng.u64(20..150)
        } else {
            wait_until("the restarted run commits", WAIT, async || {
                applied_lsn(&target_client).await != before
            })
            .await;
            rng.u64(0..400)
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let log = run.kill9().await;
        assert!(!log.contains("panicked"), "walshift panicked:\n{log}");
        positions.push(applied_lsn(&target_client).await);
        // Down for a while: the next run starts on a backlog, so batches are
        // large and kills land mid-drain.
        tokio::time::sleep(Duration::from_millis(rng.u64(0..1500))).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut transactions = 0;
    for workload in workloads {
        transactions += workload.await.expect("workload task");
    }
    let run = ws.spawn_run();
    let source_client = source.client().await;
    for (source_sql, target_sql) in COMPARE {
        assert_converges(&source_client, source_sql, &target_client, target_sql, WAIT).await;
    }
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "log:\n{log}");
    let distinct: std::collections::BTreeSet<_> = positions.iter().flatten().collect();
    assert!(distinct.len() >= 8, "the runs made progress between kills: {positions:?}");
    assert!(transactions > 100, "workload ran {transactions} transactions");
    eprintln!("{transactions} source transactions, applied positions after kills: {positions:?}");
}

/// Money moves between rows of two tables in one source transaction; a
/// reader of the shadow tables never sees the total change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_half_a_source_transaction() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table checking (id int primary key, balance bigint not null);
         create table savings (id int primary key, balance bigint not null);",
    )
    .await;
    let ws = Walshift::for_db(
        &db,
        &[("public.checking", "shadow.checking"), ("public.savings", "shadow.savings")],
        "",
    )
    .await;
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    db.execute(
        "insert into checking select g, 1000 from generate_series(1, 50) g;
         insert into savings select g, 1000 from generate_series(1, 50) g;",
    )
    .await;
    const TOTAL: i64 = 100_000;
    let reader = db.client().await;
    let sum_sql = "select coalesce((select sum(balance) from shadow.checking), 0)::bigint \
                   + coalesce((select sum(balance) from shadow.savings), 0)::bigint";
    wait_until("initial rows applied", WAIT, async || {
        reader.query_one(sum_sql, &[]).await.unwrap().get::<_, i64>(0) == TOTAL
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicU64::new(0));
    let checker = {
        let stop = Arc::clone(&stop);
        let checks = Arc::clone(&checks);
        let url = db.url();
        spawn_named("test-checker", async move {
            let client = crate::support::pg::connect(&url).await.unwrap();
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sum: i64 = client.query_one(sum_sql, &[]).await.unwrap().get(0);
                if sum != TOTAL {
                    bad.push(sum);
                }
                checks.fetch_add(1, Ordering::Relaxed);
            }
            bad
        })
    };
    let mut writer = db.client().await;
    let mut rng = fastrand::Rng::new();
    for _ in 0..3000 {
        let (from, to) = if rng.bool() { ("checking", "savings") } else { ("savings", "checking") };
        let amount = rng.i64(1..50);
        let tx = writer.transaction().await.unwrap();
        tx.execute(
            &format!("update {from} set balance = balance - $1 where id = $2"),
            &[&amount, &rng.i32(1..=50)],
        )
        .await
        .unwrap();
        tx.execute(
            &format!("update {to} set balance = balance + $1 where id = $2"),
            &[&amount, &rng.i32(1..=50)],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }
    assert_converges(
        &reader,
        "select 'c', id, balance from checking union all select 's', id, balance from savings",
        &reader,
        "select 'c', id, balance from shadow.checking union all select 's', id, balance from shadow.savings",
        WAIT,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let bad = checker.await.unwrap();
    let checks = checks.load(Ordering::Relaxed);
    assert!(
        bad.is_empty(),
        "a reader saw totals {:?} (of {checks} checks)",
        &bad[..bad.len().min(10)]
    );
    assert!(checks > 100, "only {checks} checks ran");
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "log:\n{log}");
}

/// One source transaction much larger than a batch applies atomically:
/// flushed in batches into one open target transaction, committed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_larger_than_many_batches_applies_whole() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute("create table big (id bigint primary key, v text not null)").await;
    let ws = Walshift::for_db(&db, &[("public.big", "shadow.big")], "").await;
    ws.run_ok(&["setup"]).await;
    let run = ws.spawn_run();
    db.execute(
        "insert into big select g, md5(g::text) from generate_series(1, 200000) g;
         update big set v = 'x' where id % 1000 = 0;",
    )
    .await;
    let client = db.client().await;
    // Never partially visible: either 0 or all 200,000 rows.
    wait_until("the large transaction is applied", WAIT, async || {
        let n: i64 = client.query_one("select count(*) from shadow.big", &[]).await.unwrap().get(0);
        assert!(n == 0 || n == 200_000, "saw {n} rows of one source transaction");
        n == 200_000
    })
    .await;
    assert_converges(&client, "select * from big", &client, "select * from shadow.big", WAIT).await;
    let (code, log) = run.stop().await;
    assert_eq!(code, Some(0), "log:\n{log}");
}
