//! Sequences at the write cutover: a target column copied from a
//! sequence-fed source column (identity or serial) whose own default is a
//! sequence gets that sequence set past the source's value plus
//! `[cutover] sequence_margin`, so an insert into the new table after the
//! cutover never reuses a migrated id. The source's sequences stay as they
//! are (the old tables are fenced). `setval` is not transactional: moving a
//! sequence forward is harmless if the cutover then aborts (ids have gaps).

use tokio_postgres::Client;

use crate::state::cutover::MovedSequence;
use crate::transform::Plan;
use crate::transform::plan::bare_column;

/// A target sequence that follows a source sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequencePair {
    /// Target table (readable).
    pub table: String,
    /// Target column (SQL, quoted).
    pub column_sql: String,
    /// Whether the column is part of the target key (its `max()` is cheap).
    pub keyed: bool,
    /// Source sequence (as `pg_get_serial_sequence` names it).
    pub source: String,
    /// Target sequence.
    pub target: String,
    /// Target table (SQL, quoted).
    pub table_sql: String,
}

/// Finds the pairs of `plan`.
pub async fn find(
    source: &Client,
    target: &Client,
    plan: &Plan,
) -> Result<Vec<SequencePair>, tokio_postgres::Error> {
    let mut pairs = Vec::new();
    for t in &plan.tables {
        for (o, output) in t.outputs.iter().enumerate() {
            let Some(column) = bare_column(&output.expr) else { continue };
            if !t.inputs.iter().any(|i| i.name.as_str() == column) {
                continue;
            }
            let source_seq: Option<String> = source
                .query_one(
                    "select pg_get_serial_sequence($1, $2)",
                    &[&t.source.to_string(), &column],
                )
                .await?
                .try_get(0)?;
            let Some(source_seq) = source_seq else { continue };
            let target_seq: Option<String> = target
                .query_one(
                    "select pg_get_serial_sequence($1, $2)",
                    &[&t.target.to_string(), &output.column.as_str()],
                )
                .await?
                .try_get(0)?;
            let Some(target_seq) = target_seq else { continue };
            pairs.push(SequencePair {
                table: t.target.readable(),
                column_sql: output.column.to_string(),
                keyed: t.target_key.contains(&o),
                source: source_seq,
                target: target_seq,
                table_sql: t.target.to_string(),
            });
        }
    }
    Ok(pairs)
}

async fn last_value(client: &Client, sequence: &str) -> Result<Option<i64>, tokio_postgres::Error> {
    client
        .query_one("select pg_sequence_last_value($1::text::regclass)", &[&sequence])
        .await?
        .try_get(0)
}

/// Moves every target sequence of `pairs` past its source's value (and
/// past the largest key already in the target table) plus `margin`; with
/// `apply` false only says what it would move.
pub async fn advance(
    source: &Client,
    target: &Client,
    pairs: &[SequencePair],
    margin: i64,
    apply: bool,
) -> Result<Vec<MovedSequence>, tokio_postgres::Error> {
    let mut moved = Vec::new();
    for p in pairs {
        let source_value = last_value(source, &p.source).await?.unwrap_or(0);
        let largest: Option<i64> = if p.keyed {
            target
                .query_one(
                    &format!("select max({})::bigint from {}", p.column_sql, p.table_sql),
                    &[],
                )
                .await?
                .try_get(0)?
        } else {
            None
        };
        let current = last_value(target, &p.target).await?;
        let wanted = source_value.max(largest.unwrap_or(0)).saturating_add(margin);
        let from = current.unwrap_or(0);
        if current.is_some_and(|c| c >= wanted) {
            continue;
        }
        if apply {
            target
                .execute("select setval($1::text::regclass, $2, true)", &[&p.target, &wanted])
                .await?;
        }
        moved.push(MovedSequence {
            sequence: p.target.clone(),
            source: p.source.clone(),
            from,
            to: wanted,
        });
    }
    Ok(moved)
}
