//! PostgreSQL clusters and per-test databases.
//!
//! - [`PgCluster::shared`]: one cluster per test process (trust auth, `wal_level=logical`),
//!   or the server named by `WALSHIFT_TEST_PG_URL` (a superuser URL) when that is set.
//! - [`PgCluster::start`]: a private cluster for tests that need special settings
//!   (password auth, TLS, `wal_level=replica`, extra GUCs); always started locally.
//! - [`TestDb`]: a fresh database per test; dropping it terminates the database's
//!   backends (walsenders included), drops its replication slots and then the database.
//!   Tests derive slot and publication names from it so parallel tests never collide.
//!
//! Local clusters run `initdb`/`pg_ctl` from `pg_config --bindir` (falling back to the
//! newest `/usr/lib/postgresql/<n>/bin`, or `WALSHIFT_TEST_PG_BINDIR`), as the `postgres`
//! OS user when the tests run as root, in a temp directory that also holds the unix
//! socket. The unix socket always trusts the `postgres` superuser: the harness
//! administers through it; tests connect over TCP on `127.0.0.1:<free port>`, where
//! [`Auth`] and [`ClusterOptions::require_tls`] apply. Cleanup is described in
//! [`super`]'s module doc.
//!
//! Caveat for test authors: creating a logical slot waits until every transaction that
//! is running in the *cluster* at that moment has finished, so a test that keeps a
//! transaction open on the shared cluster delays slot creation in the others.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio_postgres::error::SqlState;
use tokio_postgres::tls::NoTlsStream;
use tokio_postgres::{Client, Config, Connection, NoTls, Socket};

use super::{OsUser, Reaper, block_on_thread, free_port, running_as_root, unique_suffix};

/// Superuser URL of an existing server that [`PgCluster::shared`] uses instead of its own.
const PG_URL_ENV: &str = "WALSHIFT_TEST_PG_URL";
/// Directory with `initdb`, `pg_ctl`, `psql`, … overriding `pg_config --bindir`.
const PG_BINDIR_ENV: &str = "WALSHIFT_TEST_PG_BINDIR";
/// The bootstrap superuser of local clusters, trusted on the unix socket.
const SUPERUSER: &str = "postgres";
/// How often `pg_ctl start` is retried with a new port when the port was taken meanwhile.
const START_ATTEMPTS: u32 = 5;
/// Upper bound for `pg_ctl -w` start and stop.
const PG_CTL_TIMEOUT_SECS: &str = "60";
/// How long dropping a [`TestDb`] waits for terminated walsenders to release their slots.
const SLOT_RELEASE_TIMEOUT: Duration = Duration::from_secs(30);

/// `wal_level` of a local cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WalLevel {
    /// What walshift needs.
    #[default]
    Logical,
    /// Physical replication only: logical slots cannot be created.
    Replica,
}

/// Authentication on the cluster's TCP lines (`host all` and `host replication`).
#[derive(Clone, Debug, Default)]
pub enum Auth {
    /// Any role, no password.
    #[default]
    Trust,
    /// `md5`; the role `user` (login, replication, superuser) gets an md5-hashed password.
    Md5 { user: String, password: String },
    /// `scram-sha-256`; the role `user` gets a SCRAM-hashed password.
    Scram { user: String, password: String },
}

impl Auth {
    fn hba_method(&self) -> &'static str {
        match self {
            Auth::Trust => "trust",
            Auth::Md5 { .. } => "md5",
            Auth::Scram { .. } => "scram-sha-256",
        }
    }
}

/// How [`PgCluster::start`] sets up a local cluster. `Default` is what the shared
/// cluster uses.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    pub wal_level: WalLevel,
    pub auth: Auth,
    /// Serve TLS with a certificate for `localhost`/`127.0.0.1` signed by a throwaway CA
    /// ([`PgCluster::ca_cert_path`]).
    pub tls: bool,
    /// Only `hostssl` TCP lines, so plaintext TCP connections are refused. Implies `tls`.
    pub require_tls: bool,
    /// Extra `postgresql.conf` settings, applied after the harness defaults.
    pub settings: Vec<(String, String)>,
}

/// A PostgreSQL server: local (started and owned by the harness) or external
/// (`WALSHIFT_TEST_PG_URL`, shared cluster only).
pub struct PgCluster {
    /// Superuser connection to the `postgres` database (unix socket for local clusters).
    admin: Config,
    url: UrlBase,
    /// `user[:password]` that [`TestDb::url`] connects as.
    default_userinfo: String,
    local: Option<LocalServer>,
}

impl PgCluster {
    /// The process-wide cluster (trust, `wal_level=logical`), started on first use, or the
    /// server at `WALSHIFT_TEST_PG_URL`. It is never dropped: the reaper removes it when
    /// the test process exits.
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(|| match std::env::var(PG_URL_ENV) {
            Ok(url) => PgCluster::external(&url),
            Err(_) => PgCluster::start(ClusterOptions::default()),
        })
    }

    fn external(url: &str) -> PgCluster {
        let admin: Config =
            url.parse().unwrap_or_else(|err| panic!("{PG_URL_ENV} is not a valid URL: {err}"));
        let url = UrlBase::parse(url);
        PgCluster { admin, default_userinfo: url.userinfo.clone(), url, local: None }
    }

    /// Starts a private local cluster; blocks until it accepts connections.
    pub fn start(options: ClusterOptions) -> PgCluster {
        let started = Instant::now();
        let mut server = LocalServer::create();
        server.initdb();
        if options.tls || options.require_tls {
            server.ca_cert = Some(server.generate_certificates());
        }
        server.write_hba(&options);
        let port = server.start_on_free_port(&options);
        let mut admin = Config::new();
        admin.host_path(&server.dir).port(port).user(SUPERUSER).dbname("postgres");

        let login = match &options.auth {
            Auth::Trust => None,
            Auth::Md5 { user, password } => Some((user, password, "md5")),
            Auth::Scram { user, password } => Some((user, password, "scram-sha-256")),
        };
        let default_userinfo = match login {
            None => SUPERUSER.to_owned(),
            Some((user, password, encryption)) => {
                let sql = format!(
                    "set password_encryption = '{encryption}';
                     create role {} with login superuser replication password {}",
                    quote_ident(user),
                    quote_literal(password),
                );
                block_on_thread(async {
                    connect_config(&admin)
                        .await
                        .expect("connect to the new cluster as superuser")
                        .batch_execute(&sql)
                        .await
                })
                .unwrap_or_else(|err| panic!("create the login role {user}: {err}"));
                format!("{}:{}", url_encode(user), url_encode(password))
            }
        };
        eprintln!(
            "test postgres on 127.0.0.1:{port} in {} started in {} ms",
            server.dir.display(),
            started.elapsed().as_millis()
        );
        PgCluster {
            admin,
            url: UrlBase {
                scheme: "postgres".to_owned(),
                userinfo: String::new(),
                host: format!("127.0.0.1:{port}"),
                query: String::new(),
            },
            default_userinfo,
            local: Some(server),
        }
    }

    /// `host:port` that tests connect to over TCP.
    pub fn host_port(&self) -> &str {
        &self.url.host
    }

    /// The CA certificate that signed the server certificate (for `sslrootcert=`).
    /// Panics unless the cluster was started with `tls`/`require_tls`.
    pub fn ca_cert_path(&self) -> &Path {
        self.local
            .as_ref()
            .and_then(|server| server.ca_cert.as_deref())
            .expect("ca_cert_path() needs a local cluster started with ClusterOptions::tls")
    }

    /// Restarts a local cluster with `pg_ctl restart -m <mode>` (`fast`,
    /// `immediate`), on the same port; blocks until it accepts connections.
    pub fn restart_with(&self, mode: &str) {
        let server = self.local.as_ref().expect("restart_with() needs a local cluster");
        let log = server.dir.join("postgres.log");
        let mut pg_ctl = server.command("pg_ctl");
        pg_ctl.arg("-D").arg(&server.data).arg("-l").arg(&log).args([
            "-m",
            mode,
            "-w",
            "-t",
            PG_CTL_TIMEOUT_SECS,
            "-s",
            "restart",
        ]);
        let output = run(&mut pg_ctl);
        assert!(
            output.status.success(),
            "pg_ctl restart -m {mode} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A superuser client connected to the `postgres` database.
    pub async fn admin_client(&self) -> Client {
        connect_config(&self.admin).await.expect("connect to the test cluster as superuser")
    }

    /// Stops a local cluster (fast shutdown) and starts it again on the same port, so
    /// settings changed with `ALTER SYSTEM` take effect. `Err` holds what the server
    /// logged when it does not come back (a setting it refuses to start with); it is
    /// then stopped, and [`PgCluster::start_again`] starts it once that is fixed
    /// ([`PgCluster::write_auto_conf`]). Every session is ended, so reconnect after it
    /// ([`TestDb::reconnect`]).
    pub fn restart(&self) -> Result<(), String> {
        let server = self.local.as_ref().expect("restart() needs a local cluster");
        server.stop_fast();
        server.start_existing()
    }

    /// Starts a stopped local cluster (after a failed [`PgCluster::restart`]).
    pub fn start_again(&self) -> Result<(), String> {
        self.local.as_ref().expect("start_again() needs a local cluster").start_existing()
    }

    /// Replaces `postgresql.auto.conf` (the file `ALTER SYSTEM` writes) of a local
    /// cluster with `settings`, e.g. to undo a setting the server refuses to start with.
    pub fn write_auto_conf(&self, settings: &[(&str, &str)]) {
        let server = self.local.as_ref().expect("write_auto_conf() needs a local cluster");
        let mut text = String::from("# written by the walshift test harness\n");
        for (key, value) in settings {
            writeln!(text, "{key} = {}", quote_literal(value)).expect("write to a String");
        }
        let path = server.data.join("postgresql.auto.conf");
        fs::write(&path, text).expect("write postgresql.auto.conf");
        if let Some(user) = server.user {
            std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid))
                .expect("chown postgresql.auto.conf to postgres");
        }
    }
}

/// The files and processes of a local cluster; dropping it stops the server and
/// deletes the directory.
struct LocalServer {
    /// Temp directory: `data/`, the unix socket, `postgres.log`, TLS files.
    dir: PathBuf,
    data: PathBuf,
    bindir: &'static Path,
    /// Who runs the server processes (`None`: the current user).
    user: Option<OsUser>,
    ca_cert: Option<PathBuf>,
    reaper: Reaper,
}

impl LocalServer {
    fn create() -> LocalServer {
        let bindir = bindir();
        let user = if running_as_root() {
            Some(OsUser::lookup(SUPERUSER).expect(
                "running as root, so the test clusters run as the `postgres` OS user, \
                 which does not exist (install postgresql or `useradd -r postgres`)",
            ))
        } else {
            None
        };
        let dir = std::env::temp_dir().join(format!("walshift-pg-{}", unique_suffix()));
        fs::create_dir(&dir).unwrap_or_else(|err| panic!("create {}: {err}", dir.display()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|err| panic!("chmod {}: {err}", dir.display()));
        if let Some(user) = user {
            std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid))
                .unwrap_or_else(|err| panic!("chown {} to postgres: {err}", dir.display()));
        }
        let data = dir.join("data");
        let reaper = Reaper::spawn(
            "pg",
            // Twice: a command interrupted by the first pass may leave something behind.
            r#"for pass in 1 2; do
                 [ -f "$2/postmaster.pid" ] && "$1" stop -D "$2" -m immediate -w -t 30
                 rm -rf "$3"
                 sleep 1
               done"#,
            &[bindir.join("pg_ctl").as_os_str(), data.as_os_str(), dir.as_os_str()],
            user,
        );
        LocalServer { dir, data, bindir, user, ca_cert: None, reaper }
    }

    /// A command for a server binary, run as the server's OS user inside the temp dir.
    fn command(&self, binary: &str) -> Command {
        let mut command = Command::new(self.bindir.join(binary));
        command
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .env_remove("PGDATA")
            .process_group(self.reaper.process_group());
        if let Some(user) = self.user {
            command.uid(user.uid).gid(user.gid);
        }
        command
    }

    fn initdb(&self) {
        let mut initdb = self.command("initdb");
        initdb.arg("-D").arg(&self.data).args([
            "-N",
            "-U",
            SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        let what = match self.user {
            // Typical cause: a TMPDIR below a directory only root may enter.
            Some(_) => format!(
                "initdb as the postgres OS user (it needs search permission on every parent \
                 directory of {})",
                self.dir.display()
            ),
            None => "initdb".to_owned(),
        };
        check_output(&what, &run(&mut initdb));
        let conf = self.data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str("\ninclude = 'walshift_test.conf'\n");
        fs::write(&conf, text).expect("write postgresql.conf");
    }

    /// Self-signed CA + server certificate for `localhost`/`127.0.0.1`; returns the CA path.
    fn generate_certificates(&self) -> PathBuf {
        super::generate_certificates(&self.dir, self.reaper.process_group());
        // The server refuses a key readable by others or owned by someone else.
        let key = self.dir.join("server.key");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod server.key");
        if let Some(user) = self.user {
            for file in ["server.key", "server.crt", "ca.crt"] {
                std::os::unix::fs::chown(self.dir.join(file), Some(user.uid), Some(user.gid))
                    .unwrap_or_else(|err| panic!("chown {file}: {err}"));
            }
        }
        self.dir.join("ca.crt")
    }

    fn write_hba(&self, options: &ClusterOptions) {
        let host = if options.require_tls { "hostssl" } else { "host" };
        let method = options.auth.hba_method();
        let hba = format!(
            "# written by the walshift test harness\n\
             local {:<12} all trust\n\
             local {:<12} all trust\n\
             {host} all all 127.0.0.1/32 {method}\n\
             {host} replication all 127.0.0.1/32 {method}\n",
            "all", "replication",
        );
        fs::write(self.data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
    }

    fn write_settings(&self, options: &ClusterOptions, port: u16) {
        let wal_level = match options.wal_level {
            WalLevel::Logical => "logical",
            WalLevel::Replica => "replica",
        };
        let dir = self.dir.to_str().expect("temp dir path is UTF-8");
        let port = port.to_string();
        let mut settings: Vec<(&str, &str)> = vec![
            ("wal_level", wal_level),
            // Durability is irrelevant for throwaway clusters; speed is not.
            ("fsync", "off"),
            ("synchronous_commit", "off"),
            ("full_page_writes", "off"),
            // Parallel tests each hold slots and walsenders.
            ("max_replication_slots", "64"),
            ("max_wal_senders", "64"),
            // Detect dead replication clients quickly, like production configs should.
            ("wal_sender_timeout", "10s"),
            ("max_connections", "200"),
            ("shared_buffers", "128MB"),
            ("listen_addresses", "127.0.0.1"),
            ("unix_socket_directories", dir),
            ("port", &port),
        ];
        let cert = format!("{dir}/server.crt");
        let key = format!("{dir}/server.key");
        if self.ca_cert.is_some() {
            settings.extend([("ssl", "on"), ("ssl_cert_file", &cert), ("ssl_key_file", &key)]);
        }
        settings.extend(options.settings.iter().map(|(key, value)| (&**key, &**value)));
        let mut text = String::from("# written by the walshift test harness\n");
        for (key, value) in settings {
            writeln!(text, "{key} = {}", quote_literal(value)).expect("write to a String");
        }
        fs::write(self.data.join("walshift_test.conf"), text).expect("write walshift_test.conf");
    }

    /// Starts the server on a free port, retrying with another one when it was taken.
    fn start_on_free_port(&self, options: &ClusterOptions) -> u16 {
        let log = self.dir.join("postgres.log");
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            self.write_settings(options, port);
            let log_len_before = fs::metadata(&log).map_or(0, |meta| meta.len());
            let mut pg_ctl = self.command("pg_ctl");
            pg_ctl.arg("-D").arg(&self.data).arg("-l").arg(&log).args([
                "-w",
                "-t",
                PG_CTL_TIMEOUT_SECS,
                "-s",
                "start",
            ]);
            let output = run(&mut pg_ctl);
            if output.status.success() {
                return port;
            }
            let log_text = fs::read_to_string(&log).unwrap_or_default();
            let new_log = usize::try_from(log_len_before)
                .ok()
                .and_then(|start| log_text.get(start..))
                .unwrap_or(&log_text);
            let port_taken = new_log.contains("could not bind") || new_log.contains("in use");
            if !port_taken || attempt == START_ATTEMPTS {
                panic!(
                    "pg_ctl start failed ({}): {}\n--- postgres.log ---\n{new_log}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        unreachable!("the last attempt panics")
    }
}

impl LocalServer {
    /// `pg_ctl stop -m fast`, when it runs.
    fn stop_fast(&self) {
        if !self.data.join("postmaster.pid").exists() {
            return;
        }
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl.arg("-D").arg(&self.data).args([
            "-m",
            "fast",
            "-w",
            "-t",
            PG_CTL_TIMEOUT_SECS,
            "-s",
            "stop",
        ]);
        check_output("pg_ctl stop", &run(&mut pg_ctl));
    }

    /// `pg_ctl start` with the settings already written; `Err` with the new log lines.
    fn start_existing(&self) -> Result<(), String> {
        let log = self.dir.join("postgres.log");
        let log_len_before = fs::metadata(&log).map_or(0, |meta| meta.len());
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl.arg("-D").arg(&self.data).arg("-l").arg(&log).args([
            "-w",
            "-t",
            PG_CTL_TIMEOUT_SECS,
            "-s",
            "start",
        ]);
        if run(&mut pg_ctl).status.success() {
            return Ok(());
        }
        let log_text = fs::read_to_string(&log).unwrap_or_default();
        Err(usize::try_from(log_len_before)
            .ok()
            .and_then(|start| log_text.get(start..))
            .unwrap_or(&log_text)
            .to_owned())
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let mut clean = true;
        if self.data.join("postmaster.pid").exists() {
            let mut pg_ctl = self.command("pg_ctl");
            pg_ctl.arg("-D").arg(&self.data).args([
                "-m",
                "immediate",
                "-w",
                "-t",
                PG_CTL_TIMEOUT_SECS,
                "-s",
                "stop",
            ]);
            match pg_ctl.output() {
                Ok(output) if output.status.success() => {}
                Ok(output) => {
                    clean = false;
                    eprintln!(
                        "warning: pg_ctl stop of {} failed ({}): {}",
                        self.data.display(),
                        output.status,
                        String::from_utf8_lossy(&output.stderr)
                    );
                }
                Err(err) => {
                    clean = false;
                    eprintln!("warning: could not run pg_ctl stop: {err}");
                }
            }
        }
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            clean = false;
            eprintln!("warning: could not remove {}: {err}", self.dir.display());
        }
        if clean {
            self.reaper.disarm();
        }
        // Otherwise the reaper retries when it is dropped right after this.
    }
}

/// A database of its own for one test, dropped (with its slots) when this is dropped.
pub struct TestDb<'c> {
    cluster: &'c PgCluster,
    name: String,
    /// Superuser session in this database for [`TestDb::execute`].
    client: Client,
}

/// Which walshift objects exist for a test database
/// ([`TestDb::walshift_objects`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalshiftObjects {
    /// The test's replication slot.
    pub slot: bool,
    /// The test's publication.
    pub publication: bool,
    /// The `walshift` state schema.
    pub state_schema: bool,
}

impl WalshiftObjects {
    /// None of them.
    pub const NOTHING: WalshiftObjects =
        WalshiftObjects { slot: false, publication: false, state_schema: false };
    /// All of them.
    pub const EVERYTHING: WalshiftObjects =
        WalshiftObjects { slot: true, publication: true, state_schema: true };
}

impl<'c> TestDb<'c> {
    /// Creates `walshift_test_<unique>` on `cluster`.
    pub async fn new(cluster: &'c PgCluster) -> TestDb<'c> {
        let name = format!("walshift_test_{}", unique_suffix());
        cluster
            .admin_client()
            .await
            .batch_execute(&format!("create database {}", quote_ident(&name)))
            .await
            .unwrap_or_else(|err| panic!("create database {name}: {err}"));
        let client = connect_config(cluster.admin.clone().dbname(&name))
            .await
            .unwrap_or_else(|err| panic!("connect to {name} as superuser: {err}"));
        TestDb { cluster, name, client }
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn cluster(&self) -> &'c PgCluster {
        self.cluster
    }

    /// A TCP URL for this database: as `postgres` on trust clusters, as the role from
    /// [`Auth`] (with its password) on password clusters, as the user of
    /// `WALSHIFT_TEST_PG_URL` on an external server.
    pub fn url(&self) -> String {
        self.cluster.url.url(&self.cluster.default_userinfo, &self.name)
    }

    /// A TCP URL for this database as `user` with `password`.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        let userinfo = format!("{}:{}", url_encode(user), url_encode(password));
        self.cluster.url.url(&userinfo, &self.name)
    }

    /// A new superuser client (its connection task runs on the current runtime).
    pub async fn client(&self) -> Client {
        connect_config(self.cluster.admin.clone().dbname(&self.name))
            .await
            .unwrap_or_else(|err| panic!("connect to {} as superuser: {err}", self.name))
    }

    /// Replaces the session of [`TestDb::execute`] (after a server restart).
    pub async fn reconnect(&mut self) {
        self.client = self.client().await;
    }

    /// Runs `sql` (one or more statements) as superuser; panics on error.
    pub async fn execute(&self, sql: &str) {
        self.client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|err| panic!("in {}: {sql}\nfailed: {err}", self.name));
    }

    /// Which of this test's walshift objects exist: its slot, its
    /// publication, and the `walshift` state schema.
    pub async fn walshift_objects(&self) -> WalshiftObjects {
        let row = self
            .client
            .query_one(
                "select exists (select 1 from pg_replication_slots where slot_name = $1), \
                        exists (select 1 from pg_publication where pubname = $2), \
                        exists (select 1 from pg_namespace where nspname = 'walshift')",
                &[&self.slot_name(), &self.publication_name()],
            )
            .await
            .unwrap_or_else(|err| panic!("in {}: listing walshift objects: {err}", self.name));
        WalshiftObjects { slot: row.get(0), publication: row.get(1), state_schema: row.get(2) }
    }

    /// Creates each missing target table like its source table (`LIKE ...
    /// INCLUDING ALL`, schema created too). Best effort: a source that does
    /// not exist (a bad-input test) is skipped.
    pub async fn create_shadows(&self, tables: &[(&str, &str)]) {
        for (source, target) in tables {
            let schema = target.split('.').next().unwrap_or("public");
            let sql = format!(
                "create schema if not exists {schema}; \
                 create table if not exists {target} (like {source} including all)"
            );
            let _ = self.client.batch_execute(&sql).await;
        }
    }

    /// The logical slot name reserved for this test (unique across the cluster).
    pub fn slot_name(&self) -> String {
        format!("{}_slot", self.name)
    }

    /// The publication name reserved for this test.
    pub fn publication_name(&self) -> String {
        format!("{}_pub", self.name)
    }
}

impl Drop for TestDb<'_> {
    fn drop(&mut self) {
        let admin = &self.cluster.admin;
        let name = self.name.as_str();
        if let Err(err) = block_on_thread(drop_database(admin, name)) {
            eprintln!("warning: could not drop test database {name}: {err}");
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Terminates `name`'s backends and walsenders, drops its slots, then the database.
async fn drop_database(admin: &Config, name: &str) -> Result<(), BoxError> {
    let client = connect_config(admin).await?;
    // Logical walsenders are connected to a database, so this stops them too.
    client
        .execute(
            "select pg_terminate_backend(pid) from pg_stat_activity
             where datname = $1 and pid <> pg_backend_pid()",
            &[&name],
        )
        .await?;
    // Slots outlive sessions, and DROP DATABASE refuses while the database has any.
    let deadline = Instant::now() + SLOT_RELEASE_TIMEOUT;
    loop {
        let slots = client
            .query(
                "select slot_name::text, active_pid from pg_replication_slots
                 where database = $1",
                &[&name],
            )
            .await?;
        if slots.is_empty() {
            break;
        }
        for slot in slots {
            let slot_name: String = slot.get(0);
            if let Some(pid) = slot.get::<_, Option<i32>>(1) {
                client.execute("select pg_terminate_backend($1)", &[&pid]).await?;
                continue;
            }
            match client.execute("select pg_drop_replication_slot($1)", &[&slot_name]).await {
                Ok(_) => {}
                // Re-acquired meanwhile (retried below) or a temporary slot that vanished.
                Err(err)
                    if matches!(
                        err.code(),
                        Some(&SqlState::OBJECT_IN_USE | &SqlState::UNDEFINED_OBJECT)
                    ) => {}
                Err(err) => return Err(err.into()),
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "its replication slots were still active after {SLOT_RELEASE_TIMEOUT:?}"
            )
            .into());
        }
        tokio::time::sleep(super::wait::POLL_INTERVAL).await;
    }
    client
        .batch_execute(&format!("drop database if exists {} with (force)", quote_ident(name)))
        .await?;
    Ok(())
}

/// Connects over the URL (no TLS) and drives the connection on the current runtime.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    spawn_connection(connection);
    Ok(client)
}

async fn connect_config(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    spawn_connection(connection);
    Ok(client)
}

#[expect(
    clippy::disallowed_methods,
    reason = "a client connection of the harness, not a walshift task"
)]
fn spawn_connection(connection: Connection<Socket, NoTlsStream>) {
    // Errors surface on the client's next call; a test database dropped WITH (FORCE)
    // ends its connections on purpose.
    tokio::spawn(async move {
        let _ = connection.await;
    });
}

/// Path of a PostgreSQL binary (`psql`, `pg_recvlogical`, …) of the server installation.
pub fn pg_bin(name: &str) -> PathBuf {
    bindir().join(name)
}

fn bindir() -> &'static Path {
    static BINDIR: OnceLock<PathBuf> = OnceLock::new();
    BINDIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os(PG_BINDIR_ENV) {
            return PathBuf::from(dir);
        }
        walshift::demo::cluster::find_bindir().unwrap_or_else(|| {
            panic!(
                "no PostgreSQL server binaries found: install postgresql-15, put pg_config \
                     on PATH, or set {PG_BINDIR_ENV}"
            )
        })
    })
}

/// Runs `command` to completion, panicking if it cannot be started.
fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|err| panic!("run {:?}: {err}", command.get_program()))
}

fn check_output(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A libpq URL split around the database name.
struct UrlBase {
    scheme: String,
    /// `user[:password]`, percent-encoded, possibly empty.
    userinfo: String,
    /// `host[:port]`.
    host: String,
    /// `?…` or empty.
    query: String,
}

impl UrlBase {
    fn parse(url: &str) -> UrlBase {
        let (scheme, rest) = url.split_once("://").unwrap_or_else(|| {
            panic!("{PG_URL_ENV} must be a URL like postgres://postgres@127.0.0.1:5432/postgres")
        });
        let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
        let (userinfo, host) = authority.rsplit_once('@').unwrap_or(("", authority));
        UrlBase {
            scheme: scheme.to_owned(),
            userinfo: userinfo.to_owned(),
            host: host.to_owned(),
            query: tail.find('?').map_or("", |at| &tail[at..]).to_owned(),
        }
    }

    fn url(&self, userinfo: &str, dbname: &str) -> String {
        let at = if userinfo.is_empty() { "" } else { "@" };
        format!("{}://{userinfo}{at}{}/{dbname}{}", self.scheme, self.host, self.query)
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn url_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            write!(encoded, "%{byte:02X}").expect("write to a String");
        }
    }
    encoded
}

fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}
