//! The running instance of a migration (`walshift.instances`): where its
//! HTTP listener answers, so `walshift status` can ask it.

use tokio_postgres::Client;

/// This host's name (`localhost` when it cannot be read), as instances,
/// leases and operator commands record it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// A registered instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Process id.
    pub pid: i32,
    /// Host name.
    pub host: String,
    /// `ip:port` of its HTTP listener.
    pub http_addr: String,
}

/// Records this process as the instance of `migration`.
pub async fn register(
    client: &Client,
    migration: &str,
    instance: &Instance,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "insert into walshift.instances (migration, pid, host, http_addr) \
             values ($1, $2, $3, $4) on conflict (migration) do update set pid = excluded.pid, \
             host = excluded.host, http_addr = excluded.http_addr, started_at = now()",
            &[&migration, &instance.pid, &instance.host, &instance.http_addr],
        )
        .await?;
    Ok(())
}

/// The last instance registered for `migration`, if the table exists and
/// has one.
pub async fn lookup(
    client: &Client,
    migration: &str,
) -> Result<Option<Instance>, tokio_postgres::Error> {
    let exists: bool = client
        .query_one("select to_regclass('walshift.instances') is not null", &[])
        .await?
        .try_get(0)?;
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_opt(
            "select pid, host, http_addr from walshift.instances where migration = $1",
            &[&migration],
        )
        .await?;
    row.map(|r| Ok(Instance { pid: r.try_get(0)?, host: r.try_get(1)?, http_addr: r.try_get(2)? }))
        .transpose()
}
