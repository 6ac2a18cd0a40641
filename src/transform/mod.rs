//! Source rows into shadow rows.
//!
//! The transform itself is SQL evaluated by the target inside the apply
//! statements ([`plan`] compiles and checks it at start-up). What happens in
//! walshift is the *projection*: a pgoutput tuple, whose values are in the
//! source relation's column order as announced by the latest Relation
//! message, becomes a [`Row`] in the plan's input order. The projection is
//! rebuilt whenever pgoutput re-announces a relation; that is also where
//! schema drift is caught: a dropped or retyped input column stops the
//! stream ([`DriftError`]), an added column is simply not projected.

pub mod compare;
pub mod plan;
pub mod sql;

pub use plan::{Plan, TablePlan};

use crate::change::Row;
use crate::replication::pgoutput::{OldTuple, OldTupleKind, Relation, TupleData, TupleValue};
use crate::replication::relation_cache::TupleShapeError;

/// A source relation no longer matches the mapping compiled at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriftError {
    /// A column the mapping reads is gone (dropped or renamed).
    #[error(
        "source column {table}.{column} was dropped or renamed, but the mapping into {target} \
         reads it: restore the column or change the mapping, then restart"
    )]
    Dropped {
        /// Source table.
        table: String,
        /// The column.
        column: String,
        /// Target table.
        target: String,
    },
    /// A column the mapping reads changed type.
    #[error(
        "source column {table}.{column} changed type (oid {from} to {to}), but the mapping into \
         {target} reads it: check the mapping against the new type, then restart"
    )]
    Retyped {
        /// Source table.
        table: String,
        /// The column.
        column: String,
        /// Target table.
        target: String,
        /// Old type oid.
        from: u32,
        /// New type oid.
        to: u32,
    },
    /// The mapped table was renamed or moved to another schema.
    #[error("source table {table} was renamed to {now}: update the mapping, then restart")]
    Renamed {
        /// The configured name.
        table: String,
        /// The name now announced.
        now: String,
    },
}

/// A tuple could not be projected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProjectError {
    /// The tuple does not match its relation's column count.
    #[error(transparent)]
    Shape(#[from] TupleShapeError),
    /// A value pgoutput must send in full was missing or not in text format.
    #[error("{table}.{column}: {problem}")]
    Value {
        /// Source table.
        table: String,
        /// The column.
        column: String,
        /// What is wrong.
        problem: &'static str,
    },
}

/// Maps tuples of one source relation (as last announced) into plan input
/// order.
#[derive(Debug, Clone)]
pub struct Projection {
    /// For each plan input, its position in the relation's tuples.
    positions: Vec<usize>,
    /// Number of columns in the relation's tuples.
    width: usize,
    /// Readable source name and input names, for errors.
    table: String,
    input_names: Vec<String>,
    key_inputs: Vec<usize>,
}

impl Projection {
    /// Resolves `plan`'s inputs against a relation description.
    pub fn resolve(plan: &TablePlan, rel: &Relation) -> Result<Self, DriftError> {
        let table = plan.source.readable();
        if rel.namespace != plan.source.raw_schema() || rel.name != plan.source.raw_name() {
            return Err(DriftError::Renamed {
                table,
                now: crate::pg::sql::QualifiedName::new(rel.namespace.as_str(), rel.name.as_str())
                    .readable(),
            });
        }
        let mut positions = Vec::with_capacity(plan.inputs.len());
        for input in &plan.inputs {
            let found = rel.columns.iter().position(|c| c.name == input.name.as_str());
            let Some(pos) = found else {
                return Err(DriftError::Dropped {
                    table,
                    column: input.name.readable().into_owned(),
                    target: plan.target.readable(),
                });
            };
            let now = rel.columns[pos].type_oid;
            if now != input.type_oid {
                return Err(DriftError::Retyped {
                    table,
                    column: input.name.readable().into_owned(),
                    target: plan.target.readable(),
                    from: input.type_oid,
                    to: now,
                });
            }
            positions.push(pos);
        }
        Ok(Projection {
            positions,
            width: rel.columns.len(),
            table,
            input_names: plan.inputs.iter().map(|i| i.name.readable().into_owned()).collect(),
            key_inputs: plan.key_inputs.clone(),
        })
    }

    fn check_width(&self, tuple: &TupleData) -> Result<(), ProjectError> {
        if tuple.columns.len() == self.width {
            Ok(())
        } else {
            Err(ProjectError::Shape(TupleShapeError {
                rel_id: 0,
                namespace: String::new(),
                name: self.table.clone(),
                expected: self.width,
                found: tuple.columns.len(),
            }))
        }
    }

    fn value_error(&self, input: usize, problem: &'static str) -> ProjectError {
        ProjectError::Value {
            table: self.table.clone(),
            column: self.input_names.get(input).cloned().unwrap_or_default(),
            problem,
        }
    }

    /// The projected row of an inserted tuple.
    pub fn insert(&self, mut tuple: TupleData) -> Result<Row, ProjectError> {
        self.check_width(&tuple)?;
        let row = self.take(&mut tuple.columns);
        for (i, value) in row.iter().enumerate() {
            self.check_value(i, value, false)?;
        }
        Ok(row)
    }

    /// `(old_key, new_row)` of an update. Unchanged TOAST values in the new
    /// tuple are filled from a full old row (`REPLICA IDENTITY FULL`) when
    /// there is one; otherwise they stay [`TupleValue::UnchangedToast`].
    pub fn update(
        &self,
        old: Option<OldTuple>,
        mut new: TupleData,
    ) -> Result<(Row, Row), ProjectError> {
        self.check_width(&new)?;
        let mut row = self.take(&mut new.columns);
        let old_row = match old {
            Some(mut old) => {
                self.check_width(&old.tuple)?;
                let full = old.kind == OldTupleKind::Full;
                let old_row = self.take(&mut old.tuple.columns);
                if full {
                    for (value, old_value) in row.iter_mut().zip(&old_row) {
                        if *value == TupleValue::UnchangedToast {
                            *value = old_value.clone();
                        }
                    }
                }
                Some(old_row)
            }
            None => None,
        };
        for (i, value) in row.iter().enumerate() {
            self.check_value(i, value, true)?;
        }
        let old_key = match old_row {
            Some(old_row) => self.key_of(&old_row)?,
            None => self.key_of(&row)?,
        };
        if self.key_inputs.iter().any(|&k| row.get(k) == Some(&TupleValue::UnchangedToast)) {
            return Err(
                self.value_error(self.key_inputs[0], "key value arrived as unchanged TOAST")
            );
        }
        Ok((old_key, row))
    }

    /// The key of a deleted row.
    pub fn delete(&self, mut old: OldTuple) -> Result<Row, ProjectError> {
        self.check_width(&old.tuple)?;
        let row = self.take(&mut old.tuple.columns);
        self.key_of(&row)
    }

    fn key_of(&self, row: &Row) -> Result<Row, ProjectError> {
        let mut key = Vec::with_capacity(self.key_inputs.len());
        for &k in &self.key_inputs {
            match row.get(k) {
                Some(v @ TupleValue::Text(_)) => key.push(v.clone()),
                _ => return Err(self.value_error(k, "key value missing from the change")),
            }
        }
        Ok(key)
    }

    fn check_value(
        &self,
        input: usize,
        value: &TupleValue,
        update: bool,
    ) -> Result<(), ProjectError> {
        match value {
            TupleValue::Binary(_) => Err(self.value_error(input, "value in binary format")),
            TupleValue::UnchangedToast if !update => {
                Err(self.value_error(input, "unchanged TOAST value in an insert"))
            }
            _ => Ok(()),
        }
    }

    /// Moves the input columns out of `values` (no copy of the bytes).
    fn take(&self, values: &mut [TupleValue]) -> Row {
        self.positions
            .iter()
            .map(|&p| {
                values
                    .get_mut(p)
                    .map(|v| std::mem::replace(v, TupleValue::Null))
                    .unwrap_or(TupleValue::Null)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::pg::sql::{Ident, QualifiedName};
    use crate::replication::pgoutput::{RelationColumn, ReplicaIdentity};
    use crate::transform::plan::{Input, Output};

    fn plan() -> TablePlan {
        TablePlan {
            index: 0,
            source: QualifiedName::parse("public.t").unwrap(),
            target: QualifiedName::parse("new.t").unwrap(),
            inputs: vec![
                Input { name: Ident::new("id"), cast_type: "integer".into(), type_oid: 23 },
                Input { name: Ident::new("doc"), cast_type: "text".into(), type_oid: 25 },
            ],
            key_inputs: vec![0],
            outputs: vec![Output {
                column: Ident::new("id"),
                expr: "id".into(),
                deps: vec![0],
                verify: true,
            }],
            target_key: vec![0],
            filter: None,
            truncate: true,
        }
    }

    fn rel(cols: &[(&str, u32)]) -> Relation {
        Relation {
            rel_id: 1,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: cols
                .iter()
                .map(|(n, t)| RelationColumn {
                    flags: u8::from(*n == "id"),
                    name: (*n).into(),
                    type_oid: *t,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    fn text(s: &str) -> TupleValue {
        TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn projects_by_name_and_ignores_extra_columns() {
        let p =
            Projection::resolve(&plan(), &rel(&[("extra", 25), ("doc", 25), ("id", 23)])).unwrap();
        let row = p.insert(TupleData { columns: vec![text("x"), text("d"), text("7")] }).unwrap();
        assert_eq!(row, vec![text("7"), text("d")]);
    }

    #[test]
    fn drift_is_detected() {
        let err = Projection::resolve(&plan(), &rel(&[("id", 23)])).unwrap_err();
        assert!(matches!(err, DriftError::Dropped { ref column, .. } if column == "doc"));
        assert!(err.to_string().contains("public.t.doc was dropped"));
        let err = Projection::resolve(&plan(), &rel(&[("id", 23), ("doc", 1043)])).unwrap_err();
        assert!(matches!(err, DriftError::Retyped { from: 25, to: 1043, .. }));
        let mut renamed = rel(&[("id", 23), ("doc", 25)]);
        renamed.name = "t_old".into();
        assert!(matches!(
            Projection::resolve(&plan(), &renamed).unwrap_err(),
            DriftError::Renamed { .. }
        ));
    }

    #[test]
    fn update_fills_unchanged_toast_from_full_old_row() {
        let p = Projection::resolve(&plan(), &rel(&[("id", 23), ("doc", 25)])).unwrap();
        let new = TupleData { columns: vec![text("1"), TupleValue::UnchangedToast] };
        let (key, row) = p.update(None, new.clone()).unwrap();
        assert_eq!(key, vec![text("1")]);
        assert_eq!(row[1], TupleValue::UnchangedToast);
        let old = OldTuple {
            kind: OldTupleKind::Full,
            tuple: TupleData { columns: vec![text("1"), text("big")] },
        };
        let (_, row) = p.update(Some(old), new).unwrap();
        assert_eq!(row[1], text("big"));
    }

    #[test]
    fn key_change_takes_the_old_key() {
        let p = Projection::resolve(&plan(), &rel(&[("id", 23), ("doc", 25)])).unwrap();
        let old = OldTuple {
            kind: OldTupleKind::Key,
            tuple: TupleData { columns: vec![text("1"), TupleValue::Null] },
        };
        let (key, row) =
            p.update(Some(old), TupleData { columns: vec![text("2"), text("d")] }).unwrap();
        assert_eq!(key, vec![text("1")]);
        assert_eq!(row[0], text("2"));
        let key = p
            .delete(OldTuple {
                kind: OldTupleKind::Key,
                tuple: TupleData { columns: vec![text("3"), TupleValue::Null] },
            })
            .unwrap();
        assert_eq!(key, vec![text("3")]);
    }

    #[test]
    fn bad_tuples_are_errors() {
        let p = Projection::resolve(&plan(), &rel(&[("id", 23), ("doc", 25)])).unwrap();
        assert!(p.insert(TupleData { columns: vec![text("1")] }).is_err());
        assert!(
            p.insert(TupleData { columns: vec![text("1"), TupleValue::UnchangedToast] }).is_err()
        );
        assert!(
            p.delete(OldTuple {
                kind: OldTupleKind::Key,
                tuple: TupleData { columns: vec![TupleValue::Null, TupleValue::Null] },
            })
            .is_err()
        );
    }
}
