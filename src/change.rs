//! The types that flow from the replication reader to the applier.
//!
//! ```text
//!  replication::reader ──Vec<StreamItem>──▶ apply::Applier
//!      (decode, project through           (coalesce, write, commit
//!       transform::Projection)             with the checkpoint)
//! ```
//!
//! A [`Row`] holds values in the *plan's input order* (the source columns a
//! table's mapping reads, see [`crate::transform::TablePlan`]), not in the
//! source table's column order: the reader projects every tuple once, so the
//! applier never looks at relation descriptions. Values stay the text bytes
//! pgoutput sent (a zero-copy slice of the received frame); the target casts
//! them, so nothing is parsed on the way.

use std::time::SystemTime;

use crate::lsn::Lsn;
use crate::replication::pgoutput::TupleValue;

/// Index of a table in the [`crate::transform::Plan`] (config order).
pub type TableIdx = usize;

/// One value: pgoutput's `n` (null), `u` (unchanged TOAST) or `t` (text).
pub type Datum = TupleValue;

/// Values in plan input order.
pub type Row = Vec<Datum>;

/// A row change of a mapped table.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A new row; every input is present.
    Insert {
        /// The table.
        table: TableIdx,
        /// The row.
        new: Row,
    },
    /// A changed row. `new` may hold [`Datum::UnchangedToast`] values.
    Update {
        /// The table.
        table: TableIdx,
        /// The key values before the update (key input order); equal to the
        /// key of `new` unless the update changed the key.
        old_key: Row,
        /// The row after the update.
        new: Row,
    },
    /// A deleted row.
    Delete {
        /// The table.
        table: TableIdx,
        /// The key values of the deleted row (key input order).
        old_key: Row,
    },
}

impl Change {
    /// The table this change belongs to.
    pub fn table(&self) -> TableIdx {
        match self {
            Change::Insert { table, .. }
            | Change::Update { table, .. }
            | Change::Delete { table, .. } => *table,
        }
    }

    /// Rough heap size in bytes, for the channel's byte budget.
    pub fn size_hint(&self) -> usize {
        let row = |r: &Row| r.iter().map(|d| 16 + datum_len(d)).sum::<usize>();
        match self {
            Change::Insert { new, .. } => row(new),
            Change::Update { old_key, new, .. } => row(old_key) + row(new),
            Change::Delete { old_key, .. } => row(old_key),
        }
    }
}

fn datum_len(d: &Datum) -> usize {
    match d {
        TupleValue::Text(b) | TupleValue::Binary(b) => b.len(),
        TupleValue::Null | TupleValue::UnchangedToast => 0,
    }
}

/// What the reader hands to the applier, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamItem {
    /// A source transaction starts.
    Begin {
        /// Position of its commit record (`Begin.final_lsn`).
        final_lsn: Lsn,
        /// Transaction id on the source.
        xid: u32,
    },
    /// A row change inside the open transaction.
    Change(Change),
    /// `TRUNCATE` of these mapped tables inside the open transaction.
    Truncate(Vec<TableIdx>),
    /// The open transaction committed.
    Commit {
        /// End of its commit record: the position stored as applied.
        end_lsn: Lsn,
        /// Its commit time on the source.
        commit_time: SystemTime,
    },
}

impl StreamItem {
    /// Rough heap size in bytes, for the channel's byte budget.
    pub fn size_hint(&self) -> usize {
        match self {
            StreamItem::Change(c) => 32 + c.size_hint(),
            StreamItem::Truncate(t) => 32 + 8 * t.len(),
            StreamItem::Begin { .. } | StreamItem::Commit { .. } => 32,
        }
    }
}
