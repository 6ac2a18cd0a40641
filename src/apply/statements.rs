//! The apply statements of one table, built once from its [`TablePlan`].
//!
//! Every statement takes one `text[]` parameter per plan input (and per old
//! key column where needed), unnests them into a typed stand-in of the source
//! rows called `s`, and evaluates the mapping expressions over `s`. Row values
//! never enter the SQL text; identifiers come quoted from [`Ident`]'s
//! `Display`; the expressions are the operator's configured SQL, checked at
//! start-up by [`crate::transform::plan`].
//!
//! ```sql
//! -- upsert, N rows in one statement
//! with s as (select u.c0::bigint as "id", u.c1::bigint as "amount_cents"
//!            from (select unnest($1::text[]) as c0, unnest($2::text[]) as c1) as u)
//! insert into "billing_new"."usage_events" as t ("id", "amount")
//! select ("id"), (amount_cents / 100.0) from s
//! on conflict ("id") do update set "amount" = excluded."amount"
//!
//! -- delete by key
//! delete from "billing_new"."usage_events" as t
//! using (select u.c0::bigint as "id" from unnest($1::text[]) as u(c0)) as s
//! where t."id" = s."id"
//! ```
//!
//! With a filter, the upsert only writes rows that pass it, and a
//! data-modifying CTE deletes by key the rows that do not (an update can move
//! a row out of the filter). A *partial update* (an UPDATE whose TOASTed
//! column arrived unchanged) is a plain `UPDATE ... FROM` that sets only the
//! columns that can be computed, matching the row by its old key, so it also
//! moves a row whose key changed.

use std::fmt::Write as _;

use crate::pg::sql::Ident;
use crate::transform::TablePlan;
pub use crate::transform::sql::RowSource;
use crate::transform::sql::{input_cte, old_alias, output_exprs};

fn value_alias(o: usize) -> Ident {
    Ident::new(format!("?walshift_v_{o}"))
}

const KEEP: &str = "\"?walshift_keep\"";

/// `t."tk0" = x."sk0" and ...`: target key against source key columns of `x`.
fn key_match(plan: &TablePlan, x: &str, old: bool) -> String {
    let mut sql = String::new();
    for (j, (tk, &ki)) in plan.target_key_columns().zip(&plan.key_inputs).enumerate() {
        if j > 0 {
            sql.push_str(" and ");
        }
        let source_col = if old { old_alias(j) } else { plan.inputs[ki].name.clone() };
        let _ = write!(sql, "t.{tk} = {x}.{source_col}");
    }
    sql
}

fn filter_expr(plan: &TablePlan) -> Option<String> {
    plan.filter.as_ref().map(|f| format!("coalesce(({}), false)", f.expr))
}

/// `pg_temp."walshift_stage_<i>"`: the staging table of plan table `i`.
pub fn stage_name(plan: &TablePlan) -> String {
    format!("pg_temp.{}", Ident::new(format!("walshift_stage_{}", plan.index)))
}

/// Creates the session's staging table for backfill chunks of `plan`
/// (emptied at every commit).
pub fn stage_table(plan: &TablePlan, binary: &[bool]) -> String {
    create_stage(&stage_name(plan), plan, binary)
}

/// `pg_temp."walshift_stream_stage_<i>"`: the staging table of stream rows
/// of plan table `i` too large for array parameters.
pub fn text_stage_name(plan: &TablePlan) -> String {
    format!("pg_temp.{}", Ident::new(format!("walshift_stream_stage_{}", plan.index)))
}

/// Creates the session's staging table for large stream rows of `plan`:
/// every input as text, as pgoutput sends it (emptied at every commit),
/// stored uncompressed (a value passes through it once; compressing a
/// 400 MB text only to decompress it again costs seconds).
pub fn text_stage_table(plan: &TablePlan) -> String {
    let name = text_stage_name(plan);
    let columns: Vec<String> =
        (0..plan.inputs.len()).map(|i| format!("alter column c{i} set storage external")).collect();
    format!("{}; alter table {name} {}", create_stage(&name, plan, &[]), columns.join(", "))
}

fn create_stage(name: &str, plan: &TablePlan, binary: &[bool]) -> String {
    let cols: Vec<String> = plan
        .inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let ty =
                if binary.get(i).copied().unwrap_or(false) { &input.cast_type } else { "text" };
            format!("c{i} {ty}")
        })
        .collect();
    format!("create temp table if not exists {name} ({}) on commit delete rows", cols.join(", "))
}

/// Multi-row upsert of full rows: one `text[]` per input.
pub fn upsert(plan: &TablePlan) -> String {
    upsert_with(plan, &RowSource::Arrays(&[]))
}

/// [`upsert`] with rows from `rows`.
pub fn upsert_with(plan: &TablePlan, rows: &RowSource<'_>) -> String {
    let target = &plan.target;
    let mut sql = format!("with {}", input_cte(plan, false, rows));
    if let Some(keep) = filter_expr(plan) {
        let source_keys: Vec<String> =
            plan.key_inputs.iter().map(|&k| plan.inputs[k].name.to_string()).collect();
        let _ = write!(
            sql,
            ", gone as (delete from {target} as t using (select {} from s where not {keep}) as s \
             where {})",
            source_keys.join(", "),
            key_match(plan, "s", false)
        );
    }
    let columns: Vec<String> = plan.outputs.iter().map(|o| o.column.to_string()).collect();
    let exprs = output_exprs(plan);
    let _ = write!(
        sql,
        " insert into {target} as t ({}) select {} from s",
        columns.join(", "),
        exprs.join(", ")
    );
    if let Some(keep) = filter_expr(plan) {
        let _ = write!(sql, " where {keep}");
    }
    let keys: Vec<String> = plan.target_key_columns().map(|c| c.to_string()).collect();
    let updates: Vec<String> = plan
        .outputs
        .iter()
        .enumerate()
        .filter(|(o, _)| !plan.target_key.contains(o))
        .map(|(_, out)| format!("{c} = excluded.{c}", c = out.column))
        .collect();
    if updates.is_empty() {
        let _ = write!(sql, " on conflict ({}) do nothing", keys.join(", "));
    } else {
        let _ =
            write!(sql, " on conflict ({}) do update set {}", keys.join(", "), updates.join(", "));
    }
    sql
}

/// Multi-row plain insert of rows new to the target (no `ON CONFLICT`, so
/// no speculative insertion): one `text[]` per input. Rows that fail the
/// filter are skipped.
pub fn insert(plan: &TablePlan) -> String {
    insert_with(plan, &RowSource::Arrays(&[]))
}

/// [`insert`] with rows from `rows`.
pub fn insert_with(plan: &TablePlan, rows: &RowSource<'_>) -> String {
    let columns: Vec<String> = plan.outputs.iter().map(|o| o.column.to_string()).collect();
    let exprs = output_exprs(plan);
    let mut sql = format!(
        "with {} insert into {} as t ({}) select {} from s",
        input_cte(plan, false, rows),
        plan.target,
        columns.join(", "),
        exprs.join(", ")
    );
    if let Some(keep) = filter_expr(plan) {
        let _ = write!(sql, " where {keep}");
    }
    sql
}

/// Multi-row delete by key: one `text[]` per key input.
pub fn delete(plan: &TablePlan) -> String {
    let mut cols = String::new();
    let mut arrays = String::new();
    let mut names = String::new();
    for (j, &k) in plan.key_inputs.iter().enumerate() {
        if j > 0 {
            cols.push_str(", ");
            arrays.push_str(", ");
            names.push_str(", ");
        }
        let input = &plan.inputs[k];
        let _ = write!(cols, "u.k{j}::{} as {}", input.cast_type, input.name);
        let _ = write!(arrays, "${}::text[]", j + 1);
        let _ = write!(names, "k{j}");
    }
    format!(
        "delete from {} as t using (select {cols} from unnest({arrays}) as u({names})) as s where {}",
        plan.target,
        key_match(plan, "s", false)
    )
}

/// For key changes: deletes the row at each old key when the target
/// already has a row at the new key (a backfill chunk read after the change
/// copied it there). One `text[]` per key input of the old keys, then of
/// the new keys.
pub fn delete_superseded(plan: &TablePlan) -> String {
    let mut cols = String::new();
    let mut srfs = String::new();
    let mut old_match = String::new();
    let mut new_match = String::new();
    let width = plan.key_inputs.len();
    for (j, (tk, &k)) in plan.target_key_columns().zip(&plan.key_inputs).enumerate() {
        let ty = &plan.inputs[k].cast_type;
        if j > 0 {
            cols.push_str(", ");
            srfs.push_str(", ");
            old_match.push_str(" and ");
            new_match.push_str(" and ");
        }
        let _ = write!(cols, "u.o{j}::{ty} as o{j}, u.n{j}::{ty} as n{j}");
        let _ = write!(
            srfs,
            "unnest(${}::text[]) as o{j}, unnest(${}::text[]) as n{j}",
            j + 1,
            width + j + 1
        );
        let _ = write!(old_match, "t.{tk} = s.o{j}");
        let _ = write!(new_match, "t2.{tk} = s.n{j}");
    }
    format!(
        "delete from {target} as t using (select {cols} from (select {srfs}) as u) as s \
         where {old_match} and exists (select 1 from {target} as t2 where {new_match})",
        target = plan.target
    )
}

/// Multi-row update of the outputs not in `untouched`, matching rows by
/// their old key: one `text[]` per input, then one per key input (old key).
pub fn partial_update(plan: &TablePlan, untouched: &[usize]) -> String {
    let target = &plan.target;
    let set: Vec<usize> = (0..plan.outputs.len()).filter(|o| !untouched.contains(o)).collect();
    let mut x_cols: Vec<String> =
        (0..plan.key_inputs.len()).map(|j| format!("s.{}", old_alias(j))).collect();
    x_cols.push("s.\"?walshift_n\"".to_owned());
    for &o in &set {
        x_cols.push(format!("({}) as {}", plan.outputs[o].expr, value_alias(o)));
    }
    if let Some(keep) = filter_expr(plan) {
        x_cols.push(format!("{keep} as {KEEP}"));
    }
    let mut sql = format!(
        "with {}, x as (select {} from s)",
        input_cte(plan, true, &RowSource::Arrays(&[])),
        x_cols.join(", ")
    );
    if plan.filter.is_some() {
        let _ = write!(
            sql,
            ", gone as (delete from {target} as t using x where not x.{KEEP} and {})",
            key_match(plan, "x", true)
        );
    }
    let assignments: Vec<String> =
        set.iter().map(|&o| format!("{} = x.{}", plan.outputs[o].column, value_alias(o))).collect();
    let _ = write!(
        sql,
        " update {target} as t set {} from x where {}",
        assignments.join(", "),
        key_match(plan, "x", true)
    );
    if plan.filter.is_some() {
        let _ = write!(sql, " and x.{KEEP}");
    }
    sql.push_str(" returning x.\"?walshift_n\"");
    sql
}

/// Reads current rows from the *source* by key: every input as text, one
/// `text[]` parameter per key input. Used for rows a partial update found
/// missing in the target (see `docs/apply.md`, "Unchanged TOAST").
pub fn fetch_rows(plan: &TablePlan) -> String {
    let cols: Vec<String> = plan.inputs.iter().map(|i| format!("t.{}::text", i.name)).collect();
    let mut keys = String::new();
    let mut arrays = String::new();
    let mut names = String::new();
    let mut on = String::new();
    for (j, &k) in plan.key_inputs.iter().enumerate() {
        if j > 0 {
            keys.push_str(", ");
            arrays.push_str(", ");
            names.push_str(", ");
            on.push_str(" and ");
        }
        let input = &plan.inputs[k];
        let _ = write!(keys, "u.k{j}::{} as k{j}", input.cast_type);
        let _ = write!(arrays, "${}::text[]", j + 1);
        let _ = write!(names, "k{j}");
        let _ = write!(on, "t.{} = s.k{j}", input.name);
    }
    format!(
        "select {} from {} as t join (select {keys} from unnest({arrays}) as u({names})) as s on {on}",
        cols.join(", "),
        plan.source
    )
}

/// `truncate` of the given target tables.
pub fn truncate<'a>(plans: impl Iterator<Item = &'a TablePlan>) -> String {
    let names: Vec<String> = plans.map(|p| p.target.to_string()).collect();
    format!("truncate {}", names.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::sql::QualifiedName;
    use crate::transform::plan::{Filter, Input, Output};

    fn plan(filter: bool) -> TablePlan {
        TablePlan {
            index: 0,
            source: QualifiedName::parse("public.orgs").unwrap(),
            target: QualifiedName::parse("billing_new.orgs").unwrap(),
            inputs: vec![
                Input { name: Ident::new("id"), cast_type: "bigint".into(), type_oid: 20 },
                Input { name: Ident::new("email"), cast_type: "text".into(), type_oid: 25 },
            ],
            key_inputs: vec![0],
            outputs: vec![
                Output {
                    column: Ident::new("org_id"),
                    expr: "id".into(),
                    deps: vec![0],
                    verify: true,
                },
                Output {
                    column: Ident::new("billing_email"),
                    expr: "lower(email)".into(),
                    deps: vec![1],
                    verify: true,
                },
            ],
            target_key: vec![0],
            filter: filter.then(|| Filter { expr: "email <> ''".into(), deps: vec![1] }),
            truncate: true,
        }
    }

    #[test]
    fn upsert_shape() {
        assert_eq!(
            upsert(&plan(false)),
            "with s as (select u.c0::bigint as \"id\", u.c1::text as \"email\" from \
             (select unnest($1::text[]) as c0, unnest($2::text[]) as c1) as u) insert into \
             \"billing_new\".\"orgs\" as t (\"org_id\", \"billing_email\") select (id), (lower(email)) from s on conflict \
             (\"org_id\") do update set \"billing_email\" = excluded.\"billing_email\""
        );
    }

    #[test]
    fn upsert_with_filter_deletes_rows_that_fail_it() {
        let sql = upsert(&plan(true));
        assert!(sql.contains(
            "gone as (delete from \"billing_new\".\"orgs\" as t using (select \"id\" from s where \
             not coalesce((email <> ''), false)) as s where t.\"org_id\" = s.\"id\")"
        ));
        assert!(sql.contains("from s where coalesce((email <> ''), false) on conflict"));
    }

    #[test]
    fn delete_shape() {
        assert_eq!(
            delete(&plan(false)),
            "delete from \"billing_new\".\"orgs\" as t using (select u.k0::bigint as \"id\" from \
             unnest($1::text[]) as u(k0)) as s where t.\"org_id\" = s.\"id\""
        );
    }

    #[test]
    fn partial_update_sets_only_computable_columns_by_old_key() {
        let sql = partial_update(&plan(false), &[1]);
        assert_eq!(
            sql,
            "with s as (select u.c0::bigint as \"id\", u.c1::text as \"email\", u.n as \
             \"?walshift_n\", u.k0::bigint as \"?walshift_old_0\" from unnest($1::text[], \
             $2::text[], $3::text[]) with ordinality as u(c0, c1, k0, n)), x as (select \
             s.\"?walshift_old_0\", s.\"?walshift_n\", (id) as \"?walshift_v_0\" from s) update \
             \"billing_new\".\"orgs\" as t set \"org_id\" = x.\"?walshift_v_0\" from x where \
             t.\"org_id\" = x.\"?walshift_old_0\" returning x.\"?walshift_n\""
        );
    }

    #[test]
    fn superseded_rows_are_deleted_by_old_key_when_the_new_key_exists() {
        assert_eq!(
            delete_superseded(&plan(false)),
            "delete from \"billing_new\".\"orgs\" as t using (select u.o0::bigint as o0, \
             u.n0::bigint as n0 from (select unnest($1::text[]) as o0, unnest($2::text[]) as n0) \
             as u) as s where t.\"org_id\" = s.o0 and exists (select 1 from \
             \"billing_new\".\"orgs\" as t2 where t2.\"org_id\" = s.n0)"
        );
    }

    #[test]
    fn fetch_reads_the_source_by_key() {
        assert_eq!(
            fetch_rows(&plan(false)),
            "select t.\"id\"::text, t.\"email\"::text from \"public\".\"orgs\" as t join \
             (select u.k0::bigint as k0 from unnest($1::text[]) as u(k0)) as s on t.\"id\" = s.k0"
        );
    }

    #[test]
    fn binary_inputs_arrive_as_typed_arrays() {
        let sql = insert_with(&plan(false), &RowSource::Arrays(&[false, true]));
        assert!(
            sql.starts_with(
                "with s as (select u.c0::bigint as \"id\", u.c1 as \"email\" from \
                 (select unnest($1::text[]) as c0, unnest($2::text[]) as c1) as u)"
            ),
            "{sql}"
        );
        let mut p = plan(false);
        p.inputs[1].cast_type = "numeric".into();
        let sql = upsert_with(&p, &RowSource::Arrays(&[false, true]));
        assert!(sql.contains("unnest($1::text[]) as c0, unnest($2::numeric[]) as c1"), "{sql}");
        assert_eq!(
            stage_table(&p, &[false, true]),
            "create temp table if not exists pg_temp.\"walshift_stage_0\" (c0 text, c1 numeric) \
             on commit delete rows"
        );
        let sql =
            insert_with(&p, &RowSource::Stage { table: &stage_name(&p), binary: &[false, true] });
        assert!(
            sql.starts_with(
                "with s as (select u.c0::bigint as \"id\", u.c1 as \"email\" from \
                 pg_temp.\"walshift_stage_0\" as u) insert into"
            ),
            "{sql}"
        );
    }

    #[test]
    fn large_stream_rows_are_staged_as_uncompressed_text() {
        let p = plan(false);
        assert_eq!(
            text_stage_table(&p),
            "create temp table if not exists pg_temp.\"walshift_stream_stage_0\" (c0 text, c1 \
             text) on commit delete rows; alter table pg_temp.\"walshift_stream_stage_0\" alter \
             column c0 set storage external, alter column c1 set storage external"
        );
        let sql = upsert_with(&p, &RowSource::Stage { table: &text_stage_name(&p), binary: &[] });
        assert!(
            sql.starts_with(
                "with s as (select u.c0::bigint as \"id\", u.c1::text as \"email\" from \
                 pg_temp.\"walshift_stream_stage_0\" as u) insert into"
            ),
            "{sql}"
        );
    }

    #[test]
    fn names_are_quoted() {
        let mut p = plan(false);
        p.target = QualifiedName::new("new", "x\"; drop table y; --");
        assert!(upsert(&p).contains("into \"new\".\"x\"\"; drop table y; --\" as t"));
    }
}
