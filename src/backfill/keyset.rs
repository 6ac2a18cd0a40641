//! Keyset pagination over a table's key, and the source snapshot a chunk is
//! read at. Pure: builds SQL and parses snapshots; no I/O.
//!
//! A chunk is `WHERE (k1, k2) > ($1, $2) ORDER BY k1, k2 LIMIT $3`: a row
//! comparison that the key's unique index answers with one descent and a
//! range scan, whatever the key's type (bigint, uuid, text in its column's
//! collation, composite). The cursor is the key of the last row copied, held
//! as each key column's text output and cast back to the column's type, so
//! it round-trips exactly. Never `OFFSET`: an offset scan re-reads every row
//! before it, which makes a full copy quadratic.

use std::fmt::Write as _;

use crate::transform::TablePlan;

/// Built-in types whose binary (send/receive) format is the same on every
/// PostgreSQL server and holds no object ids: a chunk reads these columns in
/// binary and the target receives them as typed arrays, skipping the text
/// output on the source and the text parsing on the target (the largest
/// per-row cost of a copy). Everything else travels as text and is cast.
const BINARY_SAFE_TYPES: &[u32] = &[
    16, 17, 18, 19, 20, 21, 23, 25, 26, 114, 650, 700, 701, 829, 869, 1042, 1043, 1082, 1083, 1114,
    1184, 1186, 1266, 1560, 1562, 1700, 2950, 3802,
    // Arrays of the above (their element type ids are the same everywhere).
    199, 1000, 1001, 1005, 1007, 1009, 1014, 1015, 1016, 1021, 1022, 1115, 1182, 1185, 1187, 1231,
    2951, 3807,
];

/// Per input of `plan`: whether chunks carry it in binary. Key inputs are
/// always text: the cursor is stored as text.
pub fn binary_inputs(plan: &TablePlan) -> Vec<bool> {
    plan.inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            !plan.key_inputs.contains(&i) && BINARY_SAFE_TYPES.contains(&input.type_oid)
        })
        .collect()
}

/// `select <inputs> from <source> [where (<key>) > (<cursor>)] order by
/// <key> limit $n`, each input as itself when [`binary_inputs`] says so,
/// else as `::text`.
///
/// With `after_cursor`, parameters `$1..$k` are the cursor's key values as
/// text (key input order) and `$k+1` the row limit; without, `$1` is the
/// limit (the table's first chunk).
pub fn chunk_query(plan: &TablePlan, after_cursor: bool) -> String {
    let binary = binary_inputs(plan);
    let cols: Vec<String> = plan
        .inputs
        .iter()
        .zip(&binary)
        .map(|(i, &b)| if b { format!("t.{}", i.name) } else { format!("t.{}::text", i.name) })
        .collect();
    let keys: Vec<String> =
        plan.key_inputs.iter().map(|&k| format!("t.{}", plan.inputs[k].name)).collect();
    let mut sql = format!("select {} from {} as t", cols.join(", "), plan.source);
    let mut param = 0;
    if after_cursor {
        let mut values = String::new();
        for (j, &k) in plan.key_inputs.iter().enumerate() {
            if j > 0 {
                values.push_str(", ");
            }
            param += 1;
            let _ = write!(values, "${param}::text::{}", plan.inputs[k].cast_type);
        }
        let _ = write!(sql, " where ({}) > ({values})", keys.join(", "));
    }
    let _ = write!(sql, " order by {} limit ${}", keys.join(", "), param + 1);
    sql
}

/// Reads the chunk's snapshot and the transactions that are committed but
/// not yet visible in it (see [`Snapshot`]). Runs as the first statement of
/// the chunk's `REPEATABLE READ` transaction, so it *is* the chunk's snapshot.
pub const SNAPSHOT_QUERY: &str = "select pg_current_snapshot()::text, \
     array(select x::text from pg_snapshot_xip(pg_current_snapshot()) as x \
           where pg_xact_status(x) = 'committed')";

/// A source snapshot as `pg_current_snapshot()` prints it:
/// `xmin:xmax:xip,xip,...` (64-bit transaction ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Every transaction below this is finished.
    pub xmin: u64,
    /// Every transaction at or above this is invisible.
    pub xmax: u64,
    /// Transactions in progress when the snapshot was taken (invisible).
    pub xip: Vec<u64>,
}

impl Snapshot {
    /// Parses `pg_current_snapshot()::text`.
    pub fn parse(text: &str) -> Option<Snapshot> {
        let mut parts = text.trim().splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip_text = parts.next()?;
        let mut xip = Vec::new();
        for x in xip_text.split(',').filter(|x| !x.is_empty()) {
            xip.push(x.parse().ok()?);
        }
        (xmin <= xmax).then_some(Snapshot { xmin, xmax, xip })
    }

    /// Whether a *committed* transaction with 32-bit id `xid` (as pgoutput
    /// sends it) is visible in this snapshot. The 32-bit id is widened with
    /// the epoch of `xmax`: ids in use are always within 2^31 of it.
    pub fn sees_committed(&self, xid: u32) -> bool {
        let epoch = self.xmax & !0xFFFF_FFFF;
        let mut full = epoch | u64::from(xid);
        if full > self.xmax && full >= 1 << 32 {
            full -= 1 << 32;
        }
        if full < self.xmin {
            return true;
        }
        full < self.xmax && !self.xip.contains(&full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::sql::{Ident, QualifiedName};
    use crate::transform::plan::{Input, Output};

    fn plan(keys: Vec<usize>) -> TablePlan {
        TablePlan {
            index: 0,
            source: QualifiedName::parse("public.events").unwrap(),
            target: QualifiedName::parse("shadow.events").unwrap(),
            inputs: vec![
                Input { name: Ident::new("region"), cast_type: "text".into(), type_oid: 25 },
                Input { name: Ident::new("id"), cast_type: "uuid".into(), type_oid: 2950 },
                Input { name: Ident::new("body"), cast_type: "jsonb".into(), type_oid: 3802 },
            ],
            key_inputs: keys,
            outputs: vec![Output {
                column: Ident::new("id"),
                expr: "id".into(),
                deps: vec![1],
                verify: true,
            }],
            target_key: vec![0],
            filter: None,
            truncate: true,
        }
    }

    #[test]
    fn first_chunk_has_no_cursor() {
        assert_eq!(
            chunk_query(&plan(vec![1]), false),
            "select t.\"region\", t.\"id\"::text, t.\"body\" from \
             \"public\".\"events\" as t order by t.\"id\" limit $1"
        );
    }

    #[test]
    fn composite_keys_compare_as_rows_in_key_order() {
        assert_eq!(
            chunk_query(&plan(vec![0, 1]), true),
            "select t.\"region\"::text, t.\"id\"::text, t.\"body\" from \
             \"public\".\"events\" as t where (t.\"region\", t.\"id\") > ($1::text::text, \
             $2::text::uuid) order by t.\"region\", t.\"id\" limit $3"
        );
    }

    #[test]
    fn keys_and_unknown_types_travel_as_text() {
        let mut p = plan(vec![1]);
        p.inputs[2].type_oid = 16_385; // a user-defined type
        assert_eq!(binary_inputs(&p), [true, false, false]);
        assert_eq!(binary_inputs(&plan(vec![0, 1])), [false, false, true]);
    }

    #[test]
    fn names_are_quoted() {
        let mut p = plan(vec![1]);
        p.source = QualifiedName::new("public", "x\"; drop table y; --");
        assert!(chunk_query(&p, true).contains("from \"public\".\"x\"\"; drop table y; --\" as t"));
    }

    #[test]
    fn parses_snapshots() {
        assert_eq!(
            Snapshot::parse("748:752:748,750"),
            Some(Snapshot { xmin: 748, xmax: 752, xip: vec![748, 750] })
        );
        assert_eq!(Snapshot::parse("5:5:"), Some(Snapshot { xmin: 5, xmax: 5, xip: vec![] }));
        for bad in ["", "1:2", "a:b:", "9:5:", "1:5:x"] {
            assert_eq!(Snapshot::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn visibility_of_committed_transactions() {
        let s = Snapshot::parse("748:752:748,750").unwrap();
        assert!(s.sees_committed(700)); // below xmin
        assert!(!s.sees_committed(748)); // in progress at snapshot time
        assert!(s.sees_committed(749));
        assert!(!s.sees_committed(750));
        assert!(s.sees_committed(751));
        assert!(!s.sees_committed(752)); // at or after xmax
        assert!(!s.sees_committed(900));
    }

    #[test]
    fn visibility_across_an_epoch_boundary() {
        // xmax just past the wrap of the 32-bit id: epoch 1.
        let base = 1u64 << 32;
        let s = Snapshot { xmin: base - 10, xmax: base + 5, xip: vec![base - 3, base + 2] };
        assert!(s.sees_committed(u32::MAX - 5)); // epoch 0, visible
        assert!(!s.sees_committed(u32::MAX - 2)); // epoch 0, in progress
        assert!(s.sees_committed(1));
        assert!(!s.sees_committed(2));
        assert!(!s.sees_committed(5));
        assert!(s.sees_committed(u32::MAX - 20)); // below xmin
    }
}
