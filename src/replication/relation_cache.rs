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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::replication::pgoutput::{
        COLUMN_FLAG_KEY, Decoder, PgOutputMessage, ProtoVersion, fixtures,
    };

    const INT4: u32 = 23;
    const TEXT: u32 = 25;
    const VARCHAR: u32 = 1043;

    fn column(name: &str, type_oid: u32, type_modifier: i32, key: bool) -> RelationColumn {
        let flags = if key { COLUMN_FLAG_KEY } else { 0 };
        RelationColumn { flags, name: name.into(), type_oid, type_modifier }
    }

    /// `public.accounts (id int4 key, name varchar(20), note text)`.
    fn accounts() -> Relation {
        Relation {
            rel_id: 16_400,
            namespace: "public".into(),
            name: "accounts".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                column("id", INT4, -1, true),
                column("name", VARCHAR, 24, false),
                column("note", TEXT, -1, false),
            ],
        }
    }

    /// Applies `changed` over `accounts()` and returns the diff.
    fn diff_after(changed: impl FnOnce(&mut Relation)) -> RelationDiff {
        let mut cache = RelationCache::new();
        assert_eq!(cache.apply(accounts()), RelationUpdate::New);
        let mut rel = accounts();
        changed(&mut rel);
        match cache.apply(rel.clone()) {
            RelationUpdate::Changed { previous, diff } => {
                assert_eq!(*previous, accounts());
                assert_eq!(**cache.get(rel.rel_id).unwrap(), rel, "the new description is cached");
                diff
            }
            other => panic!("expected a change, got {other:?}"),
        }
    }

    #[test]
    fn first_description_is_new_and_a_resend_is_unchanged() {
        let mut cache = RelationCache::new();
        assert!(cache.is_empty());
        assert_eq!(cache.apply(accounts()), RelationUpdate::New);
        let cached = Arc::clone(cache.get(16_400).unwrap());
        assert_eq!(cache.apply(accounts()), RelationUpdate::Unchanged);
        assert!(Arc::ptr_eq(&cached, cache.get(16_400).unwrap()), "unchanged keeps the Arc");
        assert_eq!(cache.len(), 1);
        assert!(cache.get(1).is_none());
    }

    #[test]
    fn added_and_removed_columns_are_reported_by_name() {
        let diff = diff_after(|rel| {
            rel.columns.remove(2);
            rel.columns.push(column("created_at", 1184, -1, false));
            rel.columns.push(column("extra", TEXT, -1, false));
        });
        assert_eq!(
            diff,
            RelationDiff {
                added: vec!["created_at".into(), "extra".into()],
                removed: vec!["note".into()],
                ..RelationDiff::default()
            }
        );
        assert!(diff.columns_changed());
    }

    #[test]
    fn a_renamed_column_is_one_removed_and_one_added() {
        let diff = diff_after(|rel| rel.columns[2].name = "remark".into());
        assert_eq!((diff.added, diff.removed), (vec!["remark".into()], vec!["note".into()]));
    }

    #[test]
    fn type_and_type_modifier_changes_are_retyped_columns() {
        let diff = diff_after(|rel| {
            rel.columns[0].type_oid = 20; // int4 -> int8
            rel.columns[1].type_modifier = 44; // varchar(20) -> varchar(40)
        });
        assert_eq!(diff.retyped, ["id", "name"]);
        assert!(diff.added.is_empty() && diff.removed.is_empty() && !diff.key_changed);
    }

    #[test]
    fn replica_identity_and_key_changes_are_reported() {
        let diff = diff_after(|rel| {
            rel.replica_identity = ReplicaIdentity::Full;
            for column in &mut rel.columns {
                column.flags = COLUMN_FLAG_KEY;
            }
        });
        assert_eq!(diff.replica_identity_from, Some(ReplicaIdentity::Default));
        assert!(diff.key_changed);
        assert!(!diff.columns_changed());

        let diff = diff_after(|rel| {
            rel.replica_identity = ReplicaIdentity::Index;
            rel.columns[0].flags = 0;
            rel.columns[1].flags = COLUMN_FLAG_KEY;
        });
        assert_eq!(diff.replica_identity_from, Some(ReplicaIdentity::Default));
        assert!(diff.key_changed);
    }

    #[test]
    fn renames_and_reorders_are_reported() {
        let diff = diff_after(|rel| {
            rel.namespace = "archive".into();
            rel.name = "old_accounts".into();
        });
        assert_eq!(diff.renamed_from, Some(("public".into(), "accounts".into())));

        let diff = diff_after(|rel| rel.columns.swap(1, 2));
        assert!(diff.reordered && diff.columns_changed());
        assert!(diff.added.is_empty() && diff.removed.is_empty() && diff.retyped.is_empty());
    }

    #[test]
    fn unknown_relations_are_a_typed_error() {
        let cache = RelationCache::new();
        let err = cache.require(42).unwrap_err();
        assert_eq!(err, UnknownRelation { rel_id: 42 });
        assert_eq!(
            err.to_string(),
            "unknown relation id 42: no relation message was received for it on this stream"
        );
    }

    #[test]
    fn tuples_resolve_only_against_a_matching_column_count() {
        let rel = accounts();
        let text = |s: &'static str| TupleValue::Text(Bytes::from_static(s.as_bytes()));
        let tuple = TupleData { columns: vec![text("7"), TupleValue::Null, text("hi")] };
        assert_eq!(rel.check_tuple(&tuple), Ok(()));
        let pairs: Vec<(&str, &TupleValue)> =
            rel.resolve_tuple(&tuple).unwrap().map(|(c, v)| (c.name.as_str(), v)).collect();
        assert_eq!(pairs, [("id", &text("7")), ("name", &TupleValue::Null), ("note", &text("hi"))]);

        for count in [0, 2, 4] {
            let tuple = TupleData { columns: vec![TupleValue::Null; count] };
            let err = rel.check_tuple(&tuple).unwrap_err();
            assert_eq!((err.expected, err.found), (3, count));
            assert!(rel.resolve_tuple(&tuple).is_err());
        }
        let err = rel.check_tuple(&TupleData::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tuple for relation public.accounts (oid 16400) has 0 columns but the relation has 3"
        );
        assert_eq!(rel.key_columns().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["id"]);
        assert_eq!(rel.column("note").map(|c| c.type_oid), Some(TEXT));
    }

    /// Replays the Relation messages of the captured stream through a cache
    /// and checks every change tuple against its relation.
    #[test]
    fn captured_stream_relation_updates() {
        let mut decoder = Decoder::new(ProtoVersion::V1);
        let mut cache = RelationCache::new();
        let mut updates = Vec::new();
        for (lsn, data) in fixtures::parse(fixtures::PGOUTPUT_V1) {
            let message = decoder.decode(data).unwrap();
            let (rel_id, tuples) = match &message {
                PgOutputMessage::Relation(rel) => {
                    let name = rel.name.clone();
                    updates.push((name, cache.apply(rel.clone())));
                    continue;
                }
                PgOutputMessage::Insert(m) => (m.rel_id, vec![&m.new_tuple]),
                PgOutputMessage::Update(m) => {
                    (m.rel_id, m.old_tuple.iter().map(|o| &o.tuple).chain([&m.new_tuple]).collect())
                }
                PgOutputMessage::Delete(m) => (m.rel_id, vec![&m.old_tuple.tuple]),
                PgOutputMessage::Truncate(t) => {
                    for rel_id in &t.rel_ids {
                        cache.require(*rel_id).unwrap();
                    }
                    continue;
                }
                _ => continue,
            };
            let rel = cache.require(rel_id).unwrap();
            for tuple in tuples {
                rel.check_tuple(tuple).unwrap_or_else(|err| panic!("{lsn}: {err}"));
            }
        }

        let summary: Vec<String> = updates
            .iter()
            .map(|(name, update)| match update {
                RelationUpdate::New => format!("{name} new"),
                RelationUpdate::Unchanged => format!("{name} unchanged"),
                RelationUpdate::Changed { .. } => format!("{name} changed"),
            })
            .collect();
        assert_eq!(
            summary,
            [
                "kinds new",
                "full_ident new",
                "parent new",
                "child new",
                "kinds changed",
                "child changed",
                "counters new",
                // TRUNCATE and a replication-origin transaction re-send
                // identical descriptions.
                "parent unchanged",
                "child unchanged",
                "counters unchanged",
                "counters unchanged",
                "full_ident unchanged",
                "counters unchanged",
            ]
        );

        let RelationUpdate::Changed { previous, diff } = &updates[4].1 else {
            panic!("ADD COLUMN changes kinds");
        };
        assert_eq!(previous.columns.len(), 16);
        assert_eq!(
            diff,
            &RelationDiff { added: vec!["extra".into()], ..RelationDiff::default() },
            "ADD COLUMN"
        );

        let RelationUpdate::Changed { diff, .. } = &updates[5].1 else {
            panic!("REPLICA IDENTITY FULL changes child");
        };
        assert_eq!(
            diff,
            &RelationDiff {
                replica_identity_from: Some(ReplicaIdentity::Default),
                key_changed: true,
                ..RelationDiff::default()
            },
            "REPLICA IDENTITY FULL"
        );
    }
}
