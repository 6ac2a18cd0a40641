//! The demo's write workload and the checks made on what it wrote.
//!
//! The workload is a billing-like mix of inserts, updates and deletes
//! across the key range that follows the controller's published decision
//! the way an application should (`docs/traffic.md`):
//!
//! ```text
//!  write "old"    ─▶ public.usage_events / public.organizations
//!  write "fenced" ─▶ hold every write until the next decision, or until
//!                    fence_deadline (then "old": the old tables take the
//!                    write and it is replicated, or reject it loudly)
//!  write "new"    ─▶ billing_new.usage_events / billing_new.organizations,
//!                    in the new schema, ids from the new tables' own
//!                    identity (moved past the source's by the cutover)
//! ```
//!
//! The side is looked up before every statement, so a write is held from
//! the moment the workload sees "fenced". A write sent just before (its
//! statement already queued behind the fence's lock) is rejected by the
//! fence with SQLSTATE 25006: it is counted as rejected, never as
//! acknowledged, and the workload goes on.
//!
//! Every acknowledged write is recorded ([`Tally`]): on the old tables its
//! key, on the new ones its key and the row it left (`returning`). At the
//! end [`check_acks`] finds each of them in `billing_new`: a key written on
//! the old tables (and not since on the new ones) as `transform(source)`
//! makes it, a key written on the new ones as the workload left it. The
//! new side's relative updates only touch rows it inserted itself, so a key
//! written on both sides was last written by an absolute write (a delete, a
//! plan change) and its acknowledged state does not depend on the old
//! side's.
//!
//! [`differences`] compares every `billing_new` table with
//! `transform(source)` row for row, by query, leaving out the keys the
//! workload wrote on the new tables after the cutover.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::commands::backfill::group;
use crate::error::Error;
use crate::traffic::decision::{Decision, rfc3339};

/// The tables the demo migrates, as `(name, transform(source), shadow)`:
/// the verified columns only, each query's first column the key `id`.
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

/// The workload's statements on the old tables; each returns the keys it
/// wrote.
mod old {
    pub const INSERT_EVENT: &str = "insert into public.usage_events \
         (org_id, event_type, quantity, amount_cents, payload) \
         values ($1, 'api_call', $2::int8::numeric / 7, $2, jsonb_build_object('n', $2)) \
         returning id";
    pub const UPDATE_RECENT: &str = "update public.usage_events \
         set amount_cents = amount_cents + 1 \
         where id = (select max(id) - $1 from public.usage_events) returning id";
    pub const TOUCH_EVENT: &str =
        "update public.usage_events set amount_cents = amount_cents + 1 where id = $1 returning id";
    pub const DELETE_OLDEST: &str = "delete from public.usage_events \
         where id = (select min(id) from public.usage_events) returning id";
    pub const SET_PLAN: &str =
        "update public.organizations set plan_code = 'enterprise' where id = $1 returning id";
}

/// The same writes on the new tables, in the new schema (`organization_id`,
/// `amount` in units, `occurred_at` without a default, `id` from the
/// table's identity); each returns the key and the row it left as text.
mod new {
    pub const INSERT_EVENT: &str = "insert into billing_new.usage_events as u \
         (organization_id, event_type, quantity, amount, occurred_at) \
         values ($1, 'api_call', $2::int8::numeric / 7, $2::int8 / 100.0, now()) \
         returning u.id, u::text";
    /// Relative: only on rows the workload inserted on new.
    pub const UPDATE_OWN: &str = "update billing_new.usage_events as u \
         set amount = u.amount + 0.01 where u.id = $1 returning u.id, u::text";
    pub const DELETE_OLDEST: &str = "delete from billing_new.usage_events \
         where id = (select min(id) from billing_new.usage_events) returning id, null::text";
    pub const SET_PLAN: &str = "update billing_new.organizations as o set plan = 'team' \
         where o.id = $1 returning o.id, o::text";
}

/// How often a held write looks at the clock again (for `fence_deadline`)
/// when no new decision comes.
const HOLD_POLL: Duration = Duration::from_millis(20);

/// Where a write goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Old,
    New,
}

/// What the workload wrote, and where.
#[derive(Debug, Default)]
pub struct Tally {
    /// Row changes acknowledged on either side (the progress line).
    written: AtomicU64,
    inner: Mutex<Acks>,
}

/// The acknowledged writes.
#[derive(Debug, Default)]
struct Acks {
    /// Row changes acknowledged by the old tables.
    old_writes: u64,
    /// Their keys, per table.
    old_keys: BTreeMap<&'static str, BTreeSet<i64>>,
    /// Row changes acknowledged by the new tables.
    new_writes: u64,
    /// Per (table, key): the row (as text) the last acknowledged write on
    /// the new tables left, `None` when it deleted it.
    new_rows: BTreeMap<(&'static str, i64), Option<String>>,
    /// When the first write on the new tables was acknowledged.
    first_new: Option<Instant>,
    /// Writes the fence rejected (sent before the workload saw "fenced").
    rejected: u64,
    /// The first rejection's message.
    rejection: Option<String>,
    /// The longest time a write was held (from seeing "fenced" to the
    /// next decision).
    longest_hold: Duration,
}

impl Tally {
    fn acks(&self) -> MutexGuard<'_, Acks> {
        // A panic while holding it leaves counts that are still counts.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Row changes acknowledged so far, on either side.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Row changes acknowledged by (old tables, new tables).
    pub fn writes(&self) -> (u64, u64) {
        let a = self.acks();
        (a.old_writes, a.new_writes)
    }

    /// How long the workload has been writing to the new tables.
    pub fn on_new_for(&self) -> Option<Duration> {
        self.acks().first_new.map(|at| at.elapsed())
    }

    /// The longest hold, and the writes the fence rejected with the first
    /// one's message.
    pub fn holds(&self) -> (Duration, u64, Option<String>) {
        let a = self.acks();
        (a.longest_hold, a.rejected, a.rejection.clone())
    }

    fn acked(&self, table: &'static str, side: Side, rows: &[(i64, Option<String>)]) {
        self.written.fetch_add(rows.len() as u64, Ordering::Relaxed);
        let mut a = self.acks();
        match side {
            Side::Old => {
                a.old_writes += rows.len() as u64;
                a.old_keys.entry(table).or_default().extend(rows.iter().map(|r| r.0));
            }
            Side::New => {
                a.new_writes += rows.len() as u64;
                a.first_new.get_or_insert_with(Instant::now);
                for (id, row) in rows {
                    a.new_rows.insert((table, *id), row.clone());
                }
            }
        }
    }

    fn rejected(&self, message: String) {
        let mut a = self.acks();
        a.rejected += 1;
        a.rejection.get_or_insert(message);
    }

    fn held(&self, hold: Duration) {
        let mut a = self.acks();
        a.longest_hold = a.longest_hold.max(hold);
    }

    /// Keys written on the new tables, per table.
    fn new_keys(&self) -> BTreeMap<&'static str, Vec<i64>> {
        let mut keys: BTreeMap<&'static str, Vec<i64>> = BTreeMap::new();
        for (table, id) in self.acks().new_rows.keys() {
            keys.entry(table).or_default().push(*id);
        }
        keys
    }
}

/// Where the next write goes under the newest decision: waits while it
/// says "fenced" (until a newer one, or its `fence_deadline`); `None` once
/// asked to stop.
///
/// The deadline is compared as text: the controller writes it with
/// [`rfc3339`] (UTC, microseconds, fixed width), so a string comparison
/// with `rfc3339(now)` is a time comparison.
async fn side(
    decisions: &mut watch::Receiver<Option<Decision>>,
    stop: &AtomicBool,
    tally: &Tally,
) -> Option<Side> {
    let mut held_since: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let (write, deadline) = match &*decisions.borrow_and_update() {
            Some(d) => (d.write.clone(), d.fence_deadline.clone()),
            None => ("old".to_owned(), None),
        };
        let past = |deadline: &String| rfc3339(SystemTime::now()) >= *deadline;
        let side = match write.as_str() {
            "new" => Some(Side::New),
            "fenced" if !deadline.as_ref().is_some_and(past) => None,
            _ => Some(Side::Old),
        };
        if let Some(side) = side {
            if let Some(since) = held_since {
                tally.held(since.elapsed());
            }
            return Some(side);
        }
        held_since.get_or_insert_with(Instant::now);
        if let Ok(Err(_)) = tokio::time::timeout(HOLD_POLL, decisions.changed()).await {
            // No more decisions (the demo is ending): keep to the clock.
            tokio::time::sleep(HOLD_POLL).await;
        }
    }
}

/// One write of the mix.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// A new usage event of an organization (`n` sets its amounts).
    InsertEvent { org: i64, n: i64 },
    /// Old: the event `k` below the newest; new: one of the workload's own
    /// events on new.
    UpdateRecent { k: i64 },
    /// Old: any event in the key range, copied already or not yet; new:
    /// one of the workload's own events on new.
    Touch { id: i64 },
    /// The oldest event.
    DeleteOldest,
    /// An organization's plan.
    SetPlan { org: i64 },
}

impl Op {
    fn table(self) -> &'static str {
        match self {
            Op::SetPlan { .. } => "organizations",
            _ => "usage_events",
        }
    }
}

/// The writes of iteration `i`.
fn mix(i: i64) -> Vec<Op> {
    let org = 1 + i % 100;
    let mut ops = vec![Op::InsertEvent { org, n: i }];
    if i % 3 == 0 {
        ops.push(Op::UpdateRecent { k: i % 50 });
    }
    ops.push(Op::Touch { id: 1 + i * 7919 % 200_000 });
    if i % 10 == 0 {
        ops.push(Op::DeleteOldest);
    }
    if i % 25 == 0 {
        ops.push(Op::SetPlan { org });
    }
    ops
}

/// Runs the mix until `stop`, following `decisions`; records what was
/// acknowledged in `tally`. A failed write other than the fence's
/// rejection ends it with that error.
pub async fn run(
    client: Client,
    tally: Arc<Tally>,
    mut decisions: watch::Receiver<Option<Decision>>,
    stop: Arc<AtomicBool>,
) -> Result<(), tokio_postgres::Error> {
    let old_insert = client.prepare(old::INSERT_EVENT).await?;
    let old_update_recent = client.prepare(old::UPDATE_RECENT).await?;
    let old_touch = client.prepare(old::TOUCH_EVENT).await?;
    let old_delete = client.prepare(old::DELETE_OLDEST).await?;
    let old_set_plan = client.prepare(old::SET_PLAN).await?;
    let new_insert = client.prepare(new::INSERT_EVENT).await?;
    let new_update = client.prepare(new::UPDATE_OWN).await?;
    let new_delete = client.prepare(new::DELETE_OLDEST).await?;
    let new_set_plan = client.prepare(new::SET_PLAN).await?;
    // Events the workload inserted on new (its relative updates' rows).
    let mut mine: Vec<i64> = Vec::new();
    let mut i: i64 = 0;
    loop {
        i += 1;
        for op in mix(i) {
            let Some(side) = side(&mut decisions, &stop, &tally).await else { return Ok(()) };
            let result = match (side, op) {
                (Side::Old, Op::InsertEvent { org, n }) => {
                    client.query(&old_insert, &[&org, &n]).await
                }
                (Side::Old, Op::UpdateRecent { k }) => {
                    client.query(&old_update_recent, &[&k]).await
                }
                (Side::Old, Op::Touch { id }) => client.query(&old_touch, &[&id]).await,
                (Side::Old, Op::DeleteOldest) => client.query(&old_delete, &[]).await,
                (Side::Old, Op::SetPlan { org }) => client.query(&old_set_plan, &[&org]).await,
                (Side::New, Op::InsertEvent { org, n }) => {
                    client.query(&new_insert, &[&org, &n]).await
                }
                (Side::New, Op::UpdateRecent { k }) if !mine.is_empty() => {
                    let id = mine[mine.len() - 1 - (k as usize % mine.len())];
                    client.query(&new_update, &[&id]).await
                }
                (Side::New, Op::Touch { id }) if !mine.is_empty() => {
                    let id = mine[id as usize % mine.len()];
                    client.query(&new_update, &[&id]).await
                }
                (Side::New, Op::DeleteOldest) => client.query(&new_delete, &[]).await,
                (Side::New, Op::SetPlan { org }) => client.query(&new_set_plan, &[&org]).await,
                // Nothing of its own on new yet.
                (Side::New, _) => continue,
            };
            let rows = match result {
                Ok(rows) => rows,
                Err(e) if e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) => {
                    let message =
                        e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned());
                    tally.rejected(message);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut acked = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: i64 = row.try_get(0)?;
                let after: Option<String> = if side == Side::New { row.try_get(1)? } else { None };
                acked.push((id, after));
            }
            if side == Side::New && matches!(op, Op::InsertEvent { .. }) {
                mine.extend(acked.iter().map(|a| a.0));
            }
            if side == Side::New && matches!(op, Op::DeleteOldest) {
                mine.retain(|id| !acked.iter().any(|a| a.0 == *id));
            }
            tally.acked(op.table(), side, &acked);
        }
        if i % 50 == 0 {
            // Leave the single core some room for the stream.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// What [`check_acks`] found: every acknowledged write is in `billing_new`.
#[derive(Debug, Clone, Copy)]
pub struct AckCheck {
    /// Row changes acknowledged by the old tables (before the cutover).
    pub old_writes: u64,
    /// Their distinct keys, compared with `transform(source)` (those not
    /// written since on new).
    pub old_keys: u64,
    /// Row changes acknowledged by the new tables (after it).
    pub new_writes: u64,
    /// Their distinct keys, compared with the row each write left.
    pub new_keys: u64,
}

impl std::fmt::Display for AckCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "every acknowledged write is in billing_new: {} before the flip (on the old tables; \
             {} keys equal to transform(source)), {} after it (on billing_new; {} keys as \
             acknowledged)",
            group(self.old_writes),
            group(self.old_keys),
            group(self.new_writes),
            group(self.new_keys)
        )
    }
}

/// Finds every write the workload had acknowledged in `billing_new` (see
/// the module documentation); run once the workload stopped. Fails with the
/// first keys that are not there as acknowledged.
pub async fn check_acks(db: &Client, tally: &Tally) -> Result<AckCheck, Error> {
    let (old_writes, old_keys, new_writes, new_rows) = {
        let a = tally.acks();
        (a.old_writes, a.old_keys.clone(), a.new_writes, a.new_rows.clone())
    };
    let mut problems = Vec::new();
    // Keys written on the old tables and not since on the new ones: as
    // transform(source) makes them (both sides, or neither, have the key).
    let mut old_compared = 0u64;
    for (table, source, target) in COMPARE {
        let Some(keys) = old_keys.get(table) else { continue };
        let keys: Vec<i64> =
            keys.iter().copied().filter(|id| !new_rows.contains_key(&(*table, *id))).collect();
        old_compared += keys.len() as u64;
        let only = " where id = any($1::int8[])";
        let sql = format!(
            "select id from ((({source}{only}) except all ({target}{only})) \
                union all (({target}{only}) except all ({source}{only}))) d \
             order by id limit 5"
        );
        let rows = db
            .query(&sql, &[&keys])
            .await
            .map_err(Error::sql("checking the acknowledged writes"))?;
        for row in rows {
            let id: i64 = row.try_get(0).map_err(Error::sql("checking the acknowledged writes"))?;
            problems.push(format!(
                "billing_new.{table} id {id} differs from transform(public.{table}) after a \
                 write acknowledged on the old table"
            ));
        }
    }
    // Keys written on the new tables: the row the last write left.
    let mut per_table: BTreeMap<&'static str, Vec<i64>> = BTreeMap::new();
    for (table, id) in new_rows.keys() {
        per_table.entry(table).or_default().push(*id);
    }
    for (table, keys) in &per_table {
        let sql =
            format!("select id, t::text from billing_new.{table} t where id = any($1::int8[])");
        let rows = db
            .query(&sql, &[keys])
            .await
            .map_err(Error::sql("checking the acknowledged writes"))?;
        let mut have: BTreeMap<i64, String> = BTreeMap::new();
        for row in rows {
            let id: i64 = row.try_get(0).map_err(Error::sql("checking the acknowledged writes"))?;
            let text: String =
                row.try_get(1).map_err(Error::sql("checking the acknowledged writes"))?;
            have.insert(id, text);
        }
        for id in keys {
            let want = new_rows.get(&(*table, *id)).cloned().flatten();
            let found = have.get(id);
            if found != want.as_ref() && problems.len() < 10 {
                problems.push(format!(
                    "billing_new.{table} id {id}: acknowledged {}, found {}",
                    want.as_deref().unwrap_or("deleted"),
                    found.map_or("no row", String::as_str)
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::Failed(format!(
            "demo check failed: acknowledged writes missing from billing_new: {}",
            problems.join("; ")
        )));
    }
    Ok(AckCheck { old_writes, old_keys: old_compared, new_writes, new_keys: new_rows.len() as u64 })
}

/// One table compared by [`differences`].
#[derive(Debug, Clone)]
pub struct Compared {
    /// The table's name (in both schemas).
    pub table: &'static str,
    /// Rows that differ, in either direction, outside the keys left out.
    pub differing: i64,
    /// Rows of `billing_new.<table>`.
    pub rows: i64,
    /// Keys left out (written on new after the cutover).
    pub left_out: usize,
}

/// Compares every `billing_new` table with `transform(source)` row for
/// row, leaving out the keys the workload wrote on the new tables.
pub async fn differences(db: &Client, tally: &Tally) -> Result<Vec<Compared>, Error> {
    let left_out = tally.new_keys();
    let mut out = Vec::new();
    for (table, source, target) in COMPARE {
        let keys = left_out.get(table).cloned().unwrap_or_default();
        let except = " where id <> all($1::int8[])";
        let sql = format!(
            "select (select count(*) from (({source}{except}) except all ({target}{except})) a) \
                  + (select count(*) from (({target}{except}) except all ({source}{except})) b), \
                    (select count(*) from billing_new.{table})"
        );
        let row = db
            .query_one(&sql, &[&keys])
            .await
            .map_err(Error::sql("comparing the shadow tables"))?;
        let differing: i64 = row.try_get(0).map_err(Error::sql("comparing the shadow tables"))?;
        let rows: i64 = row.try_get(1).map_err(Error::sql("comparing the shadow tables"))?;
        out.push(Compared { table, differing, rows, left_out: keys.len() });
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
