//! The relations of one replication stream, as announced by Relation messages.
//!
//! Insert, Update and Delete messages name their table only by oid and carry
//! values only by position; the column names, types and key flags come from
//! the Relation (`R`) message that pgoutput sends before the first change to
//! a table in a session, and again whenever the table's description may have
//! changed: after `ALTER TABLE ... ADD/DROP COLUMN`, a column type change, a
//! replica identity change, and also after events that change nothing visible
//! (a `TRUNCATE` re-sends an identical description). [`RelationCache::apply`]
//! therefore reports whether a description is new, identical, or changed, and
//! for a change gives a [`RelationDiff`] (added, removed and retyped columns,
//! key and replica identity changes) so callers can decide whether their
//! column mapping still holds.
//!
//! pgoutput identifies columns by position and name only, so a renamed column
//! appears as one removed and one added column.
//!
//! Descriptions are stored as `Arc<Relation>` so a batch being applied can
//! keep the description its rows were decoded against while the stream
//! moves on.
//!
//! [`Relation::check_tuple`] and [`Relation::resolve_tuple`] pair a tuple's
//! values with the relation's columns without ever indexing out of bounds: a
//! tuple whose column count differs from its relation is a typed error.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use crate::replication::pgoutput::{
    Relation, RelationColumn, ReplicaIdentity, TupleData, TupleValue,
};

/// Relation descriptions by relation oid.
#[derive(Clone, Debug, Default)]
pub struct RelationCache {
    relations: HashMap<u32, Arc<Relation>>,
}

/// What [`RelationCache::apply`] did with a Relation message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelationUpdate {
    /// The relation was not known before.
    New,
    /// The relation was re-sent unchanged; the cached `Arc` is kept.
    Unchanged,
    /// The description changed and replaced the cached one.
    Changed {
        /// The description that was replaced.
        previous: Arc<Relation>,
        /// What changed.
        diff: RelationDiff,
    },
}

/// The differences between two descriptions of the same relation oid.
///
/// Column lists hold column names: `added` and `retyped` in the new
/// description's order, `removed` in the old one's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelationDiff {
    /// The previous `(namespace, name)` if the relation was renamed or moved
    /// to another schema.
    pub renamed_from: Option<(String, String)>,
    /// The previous replica identity, if it changed.
    pub replica_identity_from: Option<ReplicaIdentity>,
    /// Columns that are new.
    pub added: Vec<String>,
    /// Columns that are gone.
    pub removed: Vec<String>,
    /// Columns whose type oid or type modifier changed.
    pub retyped: Vec<String>,
    /// Whether the set of replica identity key columns changed.
    pub key_changed: bool,
    /// Whether columns present in both descriptions changed relative order.
    pub reordered: bool,
}

impl RelationDiff {
    /// Compares two descriptions of the same relation.
    pub fn between(old: &Relation, new: &Relation) -> Self {
        let added = column_names(new.columns.iter().filter(|c| old.column(&c.name).is_none()));
        let removed = column_names(old.columns.iter().filter(|c| new.column(&c.name).is_none()));
        let retyped = column_names(new.columns.iter().filter(|c| {
            old.column(&c.name)
                .is_some_and(|o| (o.type_oid, o.type_modifier) != (c.type_oid, c.type_modifier))
        }));
        let common = |a: &Relation, b: &Relation| {
            column_names(a.columns.iter().filter(|c| b.column(&c.name).is_some()))
        };
        let key_set = |rel: &Relation| {
            let mut keys = column_names(rel.key_columns());
            keys.sort_unstable();
            keys
        };
        RelationDiff {
            renamed_from: (old.namespace != new.namespace || old.name != new.name)
                .then(|| (old.namespace.clone(), old.name.clone())),
            replica_identity_from: (old.replica_identity != new.replica_identity)
                .then_some(old.replica_identity),
            added,
            removed,
            retyped,
            key_changed: key_set(old) != key_set(new),
            reordered: common(old, new) != common(new, old),
        }
    }

    /// Whether the columns changed in a way that affects tuple layout or typing.
    pub fn columns_changed(&self) -> bool {
        !self.added.is_empty()
            || !self.removed.is_empty()
            || !self.retyped.is_empty()
            || self.reordered
    }
}

fn column_names<'a>(columns: impl Iterator<Item = &'a RelationColumn>) -> Vec<String> {
    columns.map(|c| c.name.clone()).collect()
}

/// A change referenced a relation oid that no Relation message announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown relation id {rel_id}: no relation message was received for it on this stream")]
pub struct UnknownRelation {
    /// The relation oid.
    pub rel_id: u32,
}

impl RelationCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a Relation message and reports how it relates to the cached one.
    pub fn apply(&mut self, rel: Relation) -> RelationUpdate {
        match self.relations.entry(rel.rel_id) {
            Entry::Vacant(entry) => {
                entry.insert(Arc::new(rel));
                RelationUpdate::New
            }
            Entry::Occupied(entry) if **entry.get() == rel => RelationUpdate::Unchanged,
            Entry::Occupied(mut entry) => {
                let diff = RelationDiff::between(entry.get(), &rel);
                let previous = entry.insert(Arc::new(rel));
                RelationUpdate::Changed { previous, diff }
            }
        }
    }

    /// The description of a relation, if announced.
    pub fn get(&self, rel_id: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&rel_id)
    }

    /// The description of a relation a change refers to; unknown oids are a
    /// protocol violation.
    pub fn require(&self, rel_id: u32) -> Result<&Arc<Relation>, UnknownRelation> {
        self.get(rel_id).ok_or(UnknownRelation { rel_id })
    }

    /// How many relations are known.
    pub fn len(&self) -> usize {
        self.relations.len()
    }

    /// Whether no relation is known.
    pub fn is_empty(&self) -> bool {
        self.relations.is_empty()
    }
}

/// A tuple's column count differs from its relation's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "tuple for relation {namespace}.{name} (oid {rel_id}) has {found} columns but the relation has {expected}"
)]
pub struct TupleShapeError {
    /// The relation oid.
    pub rel_id: u32,
    /// The relation's schema.
    pub namespace: String,
    /// The relation's name.
    pub name: String,
    /// Columns in the relation.
    pub expected: usize,
    /// Values in the tuple.
    pub found: usize,
}

impl Relation {
    /// Checks that `tuple` has exactly one value per column of this relation.
    pub fn check_tuple(&self, tuple: &TupleData) -> Result<(), TupleShapeError> {
        if tuple.columns.len() == self.columns.len() {
            Ok(())
        } else {
            Err(TupleShapeError {
                rel_id: self.rel_id,
                namespace: self.namespace.clone(),
                name: self.name.clone(),
                expected: self.columns.len(),
                found: tuple.columns.len(),
            })
        }
    }

    /// Pairs each column with its value, after [`Relation::check_tuple`].
    pub fn resolve_tuple<'a>(
        &'a self,
        tuple: &'a TupleData,
    ) -> Result<impl Iterator<Item = (&'a RelationColumn, &'a TupleValue)> + 'a, TupleShapeError>
    {
        self.check_tuple(tuple)?;
        Ok(self.columns.iter().zip(&tuple.columns))
    }

    /// The column called `name`, if any.
    pub fn column(&self, name: &str) -> Option<&RelationColumn> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The replica identity key columns, in column order.
    pub fn key_columns(&self) -> impl Iterator<Item = &RelationColumn> {
        self.columns.iter().filter(|c| c.is_key())
    }
}
