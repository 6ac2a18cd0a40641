//! Row-level diff of one small key range or key set: both sides' rows as
//! fetched (key, per verified column a hash and an abbreviated text), paired
//! by key. Pure.

use std::collections::HashMap;

use crate::state::verify::{ColumnDiff, DiffKind};

/// One verified value as fetched for a diff: the hash of its canonical
/// text, and an abbreviated text (`None` for NULL).
pub type ValueImage = (Option<i64>, Option<String>);

/// One row as a side sent it for a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowImage {
    /// Text output of each key column.
    pub key: Vec<String>,
    /// The source row's version (`xmin`); `None` on the target.
    pub version: Option<String>,
    /// Whether the row passes the mapping's filter (always true on the
    /// target): a source row that does not is absent from `transform(source)`.
    pub keep: bool,
    /// Per verified column: hash of its canonical text, and an abbreviated
    /// text (`None` for NULL).
    pub values: Vec<ValueImage>,
}

/// A difference found by one read of both sides, not yet confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The key.
    pub key: Vec<String>,
    /// Its kind.
    pub kind: DiffKind,
    /// Differing columns of a `different` row.
    pub columns: Vec<ColumnDiff>,
    /// The source row's version when read (`None`: no source row).
    pub source_version: Option<String>,
    /// The target row's value hashes when read (`None`: no target row).
    pub target_fingerprint: Option<Vec<Option<i64>>>,
}

impl Candidate {
    /// Whether two reads saw the same difference with neither side changed
    /// in between.
    pub fn same_as(&self, other: &Candidate) -> bool {
        self.key == other.key
            && self.kind == other.kind
            && self.source_version == other.source_version
            && self.target_fingerprint == other.target_fingerprint
    }
}

/// Pairs `source` and `target` rows by key and returns every difference;
/// `names` are the verified column names (in value order).
pub fn diff(source: &[RowImage], target: &[RowImage], names: &[String]) -> Vec<Candidate> {
    let targets: HashMap<&[String], &RowImage> =
        target.iter().map(|r| (r.key.as_slice(), r)).collect();
    let mut seen: HashMap<&[String], ()> = HashMap::new();
    let mut out = Vec::new();
    for s in source {
        seen.insert(s.key.as_slice(), ());
        let t = targets.get(s.key.as_slice()).copied();
        let fingerprint = t.map(|t| t.values.iter().map(|v| v.0).collect());
        match (s.keep, t) {
            (true, None) => out.push(Candidate {
                key: s.key.clone(),
                kind: DiffKind::Missing,
                columns: Vec::new(),
                source_version: s.version.clone(),
                target_fingerprint: None,
            }),
            (false, Some(_)) => out.push(Candidate {
                key: s.key.clone(),
                kind: DiffKind::Extra,
                columns: Vec::new(),
                source_version: s.version.clone(),
                target_fingerprint: fingerprint,
            }),
            (true, Some(t)) => {
                let columns: Vec<ColumnDiff> = s
                    .values
                    .iter()
                    .zip(&t.values)
                    .zip(names)
                    .filter(|((sv, tv), _)| sv.0 != tv.0)
                    .map(|((sv, tv), name)| ColumnDiff {
                        column: name.clone(),
                        source: sv.1.clone(),
                        target: tv.1.clone(),
                    })
                    .collect();
                if !columns.is_empty() || s.values.len() != t.values.len() {
                    out.push(Candidate {
                        key: s.key.clone(),
                        kind: DiffKind::Different,
                        columns,
                        source_version: s.version.clone(),
                        target_fingerprint: fingerprint,
                    });
                }
            }
            (false, None) => {}
        }
    }
    for t in target {
        if !seen.contains_key(t.key.as_slice()) {
            out.push(Candidate {
                key: t.key.clone(),
                kind: DiffKind::Extra,
                columns: Vec::new(),
                source_version: None,
                target_fingerprint: Some(t.values.iter().map(|v| v.0).collect()),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, version: Option<&str>, keep: bool, values: &[(i64, &str)]) -> RowImage {
        RowImage {
            key: vec![key.to_owned()],
            version: version.map(str::to_owned),
            keep,
            values: values.iter().map(|(h, t)| (Some(*h), Some((*t).to_owned()))).collect(),
        }
    }

    #[test]
    fn finds_every_kind() {
        let names = vec!["id".to_owned(), "amount".to_owned()];
        let source = vec![
            row("1", Some("100"), true, &[(1, "1"), (10, "1.5")]),
            row("2", Some("101"), true, &[(2, "2"), (20, "2")]),
            row("3", Some("102"), true, &[(3, "3"), (30, "3")]),
            row("5", Some("103"), false, &[(5, "5"), (50, "5")]),
        ];
        let target = vec![
            row("1", None, true, &[(1, "1"), (10, "1.5")]),
            row("2", None, true, &[(2, "2"), (21, "2.01")]),
            row("4", None, true, &[(4, "4"), (40, "4")]),
            row("5", None, true, &[(5, "5"), (50, "5")]),
        ];
        let d = diff(&source, &target, &names);
        let kinds: Vec<(&str, DiffKind)> = d.iter().map(|c| (c.key[0].as_str(), c.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("2", DiffKind::Different),
                ("3", DiffKind::Missing),
                ("5", DiffKind::Extra),
                ("4", DiffKind::Extra)
            ]
        );
        assert_eq!(
            d[0].columns,
            vec![ColumnDiff {
                column: "amount".into(),
                source: Some("2".into()),
                target: Some("2.01".into())
            }]
        );
        assert_eq!(d[2].source_version.as_deref(), Some("103"));
        assert!(d[3].source_version.is_none());
    }

    #[test]
    fn null_and_empty_string_differ() {
        let names = vec!["note".to_owned()];
        let source = vec![RowImage {
            key: vec!["1".into()],
            version: Some("9".into()),
            keep: true,
            values: vec![(None, None)],
        }];
        let target = vec![RowImage {
            key: vec!["1".into()],
            version: None,
            keep: true,
            values: vec![(Some(0), Some(String::new()))],
        }];
        let d = diff(&source, &target, &names);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].columns[0].source, None);
        assert_eq!(d[0].columns[0].target.as_deref(), Some(""));
    }

    #[test]
    fn stability_needs_both_sides_unchanged() {
        let a = Candidate {
            key: vec!["1".into()],
            kind: DiffKind::Different,
            columns: vec![],
            source_version: Some("7".into()),
            target_fingerprint: Some(vec![Some(1)]),
        };
        let mut b = a.clone();
        assert!(a.same_as(&b));
        b.source_version = Some("8".into());
        assert!(!a.same_as(&b));
        let mut c = a.clone();
        c.target_fingerprint = Some(vec![Some(2)]);
        assert!(!a.same_as(&c));
    }
}
