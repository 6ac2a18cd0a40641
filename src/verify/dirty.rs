//! Keys the stream changed since they were last verified, per table, with a
//! memory bound; and *watched* keys (differences being confirmed) with a
//! flag the applier sets when it changes one.
//!
//! Filled by [`crate::verify::hook`] from the changes the applier applies;
//! drained by incremental passes. Past [`DirtyKeys::capacity`] keys in all,
//! a table is marked *overflowed* and its set dropped: its next pass is a
//! full one. A TRUNCATE overflows its table at once.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::change::TableIdx;

/// Default bound of dirty keys kept (over all tables): about 100 bytes
/// each, so about 20 MB at most.
pub const DEFAULT_CAPACITY: usize = 200_000;

#[derive(Debug, Default)]
struct TableDirty {
    keys: HashSet<Vec<String>>,
    overflowed: bool,
}

#[derive(Debug, Default)]
struct State {
    tables: Vec<TableDirty>,
    total: usize,
    watched: HashMap<(TableIdx, Vec<String>), bool>,
}

/// What changed in a table since it was last drained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dirty {
    /// These keys.
    Keys(Vec<Vec<String>>),
    /// Too many to keep, or a TRUNCATE: every key.
    All,
}

/// Dirty and watched keys, shared between the applier's hook and the
/// verifier.
#[derive(Debug)]
pub struct DirtyKeys {
    state: Mutex<State>,
    capacity: usize,
}

impl DirtyKeys {
    /// Keys of `tables` tables, at most `capacity` in all.
    pub fn new(tables: usize, capacity: usize) -> Self {
        let state = State {
            tables: (0..tables).map(|_| TableDirty::default()).collect(),
            ..State::default()
        };
        DirtyKeys { state: Mutex::new(state), capacity }
    }

    /// Most keys kept over all tables.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The stream changed `key` of `table`.
    pub fn touch(&self, table: TableIdx, key: Vec<String>) {
        let Ok(mut s) = self.state.lock() else { return };
        if !s.watched.is_empty() {
            if let Some(flag) = s.watched.get_mut(&(table, key.clone())) {
                *flag = true;
            }
        }
        let over = s.total >= self.capacity;
        let Some(t) = s.tables.get_mut(table) else { return };
        if t.overflowed {
            return;
        }
        if over {
            let dropped = t.keys.len();
            t.keys = HashSet::new();
            t.overflowed = true;
            s.total -= dropped;
            return;
        }
        if t.keys.insert(key) {
            s.total += 1;
        }
    }

    /// Every key of `table` changed (TRUNCATE).
    pub fn touch_all(&self, table: TableIdx) {
        let Ok(mut s) = self.state.lock() else { return };
        for flag in s.watched.iter_mut().filter(|((t, _), _)| *t == table).map(|(_, f)| f) {
            *flag = true;
        }
        if let Some(t) = s.tables.get_mut(table) {
            let dropped = t.keys.len();
            t.keys = HashSet::new();
            t.overflowed = true;
            s.total -= dropped;
        }
    }

    /// How many changed keys of `table` wait for the next pass; `None` when
    /// too many were changed to keep (the next pass is a full one).
    pub fn pending(&self, table: TableIdx) -> Option<usize> {
        let s = self.state.lock().ok()?;
        let t = s.tables.get(table)?;
        (!t.overflowed).then_some(t.keys.len())
    }

    /// Takes what changed in `table` since the last take.
    pub fn take(&self, table: TableIdx) -> Dirty {
        let Ok(mut s) = self.state.lock() else { return Dirty::All };
        let Some(t) = s.tables.get_mut(table) else { return Dirty::All };
        let keys = std::mem::take(&mut t.keys);
        let overflowed = std::mem::replace(&mut t.overflowed, false);
        s.total -= keys.len();
        if overflowed { Dirty::All } else { Dirty::Keys(keys.into_iter().collect()) }
    }

    /// Watches `keys` of `table` (clearing their flags).
    pub fn watch(&self, table: TableIdx, keys: &[Vec<String>]) {
        if let Ok(mut s) = self.state.lock() {
            for k in keys {
                s.watched.insert((table, k.clone()), false);
            }
        }
    }

    /// Whether the stream changed `key` of `table` since it was watched.
    pub fn touched(&self, table: TableIdx, key: &[String]) -> bool {
        self.state
            .lock()
            .map(|s| s.watched.get(&(table, key.to_vec())).copied().unwrap_or(true))
            .unwrap_or(true)
    }

    /// Stops watching `keys` of `table`.
    pub fn unwatch(&self, table: TableIdx, keys: &[Vec<String>]) {
        if let Ok(mut s) = self.state.lock() {
            for k in keys {
                s.watched.remove(&(table, k.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Vec<String> {
        vec![k.to_owned()]
    }

    #[test]
    fn takes_what_changed_since_the_last_take() {
        let d = DirtyKeys::new(2, 10);
        d.touch(0, key("1"));
        d.touch(0, key("1"));
        d.touch(1, key("2"));
        assert_eq!(d.take(0), Dirty::Keys(vec![key("1")]));
        assert_eq!(d.take(0), Dirty::Keys(vec![]));
        assert_eq!(d.take(1), Dirty::Keys(vec![key("2")]));
    }

    #[test]
    fn overflow_and_truncate_make_the_table_fully_dirty_once() {
        let d = DirtyKeys::new(2, 3);
        for k in ["1", "2", "3", "4"] {
            d.touch(0, key(k));
        }
        d.touch(1, key("x"));
        assert_eq!(d.take(0), Dirty::All);
        assert_eq!(d.take(0), Dirty::Keys(vec![]));
        assert_eq!(d.take(1), Dirty::Keys(vec![key("x")]));
        d.touch_all(1);
        assert_eq!(d.take(1), Dirty::All);
    }

    #[test]
    fn watched_keys_record_a_touch() {
        let d = DirtyKeys::new(1, 10);
        d.watch(0, &[key("7")]);
        assert!(!d.touched(0, &key("7")));
        d.touch(0, key("8"));
        assert!(!d.touched(0, &key("7")));
        d.touch(0, key("7"));
        assert!(d.touched(0, &key("7")));
        d.unwatch(0, &[key("7")]);
        assert!(d.touched(0, &key("7")), "an unwatched key counts as touched");
    }
}
