//! Rendering decoded changes as JSON lines (pure, no I/O).
//!
//! Values are the Postgres text form that pgoutput carries, as JSON strings
//! (SQL NULL as JSON null), so nothing is reinterpreted: numeric precision,
//! int8 beyond 2^53, `NaN`, `Infinity` and json text arrive as sent. Binary
//! values (only sent when the `binary` option is on, which walshift does not
//! request) are printed as `\x`-prefixed hex, like `bytea` output.
//!
//! A row change:
//!
//! ```json
//! {"lsn":"0/16B3748","commit_lsn":"0/16B37A0","xid":740,"commit_time":"2026-11-21T06:13:51.123456Z",
//!  "table":"public.t","op":"update","key":{"id":"1"},"new":{"id":"1","v":"x"},"old":null,
//!  "unchanged_toast":["doc"]}
//! ```
//!
//! `key` holds the replica-identity columns identifying the row (the old key
//! for an UPDATE that changed it, or a DELETE); `new` leaves out columns
//! whose value was not sent (unchanged TOAST), which `unchanged_toast` names.

use std::collections::HashMap;
use std::io::Write;

use bytes::Bytes;

use crate::lsn::Lsn;
use crate::replication::pgoutput::{
    Begin, Commit, LogicalMessage, OldTupleKind, Relation, Truncate, TupleData, TupleValue,
};

/// Problems turning a change into a line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    /// A change refers to a relation the server never described.
    #[error(
        "change at {lsn} refers to unknown relation id {rel_id} (no Relation message received)"
    )]
    UnknownRelation {
        /// Position of the change.
        lsn: Lsn,
        /// The relation id.
        rel_id: u32,
    },
    /// A tuple does not have as many columns as its relation.
    #[error(
        "tuple at {lsn} for {table} has {got} columns, but its Relation message has {expected}"
    )]
    ColumnCount {
        /// Position of the change.
        lsn: Lsn,
        /// `schema.table`.
        table: String,
        /// Columns in the relation.
        expected: usize,
        /// Columns in the tuple.
        got: usize,
    },
}

/// A relation with its names pre-escaped for JSON.
#[derive(Debug)]
struct RelationView {
    table: String,
    table_json: Vec<u8>,
    columns: Vec<ColumnView>,
    replica_identity: &'static str,
}

#[derive(Debug)]
struct ColumnView {
    name_json: Vec<u8>,
    is_key: bool,
    type_oid: u32,
}

/// The transaction a change belongs to, with its JSON fields rendered once
/// per transaction instead of once per row.
#[derive(Debug, Clone, Copy)]
pub struct TxnContext {
    /// Begin's final (commit) LSN.
    pub commit_lsn: Lsn,
    /// Transaction id.
    pub xid: u32,
    /// `"commit_lsn":"…","xid":…,"commit_time":"…"` (at most 17 + 10 + 32
    /// bytes of values; the buffer leaves room to spare).
    fields: [u8; 128],
    fields_len: usize,
}

impl TxnContext {
    /// Context of the transaction started by `begin`.
    pub fn from_begin(begin: &Begin) -> TxnContext {
        let mut text = Vec::with_capacity(128);
        let _ = write!(
            text,
            "\"commit_lsn\":\"{}\",\"xid\":{},\"commit_time\":\"{}\"",
            begin.final_lsn, begin.xid, begin.commit_time
        );
        let mut fields = [0u8; 128];
        let len = text.len().min(fields.len());
        fields[..len].copy_from_slice(&text[..len]);
        TxnContext { commit_lsn: begin.final_lsn, xid: begin.xid, fields, fields_len: len }
    }

    /// The rendered fields, without surrounding braces or commas.
    fn fields(&self) -> &[u8] {
        &self.fields[..self.fields_len]
    }
}

/// Which row operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// INSERT.
    Insert,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
}

/// Renders changes; remembers relations as the server describes them.
#[derive(Debug, Default)]
pub struct Renderer {
    relations: HashMap<u32, RelationView>,
}

fn json_str(out: &mut Vec<u8>, s: &str) {
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn json_bytes_as_str(out: &mut Vec<u8>, bytes: &Bytes) {
    match std::str::from_utf8(bytes) {
        Ok(s) => json_str(out, s),
        Err(_) => json_str(out, &String::from_utf8_lossy(bytes)),
    }
}

fn json_value(out: &mut Vec<u8>, value: &TupleValue) {
    match value {
        TupleValue::Null | TupleValue::UnchangedToast => out.extend_from_slice(b"null"),
        TupleValue::Text(bytes) => json_bytes_as_str(out, bytes),
        TupleValue::Binary(bytes) => {
            out.extend_from_slice(b"\"\\\\x");
            for b in bytes.iter() {
                let _ = write!(out, "{b:02x}");
            }
            out.push(b'"');
        }
    }
}

fn field_lsn(out: &mut Vec<u8>, name: &str, lsn: Lsn) {
    let _ = write!(out, "\"{name}\":\"{lsn}\"");
}

impl Renderer {
    /// Records (or replaces, after `ALTER TABLE`) a relation description.
    pub fn relation(&mut self, relation: &Relation) {
        let table = format!("{}.{}", relation.namespace, relation.name);
        let mut table_json = Vec::new();
        json_str(&mut table_json, &table);
        let columns = relation
            .columns
            .iter()
            .map(|c| {
                let mut name_json = Vec::new();
                json_str(&mut name_json, &c.name);
                ColumnView { name_json, is_key: c.is_key(), type_oid: c.type_oid }
            })
            .collect();
        let replica_identity = match relation.replica_identity {
            crate::replication::pgoutput::ReplicaIdentity::Default => "default",
            crate::replication::pgoutput::ReplicaIdentity::Nothing => "nothing",
            crate::replication::pgoutput::ReplicaIdentity::Full => "full",
            crate::replication::pgoutput::ReplicaIdentity::Index => "index",
        };
        self.relations
            .insert(relation.rel_id, RelationView { table, table_json, columns, replica_identity });
    }

    fn view(&self, lsn: Lsn, rel_id: u32) -> Result<&RelationView, RenderError> {
        self.relations.get(&rel_id).ok_or(RenderError::UnknownRelation { lsn, rel_id })
    }

    /// Writes one row-change line.
    #[allow(clippy::too_many_arguments)]
    pub fn row(
        &self,
        out: &mut Vec<u8>,
        lsn: Lsn,
        txn: &TxnContext,
        rel_id: u32,
        op: Op,
        new: Option<&TupleData>,
        old: Option<(OldTupleKind, &TupleData)>,
    ) -> Result<(), RenderError> {
        let view = self.view(lsn, rel_id)?;
        for tuple in new.into_iter().chain(old.map(|(_, t)| t)) {
            if tuple.columns.len() != view.columns.len() {
                return Err(RenderError::ColumnCount {
                    lsn,
                    table: view.table.clone(),
                    expected: view.columns.len(),
                    got: tuple.columns.len(),
                });
            }
        }
        out.push(b'{');
        field_lsn(out, "lsn", lsn);
        out.push(b',');
        out.extend_from_slice(txn.fields());
        out.extend_from_slice(b",\"table\":");
        out.extend_from_slice(&view.table_json);
        out.extend_from_slice(match op {
            Op::Insert => b",\"op\":\"insert\"",
            Op::Update => b",\"op\":\"update\"",
            Op::Delete => b",\"op\":\"delete\"",
        });

        // The row's identity: the old key when one was sent, else the new row's.
        out.extend_from_slice(b",\"key\":");
        let key_source = old.map(|(_, t)| t).or(new);
        match key_source {
            Some(tuple) => write_object(out, view, tuple, |c, v| {
                c.is_key && !matches!(v, TupleValue::UnchangedToast)
            }),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"new\":");
        match new {
            Some(tuple) => {
                write_object(out, view, tuple, |_, v| !matches!(v, TupleValue::UnchangedToast));
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"old\":");
        match old {
            Some((OldTupleKind::Key, tuple)) => write_object(out, view, tuple, |c, v| {
                c.is_key && !matches!(v, TupleValue::UnchangedToast)
            }),
            Some((OldTupleKind::Full, tuple)) => {
                write_object(out, view, tuple, |_, v| !matches!(v, TupleValue::UnchangedToast));
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"unchanged_toast\":[");
        if let Some(tuple) = new {
            let mut first = true;
            for (column, value) in view.columns.iter().zip(&tuple.columns) {
                if matches!(value, TupleValue::UnchangedToast) {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    out.extend_from_slice(&column.name_json);
                }
            }
        }
        out.extend_from_slice(b"]}\n");
        Ok(())
    }

    /// Writes a `begin` event line.
    pub fn begin(&self, out: &mut Vec<u8>, lsn: Lsn, begin: &Begin) {
        let txn = TxnContext::from_begin(begin);
        out.extend_from_slice(b"{\"event\":\"begin\",");
        field_lsn(out, "lsn", lsn);
        out.push(b',');
        out.extend_from_slice(txn.fields());
        out.extend_from_slice(b"}\n");
    }

    /// Writes a `commit` event line.
    pub fn commit(&self, out: &mut Vec<u8>, lsn: Lsn, txn: &TxnContext, commit: &Commit) {
        out.extend_from_slice(b"{\"event\":\"commit\",");
        field_lsn(out, "lsn", lsn);
        out.push(b',');
        field_lsn(out, "commit_lsn", commit.commit_lsn);
        out.push(b',');
        field_lsn(out, "end_lsn", commit.end_lsn);
        let _ = writeln!(out, ",\"xid\":{},\"commit_time\":\"{}\"}}", txn.xid, commit.commit_time);
    }

    /// Writes a `relation` event line (the server (re)described a table).
    pub fn relation_event(&self, out: &mut Vec<u8>, lsn: Lsn, rel_id: u32) {
        let Some(view) = self.relations.get(&rel_id) else { return };
        out.extend_from_slice(b"{\"event\":\"relation\",");
        field_lsn(out, "lsn", lsn);
        out.extend_from_slice(b",\"table\":");
        out.extend_from_slice(&view.table_json);
        let _ = write!(out, ",\"replica_identity\":\"{}\",\"columns\":[", view.replica_identity);
        for (i, c) in view.columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"name\":");
            out.extend_from_slice(&c.name_json);
            let _ = write!(out, ",\"type_oid\":{},\"key\":{}}}", c.type_oid, c.is_key);
        }
        out.extend_from_slice(b"]}\n");
    }

    /// Writes a `truncate` event line.
    pub fn truncate(
        &self,
        out: &mut Vec<u8>,
        lsn: Lsn,
        txn: &TxnContext,
        truncate: &Truncate,
    ) -> Result<(), RenderError> {
        out.extend_from_slice(b"{\"event\":\"truncate\",");
        field_lsn(out, "lsn", lsn);
        out.push(b',');
        out.extend_from_slice(txn.fields());
        out.extend_from_slice(b",\"tables\":[");
        for (i, rel_id) in truncate.rel_ids.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&self.view(lsn, *rel_id)?.table_json);
        }
        let _ = writeln!(
            out,
            "],\"cascade\":{},\"restart_identity\":{}}}",
            truncate.cascade, truncate.restart_identity
        );
        Ok(())
    }

    /// Writes a `message` event line (`pg_logical_emit_message`).
    pub fn message(
        &self,
        out: &mut Vec<u8>,
        lsn: Lsn,
        txn: Option<&TxnContext>,
        msg: &LogicalMessage,
    ) {
        out.extend_from_slice(b"{\"event\":\"message\",");
        field_lsn(out, "lsn", lsn);
        if let Some(txn) = txn {
            out.push(b',');
            field_lsn(out, "commit_lsn", txn.commit_lsn);
            let _ = write!(out, ",\"xid\":{}", txn.xid);
        }
        let _ = write!(out, ",\"transactional\":{},\"prefix\":", msg.transactional);
        json_str(out, &msg.prefix);
        out.extend_from_slice(b",\"content\":");
        json_bytes_as_str(out, &msg.content);
        out.extend_from_slice(b"}\n");
    }
}

fn write_object(
    out: &mut Vec<u8>,
    view: &RelationView,
    tuple: &TupleData,
    include: impl Fn(&ColumnView, &TupleValue) -> bool,
) {
    out.push(b'{');
    let mut first = true;
    for (column, value) in view.columns.iter().zip(&tuple.columns) {
        if !include(column, value) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(&column.name_json);
        out.push(b':');
        json_value(out, value);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::pgoutput::{PgTimestamp, RelationColumn, ReplicaIdentity};

    fn relation() -> Relation {
        let col = |name: &str, key: bool| RelationColumn {
            flags: u8::from(key),
            name: name.into(),
            type_oid: 25,
            type_modifier: -1,
        };
        Relation {
            rel_id: 7,
            namespace: "public".into(),
            name: "t\"q".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![col("id", true), col("doc", false), col("note", false)],
        }
    }

    fn txn() -> TxnContext {
        TxnContext::from_begin(&Begin { final_lsn: Lsn(0x20), commit_time: PgTimestamp(0), xid: 9 })
    }

    fn tuple(values: Vec<TupleValue>) -> TupleData {
        TupleData { columns: values }
    }

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn renders_update_with_unchanged_toast_and_old_key() {
        let mut r = Renderer::default();
        r.relation(&relation());
        let mut out = Vec::new();
        let new = tuple(vec![text("2"), TupleValue::UnchangedToast, TupleValue::Null]);
        let old = tuple(vec![text("1"), TupleValue::Null, TupleValue::Null]);
        r.row(
            &mut out,
            Lsn(0x10),
            &txn(),
            7,
            Op::Update,
            Some(&new),
            Some((OldTupleKind::Key, &old)),
        )
        .unwrap();
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            line,
            serde_json::json!({
                "lsn": "0/10", "commit_lsn": "0/20", "xid": 9,
                "commit_time": "2000-01-01T00:00:00.000000Z",
                "table": "public.t\"q", "op": "update",
                "key": {"id": "1"}, "new": {"id": "2", "note": null},
                "old": {"id": "1"}, "unchanged_toast": ["doc"]
            })
        );
        assert!(out.ends_with(b"\n"));
    }

    #[test]
    fn keeps_text_exactly_and_escapes() {
        let mut r = Renderer::default();
        r.relation(&relation());
        let mut out = Vec::new();
        let new = tuple(vec![text("12345678901234567890"), text("é \"x\"\n😀"), text("")]);
        r.row(&mut out, Lsn(1), &txn(), 7, Op::Insert, Some(&new), None).unwrap();
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line["new"]["id"], "12345678901234567890");
        assert_eq!(line["new"]["doc"], "é \"x\"\n😀");
        assert_eq!(line["new"]["note"], "");
        assert_eq!(line["old"], serde_json::Value::Null);
        assert_eq!(line["key"], serde_json::json!({"id": "12345678901234567890"}));
    }

    #[test]
    fn rejects_unknown_relation_and_wrong_arity() {
        let mut r = Renderer::default();
        let mut out = Vec::new();
        let new = tuple(vec![text("1")]);
        assert_eq!(
            r.row(&mut out, Lsn(1), &txn(), 7, Op::Insert, Some(&new), None),
            Err(RenderError::UnknownRelation { lsn: Lsn(1), rel_id: 7 })
        );
        r.relation(&relation());
        assert!(matches!(
            r.row(&mut out, Lsn(1), &txn(), 7, Op::Insert, Some(&new), None),
            Err(RenderError::ColumnCount { expected: 3, got: 1, .. })
        ));
    }
}
