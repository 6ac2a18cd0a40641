//! Running the real `walshift` binary against a test database.
//!
//! [`Walshift`] writes a config file into a private temp directory (removed
//! on drop) and runs commands with it; [`TailProcess`] runs `walshift tail`
//! in the background and collects its JSON lines.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use walshift::runtime::tasks::spawn_named;

use super::pg::TestDb;
use super::unique_suffix;
use super::wait::wait_until;

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_walshift")
}

/// Runs the binary with exactly `args` (no config file added).
pub async fn run_bin(args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("WALSHIFT_CONFIG").stdin(Stdio::null()).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("walshift {args:?} did not finish within 60 s"))
        .expect("run walshift")
}

/// A config file and the commands run with it.
pub struct Walshift {
    dir: PathBuf,
    config: PathBuf,
}

impl Walshift {
    /// A config whose source is `db`, with the given `(source, target)` tables
    /// and extra TOML appended (e.g. `[source]` overrides go in `source_extra`).
    /// Target tables that do not exist yet are created like their source
    /// (`LIKE ... INCLUDING ALL`), when the source exists.
    pub async fn for_db(db: &TestDb<'_>, tables: &[(&str, &str)], source_extra: &str) -> Walshift {
        db.create_shadows(tables).await;
        Walshift::for_url(&db.url(), &db.slot_name(), &db.publication_name(), tables, source_extra)
    }

    /// Like [`Walshift::for_db`] with an explicit source URL.
    pub fn for_url(
        url: &str,
        slot: &str,
        publication: &str,
        tables: &[(&str, &str)],
        source_extra: &str,
    ) -> Walshift {
        let mut toml = format!(
            "[migration]\nname = \"test\"\n\n[source]\nurl = \"{url}\"\nslot = \"{slot}\"\n\
             publication = \"{publication}\"\nstatus_interval_ms = 200\n{source_extra}\n"
        );
        for (source, target) in tables {
            toml.push_str(&format!("\n[[tables]]\nsource = \"{source}\"\ntarget = \"{target}\"\n"));
        }
        Walshift::with_config(&toml)
    }

    /// A config file with exactly `toml`.
    /// Unless it has a `[metrics]` section, metrics are served on a port the
    /// OS picks, so tests running in parallel do not compete for one.
    pub fn with_config(toml: &str) -> Walshift {
        let dir = std::env::temp_dir().join(format!("walshift-cli-{}", unique_suffix()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let config = dir.join("walshift.toml");
        let mut toml = toml.to_owned();
        if !toml.contains("[metrics]") {
            toml.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
        }
        std::fs::write(&config, toml).expect("write config");
        Walshift { dir, config }
    }

    /// The config file's path.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// The config file's text.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config).expect("read the config")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg("--config").arg(&self.config).args(args);
        cmd.env_remove("WALSHIFT_CONFIG").env("WALSHIFT_LOG", "info");
        cmd.kill_on_drop(true);
        cmd
    }

    /// Runs a command to completion (60 s limit).
    pub async fn run(&self, args: &[&str]) -> Output {
        let mut cmd = self.command(args);
        cmd.stdin(Stdio::null());
        tokio::time::timeout(Duration::from_secs(60), cmd.output())
            .await
            .unwrap_or_else(|_| panic!("walshift {args:?} did not finish within 60 s"))
            .expect("run walshift")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub async fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "walshift {args:?} failed with {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Starts `walshift tail <args>` in the background.
    pub fn spawn_tail(&self, args: &[&str]) -> TailProcess {
        let mut full = vec!["tail"];
        full.extend_from_slice(args);
        self.spawn_json_lines(&full)
    }

    /// Starts `walshift <args>`, a command printing JSON lines (`tail`,
    /// `traffic watch`), in the background.
    pub fn spawn_json_lines(&self, full: &[&str]) -> TailProcess {
        let mut cmd = self.command(full);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn walshift tail");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().expect("piped stdout");
        let sink = Arc::clone(&lines);
        let out_task = spawn_named("test-tail-stdout", async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let value: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("tail printed invalid JSON {line:?}: {e}"));
                sink.lock().unwrap().push(value);
            }
        });
        let err_pipe = child.stderr.take().expect("piped stderr");
        let err_sink = Arc::clone(&stderr);
        let err_task = spawn_named("test-tail-stderr", async move {
            let mut reader = BufReader::new(err_pipe).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let mut s = err_sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        TailProcess { child, lines, stderr, readers: vec![out_task, err_task] }
    }
}

impl Drop for Walshift {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `walshift tail`.
pub struct TailProcess {
    child: Child,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl TailProcess {
    /// The lines printed so far.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        self.lines.lock().unwrap().clone()
    }

    /// What it logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until at least `n` row-change lines were printed; returns all lines.
    #[track_caller]
    pub fn wait_for_rows(
        &self,
        n: usize,
        timeout: Duration,
    ) -> impl Future<Output = Vec<serde_json::Value>> + '_ {
        wait_until(&format!("tail prints {n} row changes"), timeout, async move || {
            let lines = self.lines();
            (lines.iter().filter(|l| l.get("op").is_some()).count() >= n).then_some(lines)
        })
    }

    /// Stops it with SIGTERM and waits; returns its exit status code.
    pub async fn stop(mut self) -> (Option<i32>, Vec<serde_json::Value>, String) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("tail exits within 30 s of SIGTERM")
            .expect("wait for tail");
        self.drain().await;
        (status.code(), self.lines(), self.stderr())
    }

    /// Waits until the pipe readers reached end of file (the process exited).
    async fn drain(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.await;
        }
    }

    /// Waits for it to exit by itself (e.g. `--endpos`).
    pub async fn wait(
        mut self,
        timeout: Duration,
    ) -> (Option<i32>, Vec<serde_json::Value>, String) {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!("tail did not exit within {timeout:?}; stderr:\n{}", self.stderr())
            })
            .expect("wait for tail");
        self.drain().await;
        (status.code(), self.lines(), self.stderr())
    }
}

/// Only the row-change lines (those with an `op`).
pub fn rows(lines: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    lines.iter().filter(|l| l.get("op").is_some()).collect()
}

impl Walshift {
    /// A config with `db` as the source, an optional separate target URL,
    /// `tables` (verbatim `[[tables]]` TOML) and `extra` TOML sections.
    pub fn with_tables(
        db: &TestDb<'_>,
        target_url: Option<&str>,
        tables: &str,
        extra: &str,
    ) -> Walshift {
        let mut toml = format!(
            "[migration]\nname = \"test\"\n\n[source]\nurl = \"{}\"\nslot = \"{}\"\n\
             publication = \"{}\"\nstatus_interval_ms = 100\nreconnect_max_backoff_ms = 1000\n",
            db.url(),
            db.slot_name(),
            db.publication_name()
        );
        if let Some(target) = target_url {
            toml.push_str(&format!("\n[target]\nurl = \"{target}\"\n"));
        }
        toml.push_str(tables);
        toml.push('\n');
        toml.push_str(extra);
        Walshift::with_config(&toml)
    }

    /// Starts `walshift run` in the background.
    pub fn spawn_run(&self) -> RunProcess {
        self.spawn(&["run"])
    }

    /// Starts `walshift <args>` in the background.
    pub fn spawn(&self, args: &[&str]) -> RunProcess {
        self.spawn_with_env(args, &[])
    }

    /// Starts `walshift <args>` in the background with extra environment
    /// variables (test hooks).
    pub fn spawn_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> RunProcess {
        let mut cmd = self.command(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn walshift run");
        let stderr = Arc::new(Mutex::new(String::new()));
        let err_pipe = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&stderr);
        let reader = spawn_named("test-run-stderr", async move {
            let mut reader = BufReader::new(err_pipe).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        RunProcess { child, stderr, reader: Some(reader) }
    }
}

/// Runs `args`, expects exit code 2 and every one of `expected` in stderr.
pub async fn expect_exit_2(ws: &Walshift, args: &[&str], expected: &[&str]) -> String {
    let out = ws.run(args).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "walshift {args:?} should exit 2; stderr:\n{stderr}");
    for needle in expected {
        assert!(stderr.contains(needle), "walshift {args:?}: expected {needle:?} in:\n{stderr}");
    }
    stderr
}

/// A running `walshift run`.
pub struct RunProcess {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl RunProcess {
    /// What it logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Whether it has exited.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// `kill -9`: no chance to clean up anything.
    pub async fn kill9(mut self) -> String {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        if let Some(r) = self.reader.take() {
            let _ = r.await;
        }
        self.stderr()
    }

    /// SIGTERM, then waits; returns the exit code and the log.
    pub async fn stop(self) -> (Option<i32>, String) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        self.wait(Duration::from_secs(30)).await
    }

    /// Waits for it to exit by itself.
    pub async fn wait(mut self, timeout: Duration) -> (Option<i32>, String) {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!("walshift run did not exit within {timeout:?}; log:\n{}", self.stderr())
            })
            .expect("wait for walshift run");
        if let Some(r) = self.reader.take() {
            let _ = r.await;
        }
        (status.code(), self.stderr())
    }
}
