//! Verification: `walshift verify` and the periodic verification inside
//! `walshift run` compare transform(source) with the target, report each
//! difference with its key and kind, never report a change in flight, and
//! repair.

use std::collections::BTreeSet;

use tokio_postgres::Client;

use crate::backfill::WAIT;
use crate::support::cli::Walshift;
use crate::support::pg::{ClusterOptions, PgCluster, TestDb};
use crate::support::shadow::assert_converges;

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
