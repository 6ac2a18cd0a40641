//! A throwaway `redis-server` for `walshift demo`: the binary from `PATH`, a
//! temp directory, a free loopback port, no persistence; killed and removed
//! again on stop or drop.
//!
//! The server runs in a process group of its own, so a Ctrl-C at the
//! terminal reaches walshift only: the demo stops its pipeline first (the
//! controller releases its lease in this Redis), then the server.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cluster::ClusterError;

/// The binary looked up on `PATH`.
pub const BINARY: &str = "redis-server";

/// What to tell whoever runs the demo without `redis-server`.
pub const MISSING: &str = "walshift demo needs redis-server (its controller publishes the traffic \
     decisions to a throwaway Redis): none found on PATH; install it (apt-get install \
     redis-server), or run `bash scripts/demo.sh`, which does";

/// Ports tried when the one picked was taken before the server bound it.
const START_ATTEMPTS: u32 = 5;
/// How long a started server may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// `redis-server` on `PATH`, if any.
pub fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(BINARY)).find(|p| p.is_file())
}

/// A running throwaway `redis-server`.
#[derive(Debug)]
pub struct LocalRedis {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

impl LocalRedis {
    /// Starts `binary` on a free loopback port and waits until it answers
    /// `PING`.
    pub async fn start(binary: &Path) -> Result<LocalRedis, ClusterError> {
        let dir = std::env::temp_dir().join(format!("walshift-demo-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| ClusterError::Step {
            step: "creating the redis-server directory",
            detail: e.to_string(),
        })?;
        // From here on, dropping `redis` removes the directory.
        let mut redis = LocalRedis { child: None, dir, port: 0 };
        for attempt in 1..=START_ATTEMPTS {
            redis.port = free_port()?;
            redis.spawn(binary)?;
            if redis.answers().await? {
                return Ok(redis);
            }
            let log = std::fs::read_to_string(redis.dir.join("redis.log")).unwrap_or_default();
            if !log.contains("Address already in use") || attempt == START_ATTEMPTS {
                return Err(ClusterError::Step { step: "starting redis-server", detail: log });
            }
        }
        Err(ClusterError::Step { step: "starting redis-server", detail: "no free port".into() })
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding its log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server and removes its directory.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn spawn(&mut self, binary: &Path) -> Result<(), ClusterError> {
        let step = |step: &'static str| {
            move |e: std::io::Error| ClusterError::Step { step, detail: e.to_string() }
        };
        let log = std::fs::File::create(self.dir.join("redis.log"))
            .map_err(step("creating the redis-server log"))?;
        let child = Command::new(binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no", "--dir"])
            .arg(&self.dir)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(step("opening the redis-server log"))?)
            .stderr(log)
            // Out of the terminal's process group: Ctrl-C is the demo's to handle.
            .process_group(0)
            .spawn()
            .map_err(step("starting redis-server"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the server answers `PING` (`true`) or exits (`false`).
    async fn answers(&mut self) -> Result<bool, ClusterError> {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = format!("127.0.0.1:{}", self.port);
        loop {
            if ping(&addr).await {
                return Ok(true);
            }
            let exited = match self.child.as_mut().map(Child::try_wait) {
                Some(Ok(None)) => false,
                Some(Ok(Some(_))) | None => true,
                Some(Err(e)) => {
                    return Err(ClusterError::Step {
                        step: "waiting for redis-server",
                        detail: e.to_string(),
                    });
                }
            };
            if exited {
                self.child = None;
                return Ok(false);
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Step {
                    step: "starting redis-server",
                    detail: format!("no answer to PING within {} s", START_TIMEOUT.as_secs()),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn shutdown(&mut self) {
        if let Some(mut child) = self.child.take() {
            // The data is throwaway: SIGKILL, then reap it.
            if let Err(error) = child.kill().and_then(|()| child.wait().map(drop)) {
                tracing::warn!(error = %error, "stopping the demo redis-server");
            }
        }
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(error = %error, dir = %self.dir.display(), "removing the demo redis directory");
        }
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        if self.child.is_some() || self.dir.exists() {
            self.shutdown();
        }
    }
}

fn free_port() -> Result<u16, ClusterError> {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(|e| {
        ClusterError::Step { step: "finding a free port for redis-server", detail: e.to_string() }
    })
}

/// Whether a server at `addr` answers `PING` with `+PONG`.
async fn ping(addr: &str) -> bool {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut reply = [0u8; 7];
        stream.read_exact(&mut reply).await?;
        Ok::<_, std::io::Error>(&reply == b"+PONG\r\n")
    };
    matches!(tokio::time::timeout(Duration::from_secs(1), exchange).await, Ok(Ok(true)))
}
