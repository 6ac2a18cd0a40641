//! `walshift tail` against a real server: value round trips, every change
//! kind, acknowledgement, reconnects.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::cli::{Walshift, rows};
use crate::support::pg::{PgCluster, TestDb};
use crate::support::wait::wait_until;

const WAIT: Duration = Duration::from_secs(60);

async fn current_lsn(db: &TestDb<'_>) -> String {
    let client = db.client().await;
    client.query_one("select pg_current_wal_insert_lsn()::text", &[]).await.unwrap().get(0)
}

async fn confirmed_flush(db: &TestDb<'_>) -> String {
    let client = db.client().await;
    client
        .query_one(
            "select confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1",
            &[&db.slot_name()],
        )
        .await
        .unwrap()
        .get(0)
}

async fn lsn_ge(db: &TestDb<'_>, a: &str, b: &str) -> bool {
    let client = db.client().await;
    client.query_one("select $1::text::pg_lsn >= $2::text::pg_lsn", &[&a, &b]).await.unwrap().get(0)
}

/// Every column type of interest: what tail prints equals the server's own
/// text output of the stored value, byte for byte.
#[tokio::test]
async fn values_round_trip_as_postgres_text() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create type mood as enum ('sad', 'ok', 'happy');
         create domain positive_int as int check (value > 0);
         create table kitchen_sink (
            id serial primary key,
            i2 int2, i4 int4, i8 int8, num numeric, f4 float4, f8 float8, b bool,
            t text, vc varchar(50), by bytea, u uuid, j json, jb jsonb,
            d date, tm time, ts timestamp, tstz timestamptz, iv interval,
            arr int[], tarr text[], m mood, dom positive_int, big text
         );
         alter table kitchen_sink alter column big set storage external;",
    )
    .await;
    let ws = Walshift::for_db(&db, &[("public.kitchen_sink", "shadow.kitchen_sink")], "").await;
    ws.run_ok(&["setup"]).await;

    db.execute(
        "insert into kitchen_sink (i2, i4, i8, num, f4, f8, b, t, vc, by, u, j, jb, d, tm, ts, tstz, iv, arr, tarr, m, dom) values
         (-32768, 2147483647, 9223372036854775807, 'NaN', 'NaN', 'Infinity', true,
          'héllo wörld ✓ 😀', '', '\\x00ff10'::bytea, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
          '{\"a\": [1, 2.50, null],  \"b\":\"x\"}', '{\"b\": 1, \"a\": [true, 1.0e3]}',
          '2026-02-28', '23:59:59.999999', '1999-12-31 23:59:59.5', '2026-11-21 06:13:51.123456+02',
          '1 year 2 mons 3 days 04:05:06.789', '{1,NULL,3}', '{\"a b\",NULL,\"\"}', 'happy', 42),
         (0, 0, -9223372036854775808, '1234567890123456789012345678901234567890.0123456789', '-Infinity', '-0', false,
          '', NULL, '\\x'::bytea, NULL, 'null', '\"str\"',
          '-infinity', '00:00', 'infinity', '-infinity', '-1 days', '{}', NULL, 'sad', NULL),
         (1, 1, 1, '-0.000000000000000000000000000000000000001', 1.5, 0.1, NULL,
          NULL, 'tab\there \"quoted\" back\\\\slash', NULL, NULL, NULL, NULL,
          NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
    )
    .await;
    // An out-of-line TOASTed value: 1 MB of random hex, incompressible enough
    // to be stored externally; then an update that leaves it unchanged.
    db.execute(
        "insert into kitchen_sink (id, big) select 100, string_agg(md5(random()::text), '') from generate_series(1, 32768);
         update kitchen_sink set i4 = 7 where id = 100;",
    )
    .await;
    let endpos = current_lsn(&db).await;
    let (code, lines, stderr) = ws.spawn_tail(&["--no-ack", "--endpos", &endpos]).wait(WAIT).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let rows = rows(&lines);
    assert_eq!(rows.len(), 5, "3 inserts, the TOAST insert and its update: {rows:#?}");

    // Expected: the server's text output of each column, in the same session defaults.
    let client = db.client().await;
    let columns = [
        "id", "i2", "i4", "i8", "num", "f4", "f8", "b", "t", "vc", "by", "u", "j", "jb", "d", "tm",
        "ts", "tstz", "iv", "arr", "tarr", "m", "dom", "big",
    ];
    // The output function's text (a bool prints as t/f, while bool::text is true/false).
    let select = columns
        .iter()
        .map(|c| match *c {
            "b" => "case when b then 't' when not b then 'f' end".to_owned(),
            c => format!("{c}::text"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    for row in &rows[..3] {
        assert_eq!(row["op"], "insert");
        assert_eq!(row["table"], "public.kitchen_sink");
        let id: i32 = row["new"]["id"].as_str().unwrap().parse().unwrap();
        let expected = client
            .query_one(&format!("select {select} from kitchen_sink where id = $1"), &[&id])
            .await
            .unwrap();
        for (i, column) in columns.iter().enumerate() {
            let want: Option<String> = expected.get(i);
            let want = want.map(Value::String).unwrap_or(Value::Null);
            assert_eq!(row["new"][column], want, "column {column} of row {id}");
        }
        assert_eq!(row["key"], json!({"id": id.to_string()}));
        assert_eq!(row["unchanged_toast"], json!([]));
    }
    // Spot checks that do not depend on the comparison query.
    assert_eq!(rows[0]["new"]["num"], "NaN");
    assert_eq!(rows[0]["new"]["i8"], "9223372036854775807");
    assert_eq!(rows[0]["new"]["f8"], "Infinity");
    assert_eq!(rows[0]["new"]["vc"], "", "empty string is not NULL");
    assert_eq!(rows[1]["new"]["vc"], Value::Null, "NULL is JSON null");
    assert_eq!(rows[1]["new"]["num"], "1234567890123456789012345678901234567890.0123456789");
    assert_eq!(rows[0]["new"]["arr"], "{1,NULL,3}");

    let big: String =
        client.query_one("select big from kitchen_sink where id = 100", &[]).await.unwrap().get(0);
    assert_eq!(big.len(), 32768 * 32);
    let stored_external: bool = client
        .query_one(
            "select pg_column_size(big) >= 1000000 and pg_column_size(big) < 1100000 from kitchen_sink where id = 100",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored_external, "the big value must be stored uncompressed");
    assert_eq!(rows[3]["op"], "insert");
    assert_eq!(rows[3]["new"]["big"].as_str(), Some(big.as_str()));
    assert_eq!(rows[4]["op"], "update");
    assert_eq!(rows[4]["unchanged_toast"], json!(["big"]));
    assert!(rows[4]["new"].get("big").is_none(), "an unchanged TOAST value is not sent");
    assert_eq!(rows[4]["new"]["i4"], "7");
}

/// Key changes, both replica identities, truncate, multi-table transactions
/// and a column added mid-stream.
#[tokio::test]
async fn change_kinds_identity_truncate_and_alter() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute(
        "create table a (id int primary key, v text, w text);
         create table f (id int primary key, v text, w text);
         alter table f replica identity full;",
    )
    .await;
    let ws = Walshift::for_db(&db, &[("public.a", "shadow.a"), ("public.f", "shadow.f")], "").await;
    ws.run_ok(&["setup"]).await;
    db.execute(
        "insert into a values (1, 'one', 'x'), (2, 'two', 'y');
         insert into f values (1, 'one', 'x'), (2, 'two', 'y');
         update a set id = 10 where id = 1;
         delete from a where id = 2;
         update f set v = 'uno' where id = 1;
         delete from f where id = 2;
         begin; insert into a values (3, 'three', 'z'); insert into f values (3, 'three', 'z'); commit;
         alter table a add column extra int default 5;
         insert into a values (4, 'four', 'q', 44);
         truncate a, f;",
    )
    .await;
    let endpos = current_lsn(&db).await;
    let (code, lines, stderr) =
        ws.spawn_tail(&["--no-ack", "--all", "--endpos", &endpos]).wait(WAIT).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let row_lines = rows(&lines);
    let find = |table: &str, op: &str, n: usize| -> Value {
        row_lines
            .iter()
            .filter(|l| l["table"] == table && l["op"] == op)
            .nth(n)
            .map(|l| (*l).clone())
            .unwrap_or_else(|| panic!("no {op} #{n} on {table} in {lines:#?}"))
    };

    let moved = find("public.a", "update", 0);
    assert_eq!(moved["key"], json!({"id": "1"}), "key change shows the old key");
    assert_eq!(moved["old"], json!({"id": "1"}));
    assert_eq!(moved["new"], json!({"id": "10", "v": "one", "w": "x"}));

    let deleted = find("public.a", "delete", 0);
    assert_eq!(deleted["key"], json!({"id": "2"}));
    assert_eq!(deleted["old"], json!({"id": "2"}), "default identity sends the key only");
    assert_eq!(deleted["new"], Value::Null);

    let full_update = find("public.f", "update", 0);
    assert_eq!(full_update["old"], json!({"id": "1", "v": "one", "w": "x"}));
    assert_eq!(full_update["new"], json!({"id": "1", "v": "uno", "w": "x"}));
    let full_delete = find("public.f", "delete", 0);
    assert_eq!(
        full_delete["old"],
        json!({"id": "2", "v": "two", "w": "y"}),
        "FULL sends the whole row"
    );

    let a3 = find("public.a", "insert", 2);
    let f3 = find("public.f", "insert", 2);
    assert_eq!(a3["new"]["id"], "3");
    assert_eq!(f3["new"]["id"], "3");
    assert_eq!(a3["xid"], f3["xid"], "one transaction across two tables");
    assert_eq!(a3["commit_lsn"], f3["commit_lsn"]);

    let after_alter = find("public.a", "insert", 3);
    assert_eq!(after_alter["new"], json!({"id": "4", "v": "four", "w": "q", "extra": "44"}));
    assert!(
        lines.iter().any(|l| l["event"] == "relation"
            && l["table"] == "public.a"
            && l["columns"].as_array().is_some_and(|c| c.len() == 4)),
        "the relation is described again after ALTER TABLE"
    );

    let truncate = lines.iter().find(|l| l["event"] == "truncate").expect("a truncate event");
    let mut tables: Vec<&str> =
        truncate["tables"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    tables.sort_unstable();
    assert_eq!(tables, ["public.a", "public.f"]);
    assert_eq!(truncate["cascade"], false);

    // Every row change sits between a begin and a commit of the same xid.
    let mut open: Option<Value> = None;
    for line in &lines {
        match line["event"].as_str() {
            Some("begin") => open = Some(line["xid"].clone()),
            Some("commit") => {
                assert_eq!(open.take(), Some(line["xid"].clone()));
            }
            _ if line.get("op").is_some() => {
                assert_eq!(open.as_ref(), Some(&line["xid"]), "row outside its transaction");
            }
            _ => {}
        }
    }
    // Without --all only row changes are printed.
    // The first tail's walsender can hold the slot a moment after it exits.
    let admin = db.client().await;
    let slot = db.slot_name();
    crate::support::wait::wait_until("the slot to be released", WAIT, async || {
        admin
            .query_one(
                "select active_pid is null from pg_replication_slots where slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
            .then_some(())
    })
    .await;
    let (code, plain, stderr) = ws.spawn_tail(&["--no-ack", "--endpos", &endpos]).wait(WAIT).await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(plain.iter().all(|l| l.get("op").is_some()));
    assert_eq!(plain.len(), row_lines.len(), "stderr: {stderr}");
}

/// The slot advances while tail runs (also when only keepalives arrive),
/// and does not with --no-ack.
#[tokio::test]
async fn acknowledges_printed_changes_and_keepalives_only_with_ack() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute("create table t (id int primary key); create table unpublished (id int);").await;
    let ws = Walshift::for_db(&db, &[("public.t", "shadow.t")], "").await;
    ws.run_ok(&["setup"]).await;
    let initial = confirmed_flush(&db).await;

    // --no-ack: prints, but the slot stays.
    let tail = ws.spawn_tail(&["--no-ack"]);
    db.execute("insert into t select generate_series(1, 10)").await;
    tail.wait_for_rows(10, WAIT).await;
    let after_rows = current_lsn(&db).await;
    // Keepalives with reply flags keep flowing; give the server time to hear several
    // status updates (interval 200 ms), then check the slot did not move.
    wait_until("tail has answered several keepalives", WAIT, async || {
        let client = db.client().await;
        let row = client
            .query_one(
                "select coalesce(reply_time > now() - interval '1 second', false) from pg_stat_replication where application_name = 'walshift:tail'",
                &[],
            )
            .await;
        row.map(|r| r.get::<_, bool>(0)).unwrap_or(false)
    })
    .await;
    let (_, _, _) = tail.stop().await;
    assert_eq!(confirmed_flush(&db).await, initial, "--no-ack must not move the slot");

    // Acknowledging: the slot moves past the printed rows.
    let tail = ws.spawn_tail(&[]);
    tail.wait_for_rows(10, WAIT).await;
    wait_until("slot confirms the printed rows", WAIT, async || {
        lsn_ge(&db, &confirmed_flush(&db).await, &after_rows).await
    })
    .await;

    // Idle for walshift (only an unpublished table is written): keepalives
    // alone move the slot.
    db.execute("insert into unpublished select generate_series(1, 1000)").await;
    let idle_target = current_lsn(&db).await;
    wait_until("slot advances on keepalives", WAIT, async || {
        lsn_ge(&db, &confirmed_flush(&db).await, &idle_target).await
    })
    .await;
    let (code, lines, _) = tail.stop().await;
    assert_eq!(code, Some(0));
    assert_eq!(rows(&lines).len(), 10, "no new rows from the unpublished table");
}

/// Killing the walsender mid-stream: tail reconnects, and every change is
/// printed exactly once.
#[tokio::test]
async fn reconnects_without_losing_or_repeating_changes() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute("create table t (id int primary key, pad text)").await;
    let ws = Walshift::for_db(&db, &[("public.t", "shadow.t")], "reconnect_max_backoff_ms = 200\n")
        .await;
    ws.run_ok(&["setup"]).await;
    let tail = ws.spawn_tail(&[]);

    const BATCHES: i32 = 40;
    const PER_BATCH: i32 = 500;
    let admin = db.client().await;
    let mut kills = 0;
    for batch in 0..BATCHES {
        db.execute(&format!(
            "insert into t select g, repeat('x', 200) from generate_series({}, {}) g",
            batch * PER_BATCH + 1,
            (batch + 1) * PER_BATCH
        ))
        .await;
        if batch % 8 == 3 {
            // Terminate the walsender (once it is back) while it is likely
            // in the middle of sending a transaction.
            let started = std::time::Instant::now();
            let killed: i64 = loop {
                let n: i64 = admin
                    .query_one(
                        "select count(pg_terminate_backend(pid)) from pg_stat_replication \
                         where application_name = 'walshift:tail'",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                if n > 0 {
                    break n;
                }
                assert!(
                    started.elapsed() < WAIT,
                    "no walsender for tail after {WAIT:?} (batch {batch}); stderr:\n{}",
                    tail.stderr()
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            };
            kills += killed;
        }
    }
    assert!(kills >= 5, "the walsender was terminated {kills} times");
    let total = usize::try_from(BATCHES * PER_BATCH).unwrap();
    let started = std::time::Instant::now();
    while rows(&tail.lines()).len() < total {
        if started.elapsed() > WAIT {
            let slot: String = admin
                .query_one(
                    "select coalesce(active_pid::text, 'inactive') || ' ' || \
                     confirmed_flush_lsn::text from pg_replication_slots where slot_name = $1",
                    &[&db.slot_name()],
                )
                .await
                .map(|r| r.get(0))
                .unwrap_or_default();
            panic!(
                "tail printed {} of {total} row changes in {WAIT:?}; slot {slot}; stderr:\n{}",
                rows(&tail.lines()).len(),
                tail.stderr()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (code, lines, stderr) = tail.stop().await;
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert!(stderr.contains("reconnecting"), "tail logged its reconnects: {stderr}");
    let mut ids: Vec<i64> =
        rows(&lines).iter().map(|l| l["new"]["id"].as_str().unwrap().parse().unwrap()).collect();
    assert_eq!(ids.len(), total, "no change printed twice");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), total, "no duplicates");
    assert_eq!((ids[0], ids[total - 1]), (1, i64::from(BATCHES * PER_BATCH)), "none lost");
}

/// `--start-lsn` skips transactions that committed before it.
#[tokio::test]
async fn start_lsn_skips_earlier_transactions() {
    let db = TestDb::new(PgCluster::shared()).await;
    db.execute("create table t (id int primary key)").await;
    let ws = Walshift::for_db(&db, &[("public.t", "shadow.t")], "").await;
    ws.run_ok(&["setup"]).await;
    db.execute("insert into t values (1)").await;
    let between = current_lsn(&db).await;
    db.execute("insert into t values (2)").await;
    let endpos = current_lsn(&db).await;
    let (code, lines, stderr) =
        ws.spawn_tail(&["--no-ack", "--start-lsn", &between, "--endpos", &endpos]).wait(WAIT).await;
    assert_eq!(code, Some(0), "{stderr}");
    let ids: Vec<&str> = rows(&lines).iter().map(|l| l["new"]["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["2"]);
    // Without it, both (nothing was acknowledged).
    let (_, lines, _) = ws.spawn_tail(&["--no-ack", "--endpos", &endpos]).wait(WAIT).await;
    assert_eq!(rows(&lines).len(), 2);
}
