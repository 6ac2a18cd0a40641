//! Catalog introspection of the source: settings, tables and their keys,
//! replication slots and publications. Names are always bound parameters.

use tokio_postgres::Client;

use crate::lsn::Lsn;
use crate::pg::sql::QualifiedName;

/// A column of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnInfo {
    /// Column name.
    pub name: String,
    /// `format_type` of its type, e.g. `numeric(20,6)`.
    pub type_name: String,
    /// The type without modifier, usable as a cast target (`numeric`).
    pub cast_type: String,
    /// `pg_attribute.atttypid`.
    pub type_oid: u32,
    /// Whether it is declared `NOT NULL`.
    pub not_null: bool,
    /// Whether inserting without a value fills it (a default, an identity
    /// or a generated column).
    pub has_default: bool,
    /// Whether it is a generated column (cannot be written).
    pub generated: bool,
}

/// What `REPLICA IDENTITY` a table has (`pg_class.relreplident`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `DEFAULT`: the primary key, if there is one.
    Default,
    /// `NOTHING`: updates and deletes carry no old key.
    Nothing,
    /// `FULL`: the whole old row.
    Full,
    /// `USING INDEX`: the columns of a unique index.
    Index,
}

/// A table as the catalog describes it.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// `pg_class.oid`.
    pub oid: u32,
    /// `pg_class.relkind` (`r` table, `p` partitioned table, ...).
    pub relkind: char,
    /// Its replica identity setting.
    pub replica_identity: ReplicaIdentity,
    /// Primary-key columns in key order, if it has a primary key.
    pub primary_key: Option<Vec<String>>,
    /// Columns of the `REPLICA IDENTITY USING INDEX` index, if set.
    pub identity_index: Option<Vec<String>>,
    /// Live columns in `attnum` order.
    pub columns: Vec<ColumnInfo>,
    /// `pg_class.reltuples` (planner estimate; -1 when never analyzed).
    pub estimated_rows: f64,
}

impl TableInfo {
    /// A column by name.
    pub fn column(&self, name: &str) -> Option<&ColumnInfo> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The columns pgoutput sends as the old key of UPDATE/DELETE, or `None`
    /// for `FULL` (every column) and for a table without usable identity.
    pub fn identity_columns(&self) -> Option<&[String]> {
        match self.replica_identity {
            ReplicaIdentity::Default => self.primary_key.as_deref(),
            ReplicaIdentity::Index => self.identity_index.as_deref(),
            ReplicaIdentity::Full | ReplicaIdentity::Nothing => None,
        }
    }

    /// Whether UPDATE and DELETE can be replicated at all.
    pub fn has_usable_identity(&self) -> bool {
        match self.replica_identity {
            ReplicaIdentity::Full => true,
            ReplicaIdentity::Nothing => false,
            _ => self.identity_columns().is_some(),
        }
    }
}

/// The value of a server setting (`current_setting`).
pub async fn setting(client: &Client, name: &str) -> Result<String, tokio_postgres::Error> {
    let row = client.query_one("select current_setting($1)", &[&name]).await?;
    row.try_get(0)
}

/// Looks a table up; `None` if it does not exist.
pub async fn table_info(
    client: &Client,
    table: &QualifiedName,
) -> Result<Option<TableInfo>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "select c.oid, c.relkind::text, c.relreplident::text, c.reltuples::float8 \
             from pg_class c join pg_namespace n on n.oid = c.relnamespace \
             where n.nspname = $1 and c.relname = $2",
            &[&table.raw_schema(), &table.raw_name()],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let oid: u32 = row.try_get(0)?;
    let relkind: String = row.try_get(1)?;
    let replident: String = row.try_get(2)?;
    let estimated_rows: f64 = row.try_get(3)?;
    let replica_identity = match replident.as_str() {
        "n" => ReplicaIdentity::Nothing,
        "f" => ReplicaIdentity::Full,
        "i" => ReplicaIdentity::Index,
        _ => ReplicaIdentity::Default,
    };
    let index_columns = |flag: &'static str| {
        let sql = format!(
            "select a.attname::text from pg_index i \
             join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey) \
             where i.indrelid = $1 and i.{flag} \
             order by array_position(i.indkey::int2[], a.attnum)"
        );
        async move {
            let rows = client.query(&sql, &[&oid]).await?;
            let cols = rows.iter().map(|r| r.try_get(0)).collect::<Result<Vec<String>, _>>()?;
            Ok::<_, tokio_postgres::Error>(if cols.is_empty() { None } else { Some(cols) })
        }
    };
    let primary_key = index_columns("indisprimary").await?;
    let identity_index = index_columns("indisreplident").await?;
    let columns = client
        .query(
            "select attname::text, format_type(atttypid, atttypmod), \
                    format_type(atttypid, null), atttypid, attnotnull, \
                    atthasdef or attidentity <> '' or attgenerated <> '', attgenerated <> '' \
             from pg_attribute where attrelid = $1 and attnum > 0 and not attisdropped \
             order by attnum",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(ColumnInfo {
                name: r.try_get(0)?,
                type_name: r.try_get(1)?,
                cast_type: r.try_get(2)?,
                type_oid: r.try_get(3)?,
                not_null: r.try_get(4)?,
                has_default: r.try_get(5)?,
                generated: r.try_get(6)?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    Ok(Some(TableInfo {
        oid,
        relkind: relkind.chars().next().unwrap_or('?'),
        replica_identity,
        primary_key,
        identity_index,
        columns,
        estimated_rows,
    }))
}

/// Column sets of a table's unique indexes that can serve as the arbiter of
/// `INSERT ... ON CONFLICT (cols)`: valid, non-partial, non-deferrable
/// indexes on plain columns. Each set is sorted by name.
pub async fn unique_keys(
    client: &Client,
    table_oid: u32,
) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select array(select a.attname::text from pg_attribute a \
                          where a.attrelid = i.indrelid and a.attnum = any(i.indkey) \
                          order by a.attname) \
             from pg_index i \
             where i.indrelid = $1 and i.indisunique and i.indisvalid and i.indimmediate \
               and i.indpred is null and i.indexprs is null",
            &[&table_oid],
        )
        .await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}

/// Foreign keys among `table_oids`, as `(referencing, referenced)` pairs.
pub async fn foreign_keys_among(
    client: &Client,
    table_oids: &[u32],
) -> Result<Vec<(u32, u32)>, tokio_postgres::Error> {
    let oids: Vec<tokio_postgres::types::Oid> = table_oids.to_vec();
    let rows = client
        .query(
            "select conrelid, confrelid from pg_constraint \
             where contype = 'f' and conrelid = any($1) and confrelid = any($1) \
               and conrelid <> confrelid",
            &[&oids],
        )
        .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotInfo {
    /// Slot name.
    pub name: String,
    /// Output plugin (`None` for physical slots).
    pub plugin: Option<String>,
    /// Database of a logical slot.
    pub database: Option<String>,
    /// Whether it is temporary.
    pub temporary: bool,
    /// Walsender process using it, if any.
    pub active_pid: Option<i32>,
    /// How far the consumer confirmed.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// WAL the slot keeps from being recycled, in bytes.
    pub retained_wal_bytes: Option<i64>,
    /// `wal_status`: `reserved`, `extended`, `unreserved`, or `lost` (the
    /// WAL it needs was removed: the slot can never be read again).
    pub wal_status: Option<String>,
}

/// Looks a replication slot up by name.
pub async fn slot_info(
    client: &Client,
    name: &str,
) -> Result<Option<SlotInfo>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "select slot_name::text, plugin::text, database::text, temporary, active_pid, \
             confirmed_flush_lsn::text, \
             pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8, wal_status::text \
             from pg_replication_slots where slot_name = $1",
            &[&name],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let confirmed: Option<String> = row.try_get(5)?;
    Ok(Some(SlotInfo {
        name: row.try_get(0)?,
        plugin: row.try_get(1)?,
        database: row.try_get(2)?,
        temporary: row.try_get(3)?,
        active_pid: row.try_get(4)?,
        confirmed_flush_lsn: confirmed.and_then(|s| s.parse().ok()),
        retained_wal_bytes: row.try_get(6)?,
        wal_status: row.try_get(7)?,
    }))
}

/// Slots in use and `max_replication_slots`.
pub async fn slot_capacity(client: &Client) -> Result<(i64, i64), tokio_postgres::Error> {
    let row = client
        .query_one(
            "select (select count(*) from pg_replication_slots), \
             current_setting('max_replication_slots')::int8",
            &[],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// A publication and what it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationInfo {
    /// `FOR ALL TABLES`.
    pub all_tables: bool,
    /// Tables it publishes, as (schema, table).
    pub tables: Vec<(String, String)>,
    /// Whether it publishes INSERT, UPDATE, DELETE, TRUNCATE.
    pub operations: [bool; 4],
    /// The role that owns it.
    pub owner: String,
    /// Whether the connected role may alter or drop it (it is, or is a
    /// member of, the owner; or a superuser).
    pub owned: bool,
    /// Tables published with a row filter or a column list (PostgreSQL
    /// 15+), as (schema, table, what).
    pub filtered: Vec<(String, String, String)>,
    /// `publish_via_partition_root`: changes to a partition are published
    /// as changes of the partitioned table it belongs to (otherwise as the
    /// partition's own, which a mapping of the partitioned table never sees).
    pub via_root: bool,
}

impl PublicationInfo {
    /// Whether `table` is published.
    pub fn covers(&self, table: &QualifiedName) -> bool {
        self.all_tables
            || self.tables.iter().any(|(s, t)| s == table.raw_schema() && t == table.raw_name())
    }
}

/// Looks a publication up in the connected database.
pub async fn publication_info(
    client: &Client,
    name: &str,
) -> Result<Option<PublicationInfo>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "select puballtables, pubinsert, pubupdate, pubdelete, pubtruncate, \
                    pg_get_userbyid(pubowner)::text, pg_has_role(pubowner, 'USAGE'), \
                    current_setting('server_version_num')::int, pubviaroot \
             from pg_publication where pubname = $1",
            &[&name],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let tables = client
        .query(
            "select schemaname::text, tablename::text from pg_publication_tables \
             where pubname = $1 order by 1, 2",
            &[&name],
        )
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
    let version: i32 = row.try_get(7)?;
    // Row filters and column lists exist from PostgreSQL 15 on.
    let filtered = if version >= 150_000 {
        client
            .query(
                "select n.nspname::text, c.relname::text, \
                        concat_ws(' and ', \
                            case when r.prqual is not null then 'a row filter (where ' || \
                                pg_get_expr(r.prqual, r.prrelid) || ')' end, \
                            case when r.prattrs is not null then 'a column list' end) \
                 from pg_publication_rel r join pg_publication p on p.oid = r.prpubid \
                 join pg_class c on c.oid = r.prrelid join pg_namespace n on n.oid = c.relnamespace \
                 where p.pubname = $1 and (r.prqual is not null or r.prattrs is not null) \
                 order by 1, 2",
                &[&name],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?
    } else {
        Vec::new()
    };
    Ok(Some(PublicationInfo {
        all_tables: row.try_get(0)?,
        tables,
        operations: [row.try_get(1)?, row.try_get(2)?, row.try_get(3)?, row.try_get(4)?],
        owner: row.try_get(5)?,
        owned: row.try_get(6)?,
        filtered,
        via_root: row.try_get(8)?,
    }))
}

/// The partitioned tables (`relkind 'p'`) among `tables`.
pub async fn partitioned_tables(
    client: &Client,
    tables: &[&QualifiedName],
) -> Result<Vec<QualifiedName>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for table in tables {
        let partitioned: bool = client
            .query_one(
                "select exists (select 1 from pg_class c \
                 join pg_namespace n on n.oid = c.relnamespace \
                 where n.nspname = $1 and c.relname = $2 and c.relkind = 'p')",
                &[&table.raw_schema(), &table.raw_name()],
            )
            .await?
            .try_get(0)?;
        if partitioned {
            out.push((*table).clone());
        }
    }
    Ok(out)
}

/// Who owns a table and whether the connected role has the owner's
/// privileges (it is, or is a member of, the owner; or a superuser).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableOwner {
    /// The table.
    pub table: QualifiedName,
    /// Its owner.
    pub owner: String,
    /// Whether the connected role acts as the owner.
    pub owned: bool,
}

/// The owners of the `tables` that exist.
pub async fn table_owners(
    client: &Client,
    tables: &[&QualifiedName],
) -> Result<Vec<TableOwner>, tokio_postgres::Error> {
    let mut owners = Vec::new();
    for table in tables {
        let row = client
            .query_opt(
                "select pg_get_userbyid(c.relowner)::text, pg_has_role(c.relowner, 'USAGE') \
                 from pg_class c join pg_namespace n on n.oid = c.relnamespace \
                 where n.nspname = $1 and c.relname = $2",
                &[&table.raw_schema(), &table.raw_name()],
            )
            .await?;
        if let Some(row) = row {
            owners.push(TableOwner {
                table: (*table).clone(),
                owner: row.try_get(0)?,
                owned: row.try_get(1)?,
            });
        }
    }
    Ok(owners)
}

/// The connected role and what it may create in its database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleInfo {
    /// `current_user`.
    pub user: String,
    /// `current_database()`.
    pub database: String,
    /// Whether it may create schemas and publications in the database
    /// (`CREATE` on it).
    pub create_on_database: bool,
}

/// [`RoleInfo`] of the connected session.
pub async fn role_info(client: &Client) -> Result<RoleInfo, tokio_postgres::Error> {
    let row = client
        .query_one(
            "select current_user::text, current_database()::text, \
                    has_database_privilege(current_database(), 'CREATE')",
            &[],
        )
        .await?;
    Ok(RoleInfo {
        user: row.try_get(0)?,
        database: row.try_get(1)?,
        create_on_database: row.try_get(2)?,
    })
}

/// A schema as the connected role may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaAccess {
    /// Its owner, if it exists.
    pub owner: Option<String>,
    /// Whether the connected role may create objects in it (`USAGE` and
    /// `CREATE`; false when it does not exist).
    pub can_create_in: bool,
}

/// How the connected role may use schema `name`.
pub async fn schema_access(
    client: &Client,
    name: &str,
) -> Result<SchemaAccess, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "select pg_get_userbyid(nspowner)::text, \
                    has_schema_privilege(oid, 'USAGE') and has_schema_privilege(oid, 'CREATE') \
             from pg_namespace where nspname = $1",
            &[&name],
        )
        .await?;
    Ok(match row {
        Some(row) => SchemaAccess { owner: row.try_get(0)?, can_create_in: row.try_get(1)? },
        None => SchemaAccess { owner: None, can_create_in: false },
    })
}

/// The sequences that feed columns of `table` (identity and serial
/// columns), as `pg_get_serial_sequence` names them.
pub async fn serial_sequences(
    client: &Client,
    table: &QualifiedName,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select s from (select pg_get_serial_sequence($1, attname) as s \
                            from pg_attribute where attrelid = to_regclass($1) \
                            and attnum > 0 and not attisdropped order by attnum) x \
             where s is not null",
            &[&table.to_string()],
        )
        .await?;
    rows.iter().map(|r| r.try_get(0)).collect()
}
