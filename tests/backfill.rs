//! Backfill: rows that existed before the slot, copied in keyset chunks
//! while the stream applies changes.

use std::time::Duration;

use crate::support::cli::Walshift;
use crate::support::pg::{PgCluster, TestDb};
use crate::support::shadow::assert_converges;

const WAIT: Duration = Duration::from_secs(60);

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
