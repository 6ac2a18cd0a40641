//! `walshift teardown`: drop the slot, the publication and walshift's state.
//!
//! A forgotten logical slot pins WAL on the source forever, so this must be
//! easy — and safe: without `--yes` it only lists what it would drop (and how
//! much WAL the slot retains) and exits non-zero. The user's own tables are
//! never touched. The state schema is shared by every migration using the
//! target, so only this migration's rows are deleted, and the schema itself
//! is dropped when no other migration is registered in it.

use std::io::Write;

use postgres_protocol::escape::escape_identifier;
use tokio_postgres::Client;

use crate::config::ValidatedConfig;
use crate::error::Error;
use crate::pg::catalog;
use crate::pg::client::{self, SessionLimits};
use crate::pg::migrate;

/// What exists and would be dropped.
#[derive(Debug, Default)]
struct Inventory {
    slot: Option<catalog::SlotInfo>,
    publication: bool,
    /// The publication's owner, when walshift's role may not drop it (the
    /// tables' owner created it: docs/security.md).
    publication_owner: Option<String>,
    state_schema: bool,
    other_migrations: i64,
    /// Old tables carrying the write cutover's fence trigger.
    fenced: Vec<String>,
}

/// Lists, and with `yes` drops, walshift's objects (with `drop_fence`,
/// also the write cutover's fence triggers). Prints to `out`.
pub async fn run(
    cfg: &ValidatedConfig,
    yes: bool,
    drop_fence: bool,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let source = client::connect(&cfg.source.url, "teardown", SessionLimits::ADMIN).await?;
    let target = client::connect(&cfg.target.url, "teardown", SessionLimits::ADMIN).await?;
    // A newer walshift's schema may come with objects this one does not
    // know: refused. An edited one is still dropped (that is the way out).
    match migrate::check(&target).await {
        Ok(_) => {}
        Err(e @ migrate::SchemaError::Modified(_)) => {
            tracing::warn!(error = %e, "tearing down a state schema migrated from other SQL");
        }
        Err(e) => return Err(e.into()),
    }
    let inventory = inventory(cfg, &source, &target).await?;
    let slot_name = &cfg.source.slot;
    let publication = &cfg.source.publication;

    let mut lines = Vec::new();
    if let Some(slot) = &inventory.slot {
        let retained = slot.retained_wal_bytes.map(format_bytes).unwrap_or_else(|| "no".into());
        let active =
            slot.active_pid.map(|pid| format!(", in use by pid {pid}")).unwrap_or_default();
        lines.push(format!(
            "replication slot {slot_name} on the source (retains {retained} of WAL{active})"
        ));
    }
    let mut kept = Vec::new();
    if inventory.publication {
        match &inventory.publication_owner {
            None => lines.push(format!("publication {publication} on the source")),
            Some(owner) => kept.push(format!(
                "publication {publication} on the source stays: it belongs to role {owner}, \
                 who may drop it: drop publication {}",
                escape_identifier(publication)
            )),
        }
    }
    if inventory.state_schema {
        if inventory.other_migrations > 0 {
            lines.push(format!(
                "state of migration {} in schema {} on the target (the schema stays: {} other migration(s) use it)",
                cfg.migration_name, migrate::STATE_SCHEMA, inventory.other_migrations
            ));
        } else {
            lines.push(format!("schema {} (walshift state) on the target", migrate::STATE_SCHEMA));
        }
    }
    for table in &inventory.fenced {
        if drop_fence {
            lines.push(format!(
                "fence trigger {} on {table} (the old table accepts writes again)",
                crate::cutover::fence::TRIGGER
            ));
        } else {
            kept.push(format!(
                "fence trigger {} on {table} stays (it rejects writes to the old table; --drop-fence drops it)",
                crate::cutover::fence::TRIGGER
            ));
        }
    }
    let write_err = Error::Output;
    for line in &kept {
        writeln!(out, "keeping: {line}").map_err(write_err)?;
    }
    if lines.is_empty() {
        writeln!(
            out,
            "nothing to drop: no slot, publication or state schema of migration {} (nor a fence \
             trigger to drop)",
            cfg.migration_name
        )
        .map_err(write_err)?;
        return Ok(());
    }
    if !yes {
        writeln!(out, "would drop:").map_err(write_err)?;
        for line in &lines {
            writeln!(out, "  - {line}").map_err(write_err)?;
        }
        return Err(Error::ConfirmationRequired);
    }

    if let Some(slot) = &inventory.slot
        && let Some(pid) = slot.active_pid
    {
        return Err(Error::Precondition(format!(
            "replication slot {slot_name} is in use by process {pid} (is walshift still running?): stop it first; nothing was dropped"
        )));
    }
    if inventory.slot.is_some() {
        source
            .execute("select pg_drop_replication_slot($1)", &[slot_name])
            .await
            .map_err(Error::sql(format!("dropping replication slot {slot_name}")))?;
        writeln!(out, "dropped replication slot {slot_name}").map_err(write_err)?;
    }
    if inventory.publication && inventory.publication_owner.is_none() {
        source
            .batch_execute(&format!(
                "drop publication if exists {}",
                escape_identifier(publication)
            ))
            .await
            .map_err(Error::sql(format!("dropping publication {publication}")))?;
        writeln!(out, "dropped publication {publication}").map_err(write_err)?;
    }
    if drop_fence && !inventory.fenced.is_empty() {
        let tables = fence_tables(cfg);
        let dropped = crate::cutover::fence::drop_fence(&source, &cfg.migration_name, &tables)
            .await
            .map_err(|e| Error::Failed(e.to_string()))?;
        for table in dropped {
            writeln!(out, "dropped fence trigger {} on {table}", crate::cutover::fence::TRIGGER)
                .map_err(write_err)?;
        }
    }
    if inventory.state_schema {
        drop_state(cfg, &target, inventory.other_migrations, out).await?;
    }
    Ok(())
}

fn fence_tables(cfg: &ValidatedConfig) -> Vec<crate::cutover::fence::FencedTable> {
    cfg.tables
        .iter()
        .map(|t| crate::cutover::fence::FencedTable {
            source: t.source.clone(),
            target: t.target.clone(),
        })
        .collect()
}

async fn drop_state(
    cfg: &ValidatedConfig,
    target: &Client,
    other_migrations: i64,
    out: &mut dyn Write,
) -> Result<(), Error> {
    if other_migrations > 0 {
        migrate::forget_migration(target, &cfg.migration_name)
            .await
            .map_err(Error::sql("deleting this migration's state"))?;
        writeln!(out, "deleted the state of migration {}", cfg.migration_name)
            .map_err(Error::Output)?;
    } else {
        target
            .batch_execute(&format!(
                "drop schema if exists {} cascade",
                escape_identifier(migrate::STATE_SCHEMA)
            ))
            .await
            .map_err(Error::sql("dropping the state schema"))?;
        writeln!(out, "dropped schema {}", migrate::STATE_SCHEMA).map_err(Error::Output)?;
    }
    Ok(())
}

async fn inventory(
    cfg: &ValidatedConfig,
    source: &Client,
    target: &Client,
) -> Result<Inventory, Error> {
    let ctx = "listing walshift's objects";
    let slot = catalog::slot_info(source, &cfg.source.slot).await.map_err(Error::sql(ctx))?;
    let publication_info = catalog::publication_info(source, &cfg.source.publication)
        .await
        .map_err(Error::sql(ctx))?;
    let publication = publication_info.is_some();
    let publication_owner = publication_info.filter(|p| !p.owned).map(|p| p.owner);
    let state_schema = migrate::state_schema_exists(target).await.map_err(Error::sql(ctx))?;
    // Whether the schema may be dropped depends on this count, so a failure
    // is an error: guessing 0 would drop every other migration's state.
    let other_migrations = if state_schema {
        migrate::other_migrations(target, &cfg.migration_name).await.map_err(Error::sql(
            format!(
                "nothing was dropped: counting the other migrations in schema {} on the target \
                 (it is dropped only when none is left) failed",
                migrate::STATE_SCHEMA
            ),
        ))?
    } else {
        0
    };
    let mut fenced = Vec::new();
    for t in fence_tables(cfg) {
        let n = crate::cutover::fence::installed(source, std::slice::from_ref(&t))
            .await
            .map_err(Error::sql(ctx))?;
        if n > 0 {
            fenced.push(t.source.readable());
        }
    }
    Ok(Inventory { slot, publication, publication_owner, state_schema, other_migrations, fenced })
}

/// `1.5 GiB`-style sizes for humans.
pub fn format_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_sizes() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(16 * 1024 * 1024), "16.0 MiB");
        assert_eq!(format_bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }
}
