//! Builds each table's [`CompareTable`] from its plan and both catalogs:
//! the verified target columns with their types and canonical forms, the
//! key columns' collations on each side, and whether the source can
//! evaluate the mapping expressions (else the table is verified by
//! shipping its inputs).

use std::collections::HashMap;

use tokio_postgres::Client;

use crate::pg::sql::Ident;
use crate::transform::compare::{Canon, CompareColumn, CompareTable};
use crate::transform::{Plan, TablePlan};

/// A column as verification needs it.
#[derive(Debug, Clone)]
struct ColumnType {
    /// `format_type` with modifier.
    type_name: String,
    /// The type, or a domain's base type.
    base_type: u32,
    /// The collation's sort order, `None` when the type is not collatable.
    collation: Option<String>,
}

async fn columns(
    client: &Client,
    table: &str,
) -> Result<HashMap<String, ColumnType>, tokio_postgres::Error> {
    let db = client
        .query_one(
            "select datlocprovider::text, datcollate, datctype, coalesce(daticulocale, '') \
             from pg_database where datname = current_database()",
            &[],
        )
        .await?;
    let (provider, collate, ctype, icu): (String, String, String, String) =
        (db.try_get(0)?, db.try_get(1)?, db.try_get(2)?, db.try_get(3)?);
    let default_order = sort_order(&provider, &collate, &ctype, &icu);
    let rows = client
        .query(
            "select a.attname::text, format_type(a.atttypid, a.atttypmod), \
                    (case when t.typtype = 'd' then t.typbasetype else a.atttypid end)::oid, \
                    a.attcollation::oid, coalesce(c.collprovider::text, ''), \
                    coalesce(c.collcollate, ''), coalesce(c.collctype, ''), \
                    coalesce(c.colliculocale, '') \
             from pg_attribute a join pg_type t on t.oid = a.atttypid \
             left join pg_collation c on c.oid = a.attcollation \
             where a.attrelid = $1::text::regclass and a.attnum > 0 and not a.attisdropped",
            &[&table],
        )
        .await?;
    let mut out = HashMap::new();
    for row in rows {
        let collation_oid: u32 = row.try_get(3)?;
        let collation = match collation_oid {
            0 => None,
            // The database default.
            100 => Some(default_order.clone()),
            _ => Some(sort_order(
                &row.try_get::<_, String>(4)?,
                &row.try_get::<_, String>(5)?,
                &row.try_get::<_, String>(6)?,
                &row.try_get::<_, String>(7)?,
            )),
        };
        out.insert(
            row.try_get(0)?,
            ColumnType { type_name: row.try_get(1)?, base_type: row.try_get(2)?, collation },
        );
    }
    Ok(out)
}

/// A comparable description of how a collation sorts.
fn sort_order(provider: &str, collate: &str, ctype: &str, icu: &str) -> String {
    match provider {
        "i" => format!("icu:{icu}"),
        _ if matches!(collate, "C" | "POSIX") => "C".to_owned(),
        _ => format!("libc:{collate}:{ctype}"),
    }
}

/// Why a table cannot be verified.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// A catalog query failed.
    #[error("reading the catalog of {table}: {}", crate::pg::client::server_message(source))]
    Catalog {
        /// The table.
        table: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A column the plan names is missing now.
    #[error("{table}.{column} no longer exists: restart walshift after changing the tables")]
    Column {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// The comparison statement does not compile on the target.
    #[error(
        "cannot verify {table}: the comparison does not compile on the target: {}",
        crate::pg::client::server_message(source)
    )]
    Target {
        /// The table.
        table: String,
        /// The cause.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Compiles the comparison of `tp`, probing the source and target sessions
/// it will run on.
pub async fn compile_table(
    tp: &TablePlan,
    source: &Client,
    target: &Client,
) -> Result<CompareTable, CompileError> {
    let catalog = |table: String| move |source| CompileError::Catalog { table, source };
    let tgt =
        columns(target, &tp.target.to_string()).await.map_err(catalog(tp.target.readable()))?;
    let src =
        columns(source, &tp.source.to_string()).await.map_err(catalog(tp.source.readable()))?;
    let missing = |table: &str, column: &Ident| CompileError::Column {
        table: table.to_owned(),
        column: column.readable().into_owned(),
    };
    // Verified columns, and key columns always (even with `verify = false`).
    let mut cols = Vec::new();
    for (o, out) in tp.outputs.iter().enumerate() {
        if !out.verify && !tp.target_key.contains(&o) {
            continue;
        }
        let ty = tgt
            .get(out.column.as_str())
            .ok_or_else(|| missing(&tp.target.readable(), &out.column))?;
        cols.push(CompareColumn {
            name: out.column.clone(),
            expr: out.expr.clone(),
            target_type: ty.type_name.clone(),
            canon: Canon::for_type(ty.base_type),
        });
    }
    let mut collate_c = Vec::new();
    for (&ki, tk) in tp.key_inputs.iter().zip(tp.target_key_columns()) {
        let s = src
            .get(tp.inputs[ki].name.as_str())
            .ok_or_else(|| missing(&tp.source.readable(), &tp.inputs[ki].name))?;
        let t = tgt.get(tk.as_str()).ok_or_else(|| missing(&tp.target.readable(), tk))?;
        // Only when both sides are collatable and sort differently.
        collate_c.push(matches!((&s.collation, &t.collation), (Some(a), Some(b)) if a != b));
    }
    let mut table = CompareTable { plan: tp.clone(), columns: cols, collate_c, ship: false };
    match source.prepare(&table.source_probe()).await {
        Ok(_) => {}
        Err(e) if e.as_db_error().is_some() => {
            tracing::info!(
                table = %tp.target.readable(),
                reason = %crate::pg::client::server_message(&e),
                "the source cannot evaluate the mapping; verifying by shipping its rows to the target"
            );
            table.ship = true;
        }
        Err(e) => return Err(catalog(tp.source.readable())(e)),
    }
    let probe = if table.ship { table.shipped_hash() } else { table.target_hash(PROBE_SCOPE) };
    target
        .prepare(&probe)
        .await
        .map_err(|source| CompileError::Target { table: tp.target.readable(), source })?;
    Ok(table)
}

const PROBE_SCOPE: crate::transform::compare::Scope =
    crate::transform::compare::Scope::Range { lo: false, hi: false };

/// Compiles every table of `plan` (indexed like `plan.tables`).
pub async fn compile(
    plan: &Plan,
    source: &Client,
    target: &Client,
) -> Result<Vec<CompareTable>, CompileError> {
    let mut out = Vec::with_capacity(plan.tables.len());
    for tp in &plan.tables {
        out.push(compile_table(tp, source, target).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_orders() {
        assert_eq!(sort_order("c", "C", "C", ""), "C");
        assert_eq!(sort_order("c", "POSIX", "POSIX", ""), "C");
        assert_eq!(sort_order("c", "en_US.utf8", "en_US.utf8", ""), "libc:en_US.utf8:en_US.utf8");
        assert_eq!(sort_order("i", "", "", "und-u-ks-level2"), "icu:und-u-ks-level2");
    }
}
