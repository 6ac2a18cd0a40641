//! The transform plan: each `[[tables]]` mapping compiled once, at start-up,
//! against the source and target catalogs.
//!
//! Expressions are SQL that the *target* evaluates inside the apply
//! statements, so compiling means asking the target: every expression is
//! prepared (never executed) inside an `INSERT` into its target column over
//! a typed stand-in for the source row,
//!
//! ```sql
//! insert into "billing_new"."usage_events" ("amount")
//! select (amount_cents / 100.0) from (select null::bigint as "id", ...) as s
//! ```
//!
//! which fails exactly when the expression does not parse, names a missing
//! column or function, or yields a type that cannot be assigned to the
//! column. Each failure becomes a [`CheckFailure`] naming the table and the
//! column, and nothing is created.
//!
//! The plan also learns which source columns each expression reads (its
//! *dependencies*), again from the target's parser: an expression depends on
//! column `c` if it no longer compiles once `c` is removed from the stand-in
//! row. Dependencies decide which source columns are shipped to the target at
//! all (the plan's *inputs*) and what an UPDATE whose TOASTed column arrived
//! unchanged may leave alone (see [`TablePlan::untouched_outputs`]).

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;

use tokio_postgres::Client;

use crate::checks::{CheckFailure, CheckFailures};
use crate::config::{ValidatedConfig, ValidatedTable};
use crate::pg::catalog::{self, TableInfo};
use crate::pg::sql::{Ident, QualifiedName};

/// SQLSTATE `undefined_column`.
const UNDEFINED_COLUMN: &str = "42703";

/// A source column the mapping reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Column name.
    pub name: Ident,
    /// Type the text value is cast to on the target (no modifier).
    pub cast_type: String,
    /// Type oid on the source (for drift detection).
    pub type_oid: u32,
}

/// A target column and the expression that fills it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Target column name.
    pub column: Ident,
    /// SQL expression over the source columns.
    pub expr: String,
    /// Inputs (indexes into [`TablePlan::inputs`]) the expression reads.
    pub deps: Vec<usize>,
    /// Whether verification compares this column.
    pub verify: bool,
}

/// A row predicate over the source columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// SQL boolean expression.
    pub expr: String,
    /// Inputs it reads.
    pub deps: Vec<usize>,
}

/// One compiled table mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePlan {
    /// Position in the config (and in [`Plan::tables`]).
    pub index: usize,
    /// Source table.
    pub source: QualifiedName,
    /// Target table.
    pub target: QualifiedName,
    /// Source columns shipped to the target, in source column order.
    pub inputs: Vec<Input>,
    /// The source key columns, as indexes into `inputs`, in key order.
    pub key_inputs: Vec<usize>,
    /// Target columns, in config order.
    pub outputs: Vec<Output>,
    /// The target key columns (indexes into `outputs`), aligned with
    /// `key_inputs`: `outputs[target_key[i]]` is a copy of `inputs[key_inputs[i]]`.
    pub target_key: Vec<usize>,
    /// Optional row filter.
    pub filter: Option<Filter>,
    /// Whether a source TRUNCATE truncates the target.
    pub truncate: bool,
}

/// Why a mapping could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The mapping is wrong (bad input: exit 2, nothing created).
    #[error("{0}")]
    Checks(CheckFailures),
    /// A catalog read or a probe failed for another reason than the
    /// mapping (a connection problem).
    #[error("{context}: {}", crate::pg::client::server_message(source))]
    Sql {
        /// What it was doing.
        context: &'static str,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl PlanError {
    fn sql(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PlanError {
        move |source| PlanError::Sql { context, source }
    }
}

/// An UPDATE arrived with an unchanged TOAST value that a target column
/// needs together with other, possibly changed, columns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "an update of {source_table} left the TOASTed column {source_column} unchanged, so its value \
     was not sent, but {target} also depends on other columns and cannot be recomputed without it: \
     ALTER TABLE {source_table} REPLICA IDENTITY FULL (the old row then carries the value)"
)]
pub struct MissingToast {
    /// The source table.
    pub source_table: String,
    /// The source column whose value is missing.
    pub source_column: String,
    /// The target column or filter that needs it.
    pub target: String,
}

impl TablePlan {
    /// Outputs an UPDATE must leave alone because every input they read
    /// arrived as unchanged TOAST (so their value did not change either).
    /// Fails when an output, or the filter, reads both an unchanged TOAST
    /// input and other inputs. `unchanged` flags inputs by index.
    pub fn untouched_outputs(&self, unchanged: &[bool]) -> Result<Vec<usize>, MissingToast> {
        let mut untouched = Vec::new();
        let missing = |deps: &[usize], target: String| {
            let col = deps.iter().find(|&&d| unchanged.get(d).copied().unwrap_or(false));
            MissingToast {
                source_table: self.source.readable(),
                source_column: col
                    .map(|&d| self.inputs[d].name.readable().into_owned())
                    .unwrap_or_default(),
                target,
            }
        };
        for (i, out) in self.outputs.iter().enumerate() {
            let n_unchanged =
                out.deps.iter().filter(|&&d| unchanged.get(d).copied().unwrap_or(false)).count();
            if n_unchanged == 0 {
                continue;
            }
            if n_unchanged < out.deps.len() || self.target_key.contains(&i) {
                return Err(missing(
                    &out.deps,
                    format!("{}.{}", self.target.readable(), out.column.readable()),
                ));
            }
            untouched.push(i);
        }
        if let Some(filter) = &self.filter {
            if filter.deps.iter().any(|&d| unchanged.get(d).copied().unwrap_or(false)) {
                return Err(missing(
                    &filter.deps,
                    format!("the filter of {}", self.target.readable()),
                ));
            }
        }
        Ok(untouched)
    }

    /// The target key column names, in key order.
    pub fn target_key_columns(&self) -> impl Iterator<Item = &Ident> {
        self.target_key.iter().map(|&o| &self.outputs[o].column)
    }
}

/// Every table mapping, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Table plans in config order.
    pub tables: Vec<TablePlan>,
    /// Order in which to upsert into tables: referenced (parent) tables
    /// before the tables whose foreign keys point at them.
    pub upsert_order: Vec<usize>,
}

impl Plan {
    /// Order in which to delete from tables: children before parents.
    pub fn delete_order(&self) -> impl Iterator<Item = usize> + '_ {
        self.upsert_order.iter().rev().copied()
    }

    /// The plan of the table mapped from `schema.name` on the source.
    pub fn by_source(&self, schema: &str, name: &str) -> Option<&TablePlan> {
        self.tables.iter().find(|t| t.source.raw_schema() == schema && t.source.raw_name() == name)
    }

    /// Compiles every table mapping. Problems are collected per table and
    /// column into `PlanError::Checks`; only connection-level SQL failures are
    /// returned as other errors.
    pub async fn compile(
        cfg: &ValidatedConfig,
        source: &Client,
        target: &Client,
    ) -> Result<Plan, PlanError> {
        let mut failures = Vec::new();
        let plan = Self::compile_collecting(cfg, source, target, &mut failures).await?;
        if failures.is_empty() { Ok(plan) } else { Err(PlanError::Checks(CheckFailures(failures))) }
    }

    /// Like [`Plan::compile`], appending problems to `failures` (the plan is
    /// only meaningful when none were added).
    pub async fn compile_collecting(
        cfg: &ValidatedConfig,
        source: &Client,
        target: &Client,
        failures: &mut Vec<CheckFailure>,
    ) -> Result<Plan, PlanError> {
        let mut tables = Vec::new();
        let mut target_oids = Vec::new();
        for (index, table) in cfg.tables.iter().enumerate() {
            let mut fail = |subject: String, problem: String| {
                failures.push(CheckFailure { subject, problem });
            };
            let Some(src) = catalog::table_info(source, &table.source)
                .await
                .map_err(PlanError::sql("reading the source catalog"))?
            else {
                fail(
                    format!("tables[{index}].source"),
                    format!("table {} does not exist on the source", table.source.readable()),
                );
                continue;
            };
            let Some(tgt) = catalog::table_info(target, &table.target)
                .await
                .map_err(PlanError::sql("reading the target catalog"))?
            else {
                fail(
                    format!("tables[{index}].target"),
                    format!(
                        "table {} does not exist on the target: create the shadow table first \
                         (walshift does not create target tables; see sql/billing_new.sql)",
                        table.target.readable()
                    ),
                );
                continue;
            };
            let unique_keys = catalog::unique_keys(target, tgt.oid)
                .await
                .map_err(PlanError::sql("reading the target catalog"))?;
            target_oids.push(tgt.oid);
            if let Some(plan) =
                compile_table(index, table, &src, &tgt, &unique_keys, target, &mut fail).await?
            {
                tables.push(plan);
            }
        }
        let fks = catalog::foreign_keys_among(target, &target_oids)
            .await
            .map_err(PlanError::sql("reading the target catalog"))?;
        let upsert_order = parents_first(&target_oids, &fks);
        Ok(Plan { tables, upsert_order })
    }
}

/// Topological order of tables (indexes into `oids`) with referenced tables
/// first; tables in a cycle keep config order after the others.
fn parents_first(oids: &[u32], fks: &[(u32, u32)]) -> Vec<usize> {
    let pos: HashMap<u32, usize> = oids.iter().enumerate().map(|(i, &o)| (o, i)).collect();
    let mut parents: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); oids.len()];
    for (child, parent) in fks {
        if let (Some(&c), Some(&p)) = (pos.get(child), pos.get(parent)) {
            parents[c].insert(p);
        }
    }
    let mut order = Vec::with_capacity(oids.len());
    let mut placed = vec![false; oids.len()];
    loop {
        let next = (0..oids.len())
            .find(|&i| !placed[i] && parents[i].iter().all(|&p| placed[p] || p == i));
        let Some(i) = next else { break };
        placed[i] = true;
        order.push(i);
    }
    order.extend((0..oids.len()).filter(|&i| !placed[i]));
    order
}

/// The raw column name if `expr` is a bare column reference (`org_id`,
/// `"Org Id"`), folded the way Postgres folds identifiers.
pub fn bare_column(expr: &str) -> Option<String> {
    let expr = expr.trim();
    if let Some(inner) = expr.strip_prefix('"').and_then(|e| e.strip_suffix('"')) {
        let unescaped = inner.replace("\"\"", "\"");
        // A lone `"` inside would mean two identifiers, not one.
        return (!inner.is_empty() && !inner.replace("\"\"", "").contains('"'))
            .then_some(unescaped);
    }
    let mut chars = expr.chars();
    let first = chars.next()?;
    let ok = (first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    (ok && !is_reserved(expr)).then(|| expr.to_ascii_lowercase())
}

/// Whether an unquoted word is a keyword rather than a column name
/// (`null`, `user` = `current_user`, `order`).
fn is_reserved(word: &str) -> bool {
    crate::pg::sql::is_keyword(word)
}

/// `(select null::t1 as "c1", ...) as s` over `columns` (all source columns).
fn stand_in(columns: &[(&Ident, &str)]) -> String {
    let mut sql = String::from("(select ");
    if columns.is_empty() {
        sql.push_str("1 as \"?walshift_empty?\"");
    }
    for (i, (name, ty)) in columns.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "null::{ty} as {name}");
    }
    sql.push_str(") as s");
    sql
}

fn db_message(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => crate::error::display_chain(err),
    }
}

fn is_undefined_column(err: &tokio_postgres::Error) -> bool {
    err.as_db_error().is_some_and(|db| db.code().code() == UNDEFINED_COLUMN)
}

/// Whether a prepare failure is about the statement rather than the
/// connection (so it is the operator's input to fix).
fn is_statement_error(err: &tokio_postgres::Error) -> bool {
    err.as_db_error().is_some()
}

async fn compile_table(
    index: usize,
    table: &ValidatedTable,
    src: &TableInfo,
    tgt: &TableInfo,
    unique_keys: &[Vec<String>],
    target: &Client,
    fail: &mut impl FnMut(String, String),
) -> Result<Option<TablePlan>, PlanError> {
    let source_name = table.source.readable();
    let target_name = table.target.readable();
    let failures_before = std::sync::atomic::AtomicUsize::new(0);
    let mut failed = |subject: String, problem: String| {
        failures_before.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        fail(subject, problem);
    };

    // The key: configured, else the primary key, else the identity index.
    let key: Vec<String> = match (&table.key, &src.primary_key, src.identity_columns()) {
        (Some(k), _, _) => k.clone(),
        (None, Some(pk), _) => pk.clone(),
        (None, None, Some(id)) => id.to_vec(),
        (None, None, None) => {
            failed(
                format!("tables[{index}].key"),
                format!(
                    "{source_name} has no primary key: add one or set tables[{index}].key \
                     to columns that identify a row"
                ),
            );
            return Ok(None);
        }
    };
    for k in &key {
        if src.column(k).is_none() {
            failed(
                format!("tables[{index}].key"),
                format!("column {k:?} does not exist in {source_name}"),
            );
        }
    }

    // The mapping: configured, or every same-named column.
    let mapping: Vec<(String, String, bool)> = if table.columns.is_empty() {
        tgt.columns
            .iter()
            .filter(|c| !c.generated && src.column(&c.name).is_some())
            .map(|c| (c.name.clone(), Ident::new(c.name.clone()).to_string(), true))
            .collect()
    } else {
        table.columns.iter().map(|m| (m.target.clone(), m.expr.clone(), m.verify)).collect()
    };

    let all_columns: Vec<(Ident, String)> =
        src.columns.iter().map(|c| (Ident::new(c.name.clone()), c.cast_type.clone())).collect();
    let all_refs: Vec<(&Ident, &str)> = all_columns.iter().map(|(n, t)| (n, t.as_str())).collect();
    let stand_in_all = stand_in(&all_refs);

    // The source column types must exist on the target (cross-cluster).
    if let Err(err) = target.prepare(&format!("select 1 from {stand_in_all}")).await {
        if !is_statement_error(&err) {
            return Err(PlanError::sql("checking the mapping on the target")(err));
        }
        failed(
            format!("tables[{index}].source"),
            format!(
                "the column types of {source_name} are not all known on the target: {}",
                db_message(&err)
            ),
        );
        return Ok(None);
    }

    let mut outputs: Vec<(Ident, String, bool, BTreeSet<usize>)> = Vec::new();
    for (column, expr, verify) in &mapping {
        let subject = format!("tables[{index}].columns.{column}");
        let Some(tcol) = tgt.column(column) else {
            failed(
                subject,
                format!("column {column:?} does not exist in target table {target_name}"),
            );
            continue;
        };
        if tcol.generated {
            failed(
                subject,
                format!("{target_name}.{column} is a generated column and cannot be written"),
            );
            continue;
        }
        let ident = Ident::new(column.clone());
        let probe =
            format!("insert into {} ({ident}) select ({expr}) from {stand_in_all}", table.target);
        if let Err(err) = target.prepare(&probe).await {
            if !is_statement_error(&err) {
                return Err(PlanError::sql("checking the mapping on the target")(err));
            }
            failed(
                subject,
                format!(
                    "expression `{expr}` does not compile into {target_name}.{column} \
                     (over the columns of {source_name}): {}",
                    db_message(&err)
                ),
            );
            continue;
        }
        let deps = dependencies(expr, &all_columns, target).await?;
        outputs.push((ident, expr.clone(), *verify, deps));
    }

    let filter = match &table.filter {
        None => None,
        Some(expr) => {
            let probe = format!("select 1 from {stand_in_all} where ({expr})");
            match target.prepare(&probe).await {
                Ok(_) => Some((expr.clone(), dependencies(expr, &all_columns, target).await?)),
                Err(err) if is_statement_error(&err) => {
                    failed(
                        format!("tables[{index}].filter"),
                        format!(
                            "filter `{expr}` does not compile over the columns of {source_name}: {}",
                            db_message(&err)
                        ),
                    );
                    None
                }
                Err(err) => return Err(PlanError::sql("checking the filter on the target")(err)),
            }
        }
    };

    // Target key: the target columns that copy the source key columns.
    let mut target_key_cols = Vec::new();
    for k in &key {
        let found =
            outputs.iter().position(|(_, expr, _, _)| bare_column(expr).as_deref() == Some(k));
        match found {
            Some(o) => target_key_cols.push(o),
            None => failed(
                format!("tables[{index}].columns"),
                format!(
                    "key column {k:?} of {source_name} is not copied to any column of \
                     {target_name}: map a target column to it as a bare column name \
                     (renaming is fine, computing is not)"
                ),
            ),
        }
    }
    if target_key_cols.len() == key.len() {
        let mut wanted: Vec<String> =
            target_key_cols.iter().map(|&o| outputs[o].0.as_str().to_owned()).collect();
        wanted.sort();
        if !unique_keys.contains(&wanted) {
            failed(
                format!("tables[{index}].target"),
                format!(
                    "{target_name} has no unique index on ({}): walshift upserts by key, so \
                     create a primary key or unique index (not partial, not deferrable) on it",
                    wanted.join(", ")
                ),
            );
        }
    }

    // Target columns the mapping leaves to their default must have one.
    for col in &tgt.columns {
        let mapped = mapping.iter().any(|(m, _, _)| *m == col.name);
        if col.not_null && !col.has_default && !mapped {
            failed(
                format!("tables[{index}].columns"),
                format!(
                    "{target_name}.{} is NOT NULL without a default and not mapped: map it \
                     or give it a default",
                    col.name
                ),
            );
        }
    }

    if failures_before.load(std::sync::atomic::Ordering::Relaxed) > 0 {
        return Ok(None);
    }

    // Inputs: every source column read by an output, the filter or the key.
    let key_src: BTreeSet<usize> =
        key.iter().filter_map(|k| src.columns.iter().position(|c| &c.name == k)).collect();
    let mut used: BTreeSet<usize> = key_src;
    for (_, _, _, deps) in &outputs {
        used.extend(deps);
    }
    if let Some((_, deps)) = &filter {
        used.extend(deps);
    }
    let source_pos: Vec<usize> = used.into_iter().collect();
    let input_of = |src_pos: usize| source_pos.iter().position(|&p| p == src_pos).unwrap_or(0);
    let inputs = source_pos
        .iter()
        .map(|&p| Input {
            name: Ident::new(src.columns[p].name.clone()),
            cast_type: src.columns[p].cast_type.clone(),
            type_oid: src.columns[p].type_oid,
        })
        .collect();
    let key_inputs = key
        .iter()
        .map(|k| input_of(src.columns.iter().position(|c| &c.name == k).unwrap_or(0)))
        .collect();
    let outputs: Vec<Output> = outputs
        .into_iter()
        .map(|(column, expr, verify, deps)| Output {
            column,
            expr,
            deps: deps.into_iter().map(input_of).collect(),
            verify,
        })
        .collect();
    let filter =
        filter.map(|(expr, deps)| Filter { expr, deps: deps.into_iter().map(input_of).collect() });
    Ok(Some(TablePlan {
        index,
        source: table.source.clone(),
        target: table.target.clone(),
        inputs,
        key_inputs,
        outputs,
        target_key: target_key_cols,
        filter,
        truncate: table.truncate,
    }))
}

/// Source columns (positions in `columns`) that `expr` reads, decided by the
/// target's parser: a column is a dependency if the expression stops
/// compiling with "column does not exist" once it is left out. Only columns
/// whose name occurs in the expression text are tried.
async fn dependencies(
    expr: &str,
    columns: &[(Ident, String)],
    target: &Client,
) -> Result<BTreeSet<usize>, PlanError> {
    if let Some(name) = bare_column(expr) {
        return Ok(columns.iter().position(|(c, _)| c.as_str() == name).into_iter().collect());
    }
    // A name with a `"` appears in the expression with it doubled (`"a""b"`).
    let lower = expr.to_lowercase();
    let candidates: Vec<usize> = (0..columns.len())
        .filter(|&i| {
            let name = columns[i].0.as_str().to_lowercase();
            lower.contains(&name) || lower.contains(&name.replace('"', "\"\""))
        })
        .collect();
    let mut deps = BTreeSet::new();
    for &c in &candidates {
        let without: Vec<(&Ident, &str)> = columns
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != c)
            .map(|(_, (n, t))| (n, t.as_str()))
            .collect();
        let probe = format!("select ({expr}) from {}", stand_in(&without));
        match target.prepare(&probe).await {
            Ok(_) => {}
            Err(err) if is_undefined_column(&err) => {
                deps.insert(c);
            }
            Err(err) if is_statement_error(&err) => {
                // Another error without this column still means it is read.
                deps.insert(c);
            }
            Err(err) => return Err(PlanError::sql("analysing an expression on the target")(err)),
        }
    }
    Ok(deps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_columns() {
        assert_eq!(bare_column("org_id").as_deref(), Some("org_id"));
        assert_eq!(bare_column("  Org_Id ").as_deref(), Some("org_id"));
        assert_eq!(bare_column("\"Org Id\"").as_deref(), Some("Org Id"));
        assert_eq!(bare_column("\"a\"\"b\"").as_deref(), Some("a\"b"));
        assert_eq!(bare_column("\"a\".\"b\""), None);
        assert_eq!(bare_column("lower(email)"), None);
        assert_eq!(bare_column("'x'"), None);
        assert_eq!(bare_column("null"), None);
        // Unquoted keywords are not column references (`user` is current_user).
        assert_eq!(bare_column("user"), None);
        assert_eq!(bare_column("\"user\"").as_deref(), Some("user"));
        assert_eq!(bare_column("a.b"), None);
        assert_eq!(bare_column("1"), None);
    }

    #[test]
    fn parents_come_first() {
        // 10 <- 20 <- 30 (30 references 20 references 10), listed children first.
        let order = parents_first(&[30, 20, 10], &[(30, 20), (20, 10)]);
        assert_eq!(order, vec![2, 1, 0]);
        // A cycle keeps config order after the acyclic part.
        let order = parents_first(&[1, 2, 3], &[(1, 2), (2, 1)]);
        assert_eq!(order, vec![2, 0, 1]);
    }

    fn plan_with(outputs: Vec<Output>, filter: Option<Filter>) -> TablePlan {
        TablePlan {
            index: 0,
            source: QualifiedName::parse("public.t").unwrap(),
            target: QualifiedName::parse("new.t").unwrap(),
            inputs: ["id", "doc", "note"]
                .iter()
                .map(|n| Input { name: Ident::new(*n), cast_type: "text".into(), type_oid: 25 })
                .collect(),
            key_inputs: vec![0],
            outputs,
            target_key: vec![0],
            filter,
            truncate: true,
        }
    }

    fn out(name: &str, deps: &[usize]) -> Output {
        Output { column: Ident::new(name), expr: name.into(), deps: deps.to_vec(), verify: true }
    }

    #[test]
    fn unchanged_toast_leaves_dependent_outputs_alone() {
        let plan = plan_with(vec![out("id", &[0]), out("doc", &[1]), out("k", &[])], None);
        assert_eq!(plan.untouched_outputs(&[false, true, false]).unwrap(), vec![1]);
        assert_eq!(plan.untouched_outputs(&[false, false, false]).unwrap(), Vec::<usize>::new());
    }

    #[test]
    fn unchanged_toast_mixed_with_other_columns_is_an_error() {
        let plan = plan_with(vec![out("id", &[0]), out("both", &[1, 2])], None);
        let err = plan.untouched_outputs(&[false, true, false]).unwrap_err();
        assert_eq!(err.source_column, "doc");
        // `both` is a keyword: quoted, so the name reads back as SQL.
        assert_eq!(err.target, "new.t.\"both\"");
        assert!(err.to_string().contains("REPLICA IDENTITY FULL"));
        let plan = plan_with(
            vec![out("id", &[0])],
            Some(Filter { expr: "doc <> ''".into(), deps: vec![1] }),
        );
        assert!(plan.untouched_outputs(&[false, true, false]).is_err());
    }
}
