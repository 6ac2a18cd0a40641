//! The demo's write workload (a billing-like mix of inserts, updates and
//! deletes across the key range) and the check that the shadow tables equal
//! `transform(source)` row for row, compared by query.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_postgres::Client;

use crate::error::Error;

/// `transform(source)` and the shadow table, verified columns only, per table.
const COMPARE: &[(&str, &str, &str)] = &[
    (
        "organizations",
        "select id, name, lower(email), plan_code, created_at from public.organizations",
        "select id, name, billing_email, plan, created_at from billing_new.organizations",
    ),
    (
        "usage_events",
        "select id, org_id, event_type, quantity::numeric(20,6), (amount_cents / 100.0)::numeric(14,2), \
         occurred_at, 'migrated'::text from public.usage_events",
        "select id, organization_id, event_type, quantity, amount, occurred_at, processing_status \
         from billing_new.usage_events",
    ),
    (
        "invoices",
        "select id, org_id, (total_cents / 100.0)::numeric(14,2), upper(currency)::char(3), issued_at, status \
         from public.invoices",
        "select id, organization_id, total, currency, issued_at, status from billing_new.invoices",
    ),
];

/// Per table: (name, rows that differ in either direction, rows in the source).
pub async fn differences(db: &Client) -> Result<Vec<(&'static str, i64, i64)>, Error> {
    let mut out = Vec::new();
    for (table, source, target) in COMPARE {
        let sql = format!(
            "select (select count(*) from (({source}) except all ({target})) a) \
                  + (select count(*) from (({target}) except all ({source})) b), \
                    (select count(*) from ({source}) c)"
        );
        let row =
            db.query_one(&sql, &[]).await.map_err(Error::sql("comparing the shadow tables"))?;
        let diff: i64 = row.try_get(0).map_err(Error::sql("comparing the shadow tables"))?;
        let rows: i64 = row.try_get(1).map_err(Error::sql("comparing the shadow tables"))?;
        out.push((*table, diff, rows));
    }
    Ok(out)
}

/// Bytes of WAL between the source's insert position and what the slot
/// confirmed.
pub async fn slot_lag(db: &Client, slot: &str) -> Option<i64> {
    db.query_opt(
        "select pg_wal_lsn_diff(pg_current_wal_insert_lsn(), confirmed_flush_lsn)::bigint \
         from pg_replication_slots where slot_name = $1",
        &[&slot],
    )
    .await
    .ok()
    .flatten()
    .and_then(|r| r.try_get(0).ok())
}

/// A billing-like write mix; counts the rows it changed in published tables.
pub async fn run(
    client: Client,
    written: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<(), tokio_postgres::Error> {
    let insert_event = client
        .prepare(
            "insert into usage_events (org_id, event_type, quantity, amount_cents, payload) \
             values ($1, 'api_call', $2::int8::numeric / 7, $2, jsonb_build_object('n', $2))",
        )
        .await?;
    let update_event = client
        .prepare("update usage_events set amount_cents = amount_cents + 1 where id = (select max(id) - $1 from usage_events)")
        .await?;
    let touch_event = client
        .prepare("update usage_events set amount_cents = amount_cents + 1 where id = $1")
        .await?;
    let delete_event = client
        .prepare("delete from usage_events where id = (select min(id) from usage_events)")
        .await?;
    let rename_org =
        client.prepare("update organizations set plan_code = 'enterprise' where id = $1").await?;
    let mut i: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let org = 1 + i % 100;
        let mut changed = client.execute(&insert_event, &[&org, &i]).await?;
        if i % 3 == 0 {
            changed += client.execute(&update_event, &[&(i % 50)]).await?;
        }
        // Rows anywhere in the key range, copied already or not yet.
        changed += client.execute(&touch_event, &[&(1 + i * 7919 % 200_000)]).await?;
        if i % 10 == 0 {
            changed += client.execute(&delete_event, &[]).await?;
        }
        if i % 25 == 0 {
            changed += client.execute(&rename_org, &[&org]).await?;
        }
        written.fetch_add(changed, Ordering::Relaxed);
        if i % 50 == 0 {
            // Leave the single core some room for the stream.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok(())
}
