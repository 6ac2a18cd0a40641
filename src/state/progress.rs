//! The applied position of the stream (`walshift.progress`), written in the
//! same target transaction as the rows it covers (see `docs/apply.md`).

use tokio_postgres::Client;
use tokio_postgres::types::PgLsn;

use crate::lsn::Lsn;

/// Records the applied position; runs in every apply transaction.
pub const SAVE: &str = "insert into walshift.progress (migration, applied_lsn, updated_at) \
     values ($1, $2, now()) on conflict (migration) do update \
     set applied_lsn = excluded.applied_lsn, updated_at = excluded.updated_at";

/// Reads the applied position.
pub const LOAD: &str = "select applied_lsn from walshift.progress where migration = $1";

/// Reads the applied position of `migration` (zero before the first commit).
pub async fn load(client: &Client, migration: &str) -> Result<Lsn, tokio_postgres::Error> {
    let row = client.query_opt(LOAD, &[&migration]).await?;
    match row {
        Some(row) => {
            let lsn: PgLsn = row.try_get(0)?;
            Ok(Lsn(u64::from(lsn)))
        }
        None => Ok(Lsn::ZERO),
    }
}
