//! walshift's own state schema on the target, created and upgraded from the
//! append-only SQL files under `sql/` (compiled in with `include_str!`).
//!
//! Each file runs once, in one transaction together with its row in
//! `walshift.schema_migrations`, under a transaction-scoped advisory lock so
//! two concurrent `setup` runs cannot both apply it.

use tokio_postgres::Client;

/// Name of the state schema.
pub const STATE_SCHEMA: &str = "walshift";

/// The migrations, in order: (version, name, SQL).
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "state", include_str!("../../sql/0001_state.sql")),
    (2, "backfill", include_str!("../../sql/0002_backfill.sql")),
    (3, "verify", include_str!("../../sql/0003_verify.sql")),
    (4, "instances", include_str!("../../sql/0004_instances.sql")),
    (5, "controller", include_str!("../../sql/0005_controller.sql")),
    (6, "cutover", include_str!("../../sql/0006_cutover.sql")),
];

/// Advisory lock key serializing migrations ("walshift" in ASCII, truncated).
const MIGRATION_LOCK_KEY: i64 = 0x7761_6C73_6869_6674;

/// Whether the state schema exists on the target.
pub async fn state_schema_exists(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "select exists (select 1 from pg_namespace where nspname = $1)",
            &[&STATE_SCHEMA],
        )
        .await?;
    row.try_get(0)
}

/// Registers migration `name` (its slot and publication); returns whether
/// this call created the row (false: it existed).
pub async fn register_migration(
    client: &Client,
    name: &str,
    slot: &str,
    publication: &str,
) -> Result<bool, tokio_postgres::Error> {
    let inserted = client
        .execute(
            "insert into walshift.migrations (name, source_slot, source_publication) \
             values ($1, $2, $3) on conflict (name) do nothing",
            &[&name, &slot, &publication],
        )
        .await?;
    Ok(inserted == 1)
}

/// Removes migration `name` and, by cascade, all its state.
pub async fn forget_migration(client: &Client, name: &str) -> Result<(), tokio_postgres::Error> {
    client.execute("delete from walshift.migrations where name = $1", &[&name]).await?;
    Ok(())
}

/// Whether migration `name` is registered (false without a state schema).
pub async fn migration_registered(
    client: &Client,
    name: &str,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "select to_regclass('walshift.migrations') is not null \
             and exists (select 1 from walshift.migrations where name = $1)",
            &[&name],
        )
        .await;
    match row {
        Ok(row) => row.try_get(0),
        // The planner resolves the table even behind `and`: no table, no
        // registration.
        Err(e) if e.as_db_error().is_some_and(|db| db.code().code() == "42P01") => Ok(false),
        Err(e) => Err(e),
    }
}

/// How many migrations other than `name` the state schema holds.
pub async fn other_migrations(client: &Client, name: &str) -> Result<i64, tokio_postgres::Error> {
    client
        .query_one("select count(*) from walshift.migrations where name <> $1", &[&name])
        .await?
        .try_get(0)
}

/// Applies every migration not applied yet; returns how many ran.
pub async fn migrate(client: &mut Client) -> Result<usize, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("select pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY]).await?;
    tx.batch_execute(
        "create schema if not exists walshift; \
         create table if not exists walshift.schema_migrations ( \
             version int primary key, name text not null, \
             applied_at timestamptz not null default now())",
    )
    .await?;
    let current: i32 = tx
        .query_one("select coalesce(max(version), 0) from walshift.schema_migrations", &[])
        .await?
        .try_get(0)?;
    let mut applied = 0;
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > current) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "insert into walshift.schema_migrations (version, name) values ($1, $2)",
            &[version, name],
        )
        .await?;
        applied += 1;
    }
    tx.commit().await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, (version, _, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(usize::try_from(*version).unwrap(), i + 1);
            assert!(!sql.trim().is_empty());
        }
    }
}
