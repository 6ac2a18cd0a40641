//! Row changes waiting to be written, coalesced per key to their net effect.
//!
//! Within one flush every key of a table holds at most one pending
//! operation, so each table needs at most one multi-row `DELETE`, one
//! multi-row upsert and (rarely) a few partial updates, and no statement
//! touches a row twice (`ON CONFLICT DO UPDATE` forbids that). The net effect
//! of a sequence of changes to one key is:
//!
//! | pending \ next | insert / full update | delete | update, TOAST unchanged |
//! |----------------|----------------------|--------|-------------------------|
//! | none           | insert / upsert      | delete | partial update          |
//! | insert r       | insert               | delete | insert (r fills the gap)|
//! | upsert r       | upsert               | delete | upsert (r fills the gap)|
//! | delete         | upsert               | delete | (impossible) barrier    |
//! | partial p      | upsert               | delete | partial (merged with p) |
//!
//! An *insert* is an upsert of a key the flush has not seen before; it is
//! written with a plain `INSERT`, which costs about half of an
//! `INSERT ... ON CONFLICT` (no speculative insertion), and falls back to an
//! upsert if the target has the key after all. An update that changes the
//! key is a delete of the old key and an upsert of the new one. The one case that cannot be coalesced is a key change
//! whose TOASTed column arrived unchanged and whose full row is not pending:
//! only an `UPDATE` of the row in place keeps the value, so it is a
//! *barrier*, written alone between two flushes.
//!
//! An upsert writes every mapped column, so it is the net effect of anything
//! before it. Target columns that the mapping does not write keep their value
//! across a delete and re-insert of the same key within one flush, where a
//! row-by-row replay would reset them to their default; mapped columns are
//! exact.

use std::collections::HashMap;

use crate::change::{Change, Datum, Row, TableIdx};
use crate::transform::plan::MissingToast;
use crate::transform::{Plan, TablePlan};

/// A pending operation on one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Insert a row the stream has not seen before in this flush: written
    /// with a plain `INSERT` (no speculative insertion), falling back to an
    /// upsert if the target already has the key.
    Insert(Row),
    /// Insert or overwrite the full row (plan input order).
    Upsert(Row),
    /// Delete the row with this key (key input order).
    Delete(Row),
    /// Update the row with `old_key`, setting every output except `untouched`.
    Partial {
        /// Key of the row to update.
        old_key: Row,
        /// New values; `UnchangedToast` where unknown.
        new: Row,
        /// Output indexes to leave alone.
        untouched: Vec<usize>,
    },
}

/// Pending operations of one table, in the order their keys first appeared.
#[derive(Debug, Default)]
pub struct TableOps {
    slots: HashMap<Row, usize>,
    ops: Vec<Op>,
}

impl TableOps {
    /// The pending operations.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Keys of the pending deletes.
    pub fn deletes(&self) -> Vec<&[Datum]> {
        self.pick(|op| match op {
            Op::Delete(key) => Some(key),
            _ => None,
        })
    }

    /// Rows of the pending plain inserts.
    pub fn inserts(&self) -> Vec<&[Datum]> {
        self.pick(|op| match op {
            Op::Insert(row) => Some(row),
            _ => None,
        })
    }

    /// Rows of the pending upserts.
    pub fn upserts(&self) -> Vec<&[Datum]> {
        self.pick(|op| match op {
            Op::Upsert(row) => Some(row),
            _ => None,
        })
    }

    fn pick<'a>(&'a self, f: impl Fn(&'a Op) -> Option<&'a Row>) -> Vec<&'a [Datum]> {
        self.ops.iter().filter_map(f).map(Vec::as_slice).collect()
    }

    fn get(&self, key: &Row) -> Option<&Op> {
        self.slots.get(key).map(|&i| &self.ops[i])
    }

    /// Sets the operation of `key`; returns whether the key is new.
    fn set(&mut self, key: Row, op: Op) -> bool {
        match self.slots.get(&key) {
            Some(&i) => {
                self.ops[i] = op;
                false
            }
            None => {
                self.slots.insert(key, self.ops.len());
                self.ops.push(op);
                true
            }
        }
    }
}

/// What [`PendingOps::push`] did.
#[derive(Debug, PartialEq)]
pub enum Pushed {
    /// The change was merged into the pending operations.
    Merged,
    /// The change must be written alone: flush what is pending, then write
    /// this operation of this table, then go on.
    Barrier(TableIdx, Op),
}

/// Pending operations of every table.
#[derive(Debug)]
pub struct PendingOps {
    tables: Vec<TableOps>,
    rows: usize,
    bytes: usize,
}

/// The key values (key input order) of a row in plan input order.
pub fn key_of(plan: &TablePlan, row: &[Datum]) -> Row {
    plan.key_inputs.iter().map(|&k| row.get(k).cloned().unwrap_or(Datum::Null)).collect()
}

fn unchanged_flags(row: &[Datum]) -> Option<Vec<bool>> {
    row.iter()
        .any(|d| *d == Datum::UnchangedToast)
        .then(|| row.iter().map(|d| *d == Datum::UnchangedToast).collect())
}

/// `new` with its unchanged TOAST values taken from `base`.
fn fill_from(mut new: Row, base: &[Datum]) -> Row {
    for (value, old) in new.iter_mut().zip(base) {
        if *value == Datum::UnchangedToast {
            *value = old.clone();
        }
    }
    new
}

impl PendingOps {
    /// Nothing pending, for `tables` tables.
    pub fn new(tables: usize) -> Self {
        PendingOps { tables: (0..tables).map(|_| TableOps::default()).collect(), rows: 0, bytes: 0 }
    }

    /// Number of pending keys.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Approximate bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The pending operations of `table`.
    pub fn table(&self, table: TableIdx) -> &TableOps {
        &self.tables[table]
    }

    /// Forgets everything pending (after it was written).
    pub fn clear(&mut self) {
        for t in &mut self.tables {
            t.slots.clear();
            t.ops.clear();
        }
        self.rows = 0;
        self.bytes = 0;
    }

    fn set(&mut self, table: TableIdx, key: Row, op: Op) {
        if self.tables[table].set(key, op) {
            self.rows += 1;
        }
    }

    /// Adds a change, coalescing it with what is pending for its key.
    pub fn push(&mut self, plan: &Plan, change: Change) -> Result<Pushed, MissingToast> {
        self.bytes += change.size_hint();
        let table = change.table();
        let tp = &plan.tables[table];
        match change {
            Change::Insert { new, .. } => {
                let key = key_of(tp, &new);
                let op = if self.tables[table].get(&key).is_none() {
                    Op::Insert(new)
                } else {
                    Op::Upsert(new)
                };
                self.set(table, key, op);
            }
            Change::Delete { old_key, .. } => {
                self.set(table, old_key.clone(), Op::Delete(old_key));
            }
            Change::Update { old_key, new, .. } => {
                let new_key = key_of(tp, &new);
                let still_new = matches!(self.tables[table].get(&old_key), Some(Op::Insert(_)));
                let Some(unchanged) = unchanged_flags(&new) else {
                    if old_key != new_key {
                        self.set(table, old_key.clone(), Op::Delete(old_key));
                        self.set(table, new_key, Op::Upsert(new));
                    } else if still_new {
                        self.set(table, new_key, Op::Insert(new));
                    } else {
                        self.set(table, new_key, Op::Upsert(new));
                    }
                    return Ok(Pushed::Merged);
                };
                match self.tables[table].get(&old_key) {
                    Some(Op::Upsert(base) | Op::Insert(base)) => {
                        let full = fill_from(new, base);
                        if old_key != new_key {
                            self.set(table, old_key.clone(), Op::Delete(old_key));
                            self.set(table, new_key, Op::Upsert(full));
                        } else if still_new {
                            self.set(table, new_key, Op::Insert(full));
                        } else {
                            self.set(table, new_key, Op::Upsert(full));
                        }
                    }
                    Some(Op::Partial { new: base, .. }) if old_key == new_key => {
                        let merged = fill_from(new, base);
                        let flags = unchanged_flags(&merged).unwrap_or_default();
                        let untouched = tp.untouched_outputs(&flags)?;
                        let op = if untouched.is_empty() {
                            Op::Upsert(merged)
                        } else {
                            Op::Partial { old_key, new: merged, untouched }
                        };
                        self.set(table, new_key, op);
                    }
                    None if old_key == new_key => {
                        let untouched = tp.untouched_outputs(&unchanged)?;
                        self.set(table, new_key, Op::Partial { old_key, new, untouched });
                    }
                    _ => {
                        let untouched = tp.untouched_outputs(&unchanged)?;
                        return Ok(Pushed::Barrier(table, Op::Partial { old_key, new, untouched }));
                    }
                }
            }
        }
        Ok(Pushed::Merged)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::pg::sql::{Ident, QualifiedName};
    use crate::transform::plan::{Input, Output};

    fn plan() -> Plan {
        let table = TablePlan {
            index: 0,
            source: QualifiedName::parse("public.t").unwrap(),
            target: QualifiedName::parse("new.t").unwrap(),
            inputs: ["id", "doc"]
                .iter()
                .map(|n| Input { name: Ident::new(*n), cast_type: "text".into(), type_oid: 25 })
                .collect(),
            key_inputs: vec![0],
            outputs: vec![
                Output { column: Ident::new("id"), expr: "id".into(), deps: vec![0], verify: true },
                Output {
                    column: Ident::new("doc"),
                    expr: "doc".into(),
                    deps: vec![1],
                    verify: true,
                },
            ],
            target_key: vec![0],
            filter: None,
            truncate: true,
        };
        Plan { tables: vec![table], upsert_order: vec![0] }
    }

    fn t(s: &str) -> Datum {
        Datum::Text(Bytes::copy_from_slice(s.as_bytes()))
    }
    const U: Datum = Datum::UnchangedToast;

    fn ins(id: &str, doc: &str) -> Change {
        Change::Insert { table: 0, new: vec![t(id), t(doc)] }
    }
    fn upd(old: &str, id: &str, doc: Datum) -> Change {
        Change::Update { table: 0, old_key: vec![t(old)], new: vec![t(id), doc] }
    }
    fn del(id: &str) -> Change {
        Change::Delete { table: 0, old_key: vec![t(id)] }
    }

    fn run(changes: Vec<Change>) -> (PendingOps, Vec<Pushed>) {
        let plan = plan();
        let mut pending = PendingOps::new(1);
        let pushed = changes.into_iter().map(|c| pending.push(&plan, c).unwrap()).collect();
        (pending, pushed)
    }

    #[test]
    fn last_full_image_wins() {
        let (p, _) =
            run(vec![ins("1", "a"), upd("1", "1", t("b")), ins("2", "x"), upd("1", "1", t("c"))]);
        assert_eq!(p.rows(), 2);
        // Both keys are new in this flush: plain inserts.
        assert_eq!(
            p.table(0).ops(),
            &[Op::Insert(vec![t("1"), t("c")]), Op::Insert(vec![t("2"), t("x")])]
        );
        let (p, _) = run(vec![upd("1", "1", t("b")), upd("1", "1", t("c"))]);
        assert_eq!(p.table(0).ops(), &[Op::Upsert(vec![t("1"), t("c")])]);
    }

    #[test]
    fn delete_then_reinsert_is_an_upsert_and_insert_then_delete_a_delete() {
        let (p, _) = run(vec![del("1"), ins("1", "a"), ins("2", "b"), del("2")]);
        assert_eq!(p.table(0).ops(), &[Op::Upsert(vec![t("1"), t("a")]), Op::Delete(vec![t("2")])]);
    }

    #[test]
    fn key_change_deletes_the_old_key() {
        let (p, _) = run(vec![upd("1", "5", t("a"))]);
        assert_eq!(p.table(0).ops(), &[Op::Delete(vec![t("1")]), Op::Upsert(vec![t("5"), t("a")])]);
    }

    #[test]
    fn unchanged_toast_is_filled_from_a_pending_upsert() {
        let (p, _) = run(vec![ins("1", "big"), upd("1", "1", U), upd("1", "7", U)]);
        assert_eq!(
            p.table(0).ops(),
            &[Op::Delete(vec![t("1")]), Op::Upsert(vec![t("7"), t("big")])]
        );
    }

    #[test]
    fn unchanged_toast_without_pending_row_is_a_partial_update() {
        let (p, _) = run(vec![upd("1", "1", U), upd("1", "1", U)]);
        assert_eq!(
            p.table(0).ops(),
            &[Op::Partial { old_key: vec![t("1")], new: vec![t("1"), U], untouched: vec![1] }]
        );
        let (p, _) = run(vec![upd("1", "1", U), upd("1", "1", t("new"))]);
        assert_eq!(p.table(0).ops(), &[Op::Upsert(vec![t("1"), t("new")])]);
    }

    #[test]
    fn key_change_with_unchanged_toast_is_a_barrier() {
        let (p, pushed) = run(vec![ins("2", "x"), upd("1", "9", U)]);
        assert_eq!(p.rows(), 1);
        assert_eq!(
            pushed[1],
            Pushed::Barrier(
                0,
                Op::Partial { old_key: vec![t("1")], new: vec![t("9"), U], untouched: vec![1] }
            )
        );
    }
}
