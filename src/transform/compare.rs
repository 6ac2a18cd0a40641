//! The SQL verification runs on each side, built from the same mapping
//! expressions apply writes with ([`crate::transform::sql`]).
//!
//! Per row, both sides compute one 64-bit hash of the *verified* target
//! columns, canonicalized so values equal after the cast hash equally:
//!
//! ```sql
//! -- source: transform(source), each expression cast to the target column's type
//! hashtextextended(row(trim_scale(((amount_cents / 100.0))::numeric(12,2)), ...)::text, 0)
//! -- target: the stored columns
//! hashtextextended(row(trim_scale(t."amount"), ...)::text, 0)
//! ```
//!
//! and a chunk is `count(*)` plus the `sum` of those hashes (an exact
//! `numeric`, so order does not matter and a duplicated row does not cancel
//! out as it would under XOR). A record's text output quotes every field
//! and prints NULL as nothing, so NULL and `''` differ.
//!
//! Canonical forms: `numeric` without trailing zeros (`1.5` = `1.50`),
//! floats plus zero (`-0` = `0`), `timestamptz` at UTC (any session time
//! zone); `jsonb` is canonical already. The session settings that change
//! other text forms (`DateStyle`, `IntervalStyle`, `extra_float_digits`,
//! `bytea_output`, `TimeZone` for expressions) are set alike on both
//! sessions by the verifier.
//!
//! Key ranges are `(k1, k2) > ($1, $2) and (k1, k2) <= ($3, $4)` in each
//! side's own order when the key columns' collations agree; otherwise every
//! collatable key column is compared `collate "C"` on both sides, so both
//! sides cut the key space at the same places (Vitess once reported false
//! "extra rows" from ranges cut under two collations).
//!
//! A table whose expressions cannot run on the source (a function that
//! exists only on the target) is verified by *shipping*: the source's input
//! columns are read as text, and the target evaluates the expressions over
//! them with the same row source apply uses ([`sql::input_cte`]).

use crate::pg::sql::{Ident, QualifiedName};
use crate::transform::TablePlan;
use crate::transform::sql::{self, RowSource};

/// Characters of a value kept for a difference report.
pub const VALUE_PREFIX_CHARS: usize = 200;

/// How a verified value is canonicalized before hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canon {
    /// Its text output as is.
    Plain,
    /// `numeric`: trailing zeros removed.
    Numeric,
    /// `real`: plus zero (turns `-0` into `0`).
    Float4,
    /// `double precision`: plus zero.
    Float8,
    /// `timestamptz`: at UTC.
    Timestamptz,
}

impl Canon {
    /// The canonical form for a target column whose type (or a domain's
    /// base type) has oid `base_type`.
    pub fn for_type(base_type: u32) -> Canon {
        match base_type {
            1700 => Canon::Numeric,
            700 => Canon::Float4,
            701 => Canon::Float8,
            1184 => Canon::Timestamptz,
            _ => Canon::Plain,
        }
    }

    fn apply(self, value: &str) -> String {
        match self {
            Canon::Plain => value.to_owned(),
            Canon::Numeric => format!("trim_scale({value})"),
            Canon::Float4 => format!("({value} + 0::real)"),
            Canon::Float8 => format!("({value} + 0::float8)"),
            Canon::Timestamptz => format!("({value} at time zone 'UTC')"),
        }
    }
}

/// A verified target column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareColumn {
    /// Target column.
    pub name: Ident,
    /// The mapping expression (over source column names).
    pub expr: String,
    /// The target column's type with modifier (`numeric(12,2)`).
    pub target_type: String,
    /// Its canonical form.
    pub canon: Canon,
}

/// Where a statement finds the rows to compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A key range: parameters are the lower bound's key values (exclusive,
    /// when `lo`) then the upper bound's (inclusive, when `hi`), as text.
    Range {
        /// Has a lower bound.
        lo: bool,
        /// Has an upper bound.
        hi: bool,
    },
    /// A set of keys: one `text[]` parameter per key column.
    Keys,
}

/// One table's comparison, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareTable {
    /// The table's plan.
    pub plan: TablePlan,
    /// Verified target columns (keys included), in output order.
    pub columns: Vec<CompareColumn>,
    /// Per key column: compare `collate "C"` (collatable, and the two sides'
    /// collations differ).
    pub collate_c: Vec<bool>,
    /// The expressions cannot run on the source: ship the inputs.
    pub ship: bool,
}

fn key_ref(alias: &str, col: &Ident, collate_c: bool) -> String {
    if collate_c { format!("{alias}.{col} collate \"C\"") } else { format!("{alias}.{col}") }
}

impl CompareTable {
    /// Source key columns (plan key order).
    fn source_keys(&self) -> Vec<&Ident> {
        self.plan.key_inputs.iter().map(|&k| &self.plan.inputs[k].name).collect()
    }

    fn key_types(&self) -> Vec<&str> {
        self.plan.key_inputs.iter().map(|&k| self.plan.inputs[k].cast_type.as_str()).collect()
    }

    fn key_list(&self, alias: &str, target: bool) -> Vec<String> {
        let cols: Vec<&Ident> =
            if target { self.plan.target_key_columns().collect() } else { self.source_keys() };
        cols.iter().zip(&self.collate_c).map(|(c, &cc)| key_ref(alias, c, cc)).collect()
    }

    /// `order by` of a side.
    fn order_by(&self, alias: &str, target: bool) -> String {
        self.key_list(alias, target).join(", ")
    }

    /// Key columns as text, for reports and cursors.
    fn key_texts(&self, alias: &str, target: bool) -> Vec<String> {
        let cols: Vec<&Ident> =
            if target { self.plan.target_key_columns().collect() } else { self.source_keys() };
        cols.iter().map(|c| format!("{alias}.{c}::text")).collect()
    }

    fn param(&self, n: usize, j: usize) -> String {
        let ty = self.key_types()[j];
        if self.collate_c[j] {
            format!("${n}::text::{ty} collate \"C\"")
        } else {
            format!("${n}::text::{ty}")
        }
    }

    /// `where` conditions of `scope` over `alias`; the number of parameters.
    fn scope_where(&self, alias: &str, target: bool, scope: Scope) -> (String, String, usize) {
        let k = self.plan.key_inputs.len();
        match scope {
            Scope::Range { lo, hi } => {
                let keys = format!("({})", self.key_list(alias, target).join(", "));
                let mut conds = Vec::new();
                let mut n = 0;
                if lo {
                    let vals: Vec<String> = (0..k).map(|j| self.param(n + j + 1, j)).collect();
                    conds.push(format!("{keys} > ({})", vals.join(", ")));
                    n += k;
                }
                if hi {
                    let vals: Vec<String> = (0..k).map(|j| self.param(n + j + 1, j)).collect();
                    conds.push(format!("{keys} <= ({})", vals.join(", ")));
                    n += k;
                }
                (String::new(), conds.join(" and "), n)
            }
            Scope::Keys => {
                let cols: Vec<&Ident> = if target {
                    self.plan.target_key_columns().collect()
                } else {
                    self.source_keys()
                };
                let types = self.key_types();
                let mut sel = Vec::new();
                let mut arrays = Vec::new();
                let mut names = Vec::new();
                let mut on = Vec::new();
                for (j, col) in cols.iter().enumerate() {
                    sel.push(format!("u.k{j}::{} as k{j}", types[j]));
                    arrays.push(format!("${}::text[]", j + 1));
                    names.push(format!("k{j}"));
                    on.push(format!("{alias}.{col} = kk.k{j}"));
                }
                let join = format!(
                    " join (select distinct {} from unnest({}) as u({})) as kk on {}",
                    sel.join(", "),
                    arrays.join(", "),
                    names.join(", "),
                    on.join(" and ")
                );
                (join, String::new(), k)
            }
        }
    }

    /// Canonical verified values of `transform(source)`, over bare source
    /// column names (the source table aliased, or the shipped row source).
    fn source_values(&self) -> Vec<String> {
        self.columns
            .iter()
            .map(|c| c.canon.apply(&format!("(({})::{})", c.expr, c.target_type)))
            .collect()
    }

    fn target_values(&self, alias: &str) -> Vec<String> {
        self.columns.iter().map(|c| c.canon.apply(&format!("{alias}.{}", c.name))).collect()
    }

    fn filter(&self) -> Option<String> {
        self.plan.filter.as_ref().map(|f| format!("coalesce(({}), false)", f.expr))
    }

    fn where_clause(conds: &[String]) -> String {
        let conds: Vec<&String> = conds.iter().filter(|c| !c.is_empty()).collect();
        if conds.is_empty() {
            String::new()
        } else {
            format!(" where {}", conds.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(" and "))
        }
    }

    /// `count(*)` and the hash sum of `transform(source)` over `scope`,
    /// evaluated on the source.
    pub fn source_hash(&self, scope: Scope) -> String {
        let (join, cond, _) = self.scope_where("s", false, scope);
        let mut conds = vec![cond];
        conds.extend(self.filter());
        format!(
            "select count(*), coalesce(sum(hashtextextended(row({})::text, 0)), 0)::text \
             from {} as s{join}{}",
            self.source_values().join(", "),
            self.plan.source,
            Self::where_clause(&conds)
        )
    }

    /// `count(*)` and the hash sum of the target's rows over `scope`.
    pub fn target_hash(&self, scope: Scope) -> String {
        let (join, cond, _) = self.scope_where("t", true, scope);
        format!(
            "select count(*), coalesce(sum(hashtextextended(row({})::text, 0)), 0)::text \
             from {} as t{join}{}",
            self.target_values("t").join(", "),
            self.plan.target,
            Self::where_clause(&[cond])
        )
    }

    /// The key of the source row at offset `$n` after the lower bound
    /// (`$1..$k` when `lo`, then the offset): the upper bound of a chunk.
    pub fn source_boundary(&self, lo: bool) -> String {
        let (_, cond, n) = self.scope_where("s", false, Scope::Range { lo, hi: false });
        format!(
            "select {} from {} as s{} order by {} offset ${} limit 1",
            self.key_texts("s", false).join(", "),
            self.plan.source,
            Self::where_clause(&[cond]),
            self.order_by("s", false),
            n + 1
        )
    }

    /// The keys of a side over `scope`, in key order, at most `$n`: where
    /// to split a mismatching range.
    pub fn keys(&self, scope: Scope, target: bool) -> String {
        let (alias, table) =
            if target { ("t", &self.plan.target) } else { ("s", &self.plan.source) };
        let (join, cond, n) = self.scope_where(alias, target, scope);
        format!(
            "select {} from {} as {alias}{join}{} order by {} limit ${}",
            self.key_texts(alias, target).join(", "),
            table,
            Self::where_clause(&[cond]),
            self.order_by(alias, target),
            n + 1
        )
    }

    /// Per verified value: its hash and an abbreviated text.
    fn value_columns(values: &[String]) -> Vec<String> {
        values
            .iter()
            .map(|v| {
                format!("hashtextextended(({v})::text, 0), left(({v})::text, {VALUE_PREFIX_CHARS})")
            })
            .collect()
    }

    /// Source rows over `scope` for a diff: key texts, the row version
    /// (`xmin`), whether it passes the filter, then per verified column its
    /// hash and abbreviated text; ordered by key, at most `$n` (the last
    /// parameter) rows.
    pub fn source_rows(&self, scope: Scope) -> String {
        let (join, cond, n) = self.scope_where("s", false, scope);
        let keep = self.filter().unwrap_or_else(|| "true".into());
        format!(
            "select {}, s.xmin::text, {keep}, {} from {} as s{join}{} order by {} limit ${}",
            self.key_texts("s", false).join(", "),
            Self::value_columns(&self.source_values()).join(", "),
            self.plan.source,
            Self::where_clause(&[cond]),
            self.order_by("s", false),
            n + 1
        )
    }

    /// Target rows over `scope` for a diff: key texts, then per verified
    /// column its hash and abbreviated text; ordered by key, at most `$n`.
    pub fn target_rows(&self, scope: Scope) -> String {
        let (join, cond, n) = self.scope_where("t", true, scope);
        format!(
            "select {}, {} from {} as t{join}{} order by {} limit ${}",
            self.key_texts("t", true).join(", "),
            Self::value_columns(&self.target_values("t")).join(", "),
            self.plan.target,
            Self::where_clause(&[cond]),
            self.order_by("t", true),
            n + 1
        )
    }

    /// For shipping: the source rows' inputs as text over `scope`, then the
    /// key texts and `xmin`; ordered by key, at most `$n` rows.
    pub fn source_inputs(&self, scope: Scope) -> String {
        let (join, cond, n) = self.scope_where("s", false, scope);
        let inputs: Vec<String> =
            self.plan.inputs.iter().map(|i| format!("s.{}::text", i.name)).collect();
        format!(
            "select {}, {}, s.xmin::text from {} as s{join}{} order by {} limit ${}",
            inputs.join(", "),
            self.key_texts("s", false).join(", "),
            self.plan.source,
            Self::where_clause(&[cond]),
            self.order_by("s", false),
            n + 1
        )
    }

    /// For shipping, on the target: `count(*)` and the hash sum of
    /// `transform(rows)` for rows given as one `text[]` per input.
    pub fn shipped_hash(&self) -> String {
        let cte = sql::input_cte(&self.plan, false, &RowSource::Arrays(&[]));
        let filter = self.filter().map(|f| format!(" where {f}")).unwrap_or_default();
        format!(
            "with {cte} select count(*), coalesce(sum(hashtextextended(row({})::text, 0)), 0)::text \
             from s{filter}",
            self.source_values().join(", ")
        )
    }

    /// For shipping, on the target: per shipped row (in the order given),
    /// whether it passes the filter, then per verified column its hash and
    /// abbreviated text.
    pub fn shipped_rows(&self) -> String {
        let cte = sql::input_cte(&self.plan, false, &RowSource::Arrays(&[]));
        let keep = self.filter().unwrap_or_else(|| "true".into());
        format!(
            "with {cte} select {keep}, {} from s",
            Self::value_columns(&self.source_values()).join(", ")
        )
    }

    /// Probe that the source can evaluate the expressions (prepared, never
    /// run): when it cannot, the table is verified by shipping.
    pub fn source_probe(&self) -> String {
        self.source_hash(Scope::Range { lo: false, hi: false })
    }

    /// Number of key columns.
    pub fn key_len(&self) -> usize {
        self.plan.key_inputs.len()
    }

    /// The source table.
    pub fn source_name(&self) -> &QualifiedName {
        &self.plan.source
    }

    /// Verified column names, in hash order.
    pub fn column_names(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.name.readable().into_owned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::plan::{Input, Output};

    fn table(collate_c: bool) -> CompareTable {
        let plan = TablePlan {
            index: 0,
            source: QualifiedName::parse("public.usage_events").unwrap(),
            target: QualifiedName::parse("billing_new.usage_events").unwrap(),
            inputs: vec![
                Input { name: Ident::new("id"), cast_type: "bigint".into(), type_oid: 20 },
                Input {
                    name: Ident::new("amount_cents"),
                    cast_type: "bigint".into(),
                    type_oid: 20,
                },
            ],
            key_inputs: vec![0],
            outputs: vec![
                Output { column: Ident::new("id"), expr: "id".into(), deps: vec![0], verify: true },
                Output {
                    column: Ident::new("amount"),
                    expr: "amount_cents / 100.0".into(),
                    deps: vec![1],
                    verify: true,
                },
            ],
            target_key: vec![0],
            filter: Some(crate::transform::plan::Filter {
                expr: "amount_cents > 0".into(),
                deps: vec![1],
            }),
            truncate: true,
        };
        CompareTable {
            columns: vec![
                CompareColumn {
                    name: Ident::new("id"),
                    expr: "id".into(),
                    target_type: "bigint".into(),
                    canon: Canon::Plain,
                },
                CompareColumn {
                    name: Ident::new("amount"),
                    expr: "amount_cents / 100.0".into(),
                    target_type: "numeric(12,2)".into(),
                    canon: Canon::Numeric,
                },
            ],
            plan,
            collate_c: vec![collate_c],
            ship: false,
        }
    }

    #[test]
    fn hashes_cast_expressions_on_the_source_and_columns_on_the_target() {
        let t = table(false);
        assert_eq!(
            t.source_hash(Scope::Range { lo: true, hi: true }),
            "select count(*), coalesce(sum(hashtextextended(row(((id)::bigint), \
             trim_scale(((amount_cents / 100.0)::numeric(12,2))))::text, 0)), 0)::text \
             from \"public\".\"usage_events\" as s where (s.\"id\") > ($1::text::bigint) and \
             (s.\"id\") <= ($2::text::bigint) and coalesce((amount_cents > 0), false)"
        );
        assert_eq!(
            t.target_hash(Scope::Range { lo: false, hi: true }),
            "select count(*), coalesce(sum(hashtextextended(row(t.\"id\", \
             trim_scale(t.\"amount\"))::text, 0)), 0)::text \
             from \"billing_new\".\"usage_events\" as t where (t.\"id\") <= ($1::text::bigint)"
        );
    }

    #[test]
    fn key_sets_join_unnested_arrays() {
        let t = table(false);
        let sql = t.target_hash(Scope::Keys);
        assert!(sql.contains(
            "join (select distinct u.k0::bigint as k0 from unnest($1::text[]) as u(k0)) as kk \
             on t.\"id\" = kk.k0"
        ));
    }

    #[test]
    fn differing_collations_compare_in_c_order() {
        let t = table(true);
        let sql = t.source_boundary(true);
        assert_eq!(
            sql,
            "select s.\"id\"::text from \"public\".\"usage_events\" as s where \
             (s.\"id\" collate \"C\") > ($1::text::bigint collate \"C\") \
             order by s.\"id\" collate \"C\" offset $2 limit 1"
        );
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(Canon::for_type(1700).apply("x"), "trim_scale(x)");
        assert_eq!(Canon::for_type(701).apply("x"), "(x + 0::float8)");
        assert_eq!(Canon::for_type(1184).apply("x"), "(x at time zone 'UTC')");
        assert_eq!(Canon::for_type(25).apply("x"), "x");
    }
}
