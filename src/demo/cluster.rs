//! A throwaway PostgreSQL cluster for `walshift demo`: local server binaries,
//! a temp directory, a free loopback port, removed again on stop or drop.
//!
//! When walshift runs as root the cluster runs as the `postgres` OS user
//! (Postgres refuses to run as root).

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Errors starting the demo's throwaway servers (this cluster and
/// the demo's `redis-server`).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No PostgreSQL server binaries.
    #[error(
        "walshift demo needs the PostgreSQL server binaries (initdb, pg_ctl): none found via \
         `pg_config --bindir` or /usr/lib/postgresql/*/bin; install postgresql"
    )]
    NoBinaries,
    /// Running as root without a `postgres` user to run the server as.
    #[error("running as root, walshift demo needs a `postgres` OS user to run the server as")]
    NoPostgresUser,
    /// A step failed.
    #[error("{step} failed: {detail}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// Output or error.
        detail: String,
    },
}

/// A running throwaway cluster.
#[derive(Debug)]
pub struct LocalCluster {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    running: bool,
}

impl LocalCluster {
    /// Initializes and starts a cluster with `wal_level=logical`.
    pub fn start() -> Result<LocalCluster, ClusterError> {
        let bindir = find_bindir().ok_or(ClusterError::NoBinaries)?;
        let run_as = if is_root() {
            Some(postgres_user().ok_or(ClusterError::NoPostgresUser)?)
        } else {
            None
        };
        let dir = std::env::temp_dir().join(format!("walshift-demo-{}", std::process::id()));
        let step = |step: &'static str| {
            move |e: std::io::Error| ClusterError::Step { step, detail: e.to_string() }
        };
        std::fs::create_dir_all(&dir).map_err(step("creating the demo directory"))?;
        let mut cluster = LocalCluster { dir, bindir, port: 0, run_as, running: false };
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&cluster.dir, Some(uid), Some(gid))
                .map_err(step("handing the demo directory to the postgres user"))?;
        }
        let data = cluster.data_dir();
        cluster.run(
            "initdb",
            &["-D", &data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "-N"],
        )?;
        cluster.port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(step("finding a free port"))?
            .port();
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             wal_level = logical\nmax_replication_slots = 10\nmax_wal_senders = 10\n\
             wal_sender_timeout = 10s\nfsync = off\nsynchronous_commit = off\n",
            cluster.port,
            cluster.dir.display()
        );
        let conf_path = Path::new(&data).join("postgresql.conf");
        let mut text =
            std::fs::read_to_string(&conf_path).map_err(step("reading postgresql.conf"))?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text).map_err(step("writing postgresql.conf"))?;
        let log = cluster.dir.join("server.log").display().to_string();
        cluster.run("pg_ctl start", &["-D", &data, "-l", &log, "-w", "-t", "60", "start"])?;
        cluster.running = true;
        Ok(cluster)
    }

    /// A libpq URL for `dbname` as the `postgres` superuser.
    pub fn url(&self, dbname: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{dbname}?sslmode=disable", self.port)
    }

    /// The directory holding data, socket and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server and removes its directory.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.running {
            let data = self.data_dir();
            if let Err(error) = self.run("pg_ctl stop", &["-D", &data, "-m", "fast", "-w", "stop"])
            {
                tracing::warn!(error = %error, "stopping the demo cluster");
            }
            self.running = false;
        }
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(error = %error, dir = %self.dir.display(), "removing the demo directory");
        }
    }

    fn data_dir(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn run(&self, step: &'static str, args: &[&str]) -> Result<(), ClusterError> {
        let program = step.split(' ').next().unwrap_or(step);
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.args(args).stdin(Stdio::null()).current_dir(&self.dir);
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.output().map_err(|e| ClusterError::Step { step, detail: e.to_string() })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ClusterError::Step {
                step,
                detail: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stderr),
                    String::from_utf8_lossy(&out.stdout)
                ),
            })
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.dir.exists() {
            self.shutdown();
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn postgres_user() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let line = passwd.lines().find(|l| l.starts_with("postgres:"))?;
    let mut fields = line.split(':').skip(2);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// The PostgreSQL server binaries: `pg_config --bindir` if it has `initdb`
/// (Debian's `pg_config` may belong to a client-only install of another
/// version), else the newest `/usr/lib/postgresql/<major>/bin`.
pub fn find_bindir() -> Option<PathBuf> {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if let Some(dir) = from_pg_config.filter(|d| d.join("initdb").is_file()) {
        return Some(dir);
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("initdb").is_file())
        .collect();
    candidates.sort_by_key(|d| {
        d.parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
    });
    candidates.pop()
}
