//! Real servers for integration tests: PostgreSQL ([`pg`]), Redis ([`redis`]) and
//! deadline-based waiting ([`wait`]).
//!
//! Servers are started by the harness itself on free loopback ports, each in its own
//! temporary directory, so `cargo test` needs no setup beyond the binaries
//! (`pg_config --bindir`, `redis-server`, `openssl`). Tests run as threads of one
//! process, so everything here is safe to use concurrently; per-test isolation is a
//! fresh database ([`pg::TestDb`]) and a fresh Redis key prefix ([`redis::key_prefix`]).
//!
//! # Cleanup
//!
//! Every server is removed on every exit path:
//!
//! ```text
//!  normal drop ──▶ Drop stops the server, removes its directory, disarms the reaper
//!  panic       ──▶ unwinding runs the same Drop
//!  static      ──┐ (shared servers are never dropped)
//!  kill -9     ──┴▶ the reaper's stdin pipe closes ──▶ reaper stops the server + rm -rf
//! ```
//!
//! The *reaper* is a tiny `sh` child in its own process group (so Ctrl-C and nextest's
//! process-group signals do not reach it) that blocks reading its stdin, a pipe whose
//! write end only the test process holds (std creates it close-on-exec, so no other
//! child inherits it). When the test process exits for any reason the kernel closes the
//! pipe, `read` returns, and the reaper runs its cleanup script. `Drop` writes
//! `disarm` instead once it has cleaned up itself, so the normal path stays in-process
//! and can warn about failures. Long-lived children never hold the test's
//! stdout/stderr (servers log to files), so output capture never waits on them.

pub mod cli;
pub mod pg;
pub mod proxy;
pub mod redis;
pub mod shadow;
pub mod wait;

use std::ffi::OsStr;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// A name fragment unique across concurrently running test processes and threads:
/// `<pid>_<counter>_<random hex>`. Only `[0-9a-f_]`, so it is safe in identifiers.
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}_{n}_{:08x}", std::process::id(), fastrand::u32(..))
}

/// A loopback port that was free a moment ago. Callers retry with another port when
/// the server then fails to bind it (another process may have taken it meanwhile).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to find a free port");
    listener.local_addr().expect("local address of a bound listener").port()
}

/// An OS account that server processes run as.
#[derive(Clone, Copy, Debug)]
struct OsUser {
    uid: u32,
    gid: u32,
}

impl OsUser {
    /// Looks `name` up in `/etc/passwd`.
    fn lookup(name: &str) -> Option<OsUser> {
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|line| {
            let mut fields = line.split(':');
            if fields.next()? != name {
                return None;
            }
            let uid = fields.nth(1)?.parse().ok()?;
            let gid = fields.next()?.parse().ok()?;
            Some(OsUser { uid, gid })
        })
    }
}

/// Whether this process runs as root (`/proc/self` is owned by the effective uid).
fn running_as_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        std::fs::metadata("/proc/self").expect("stat /proc/self to find the effective uid").uid()
            == 0
    })
}

/// Runs `future` to completion on a fresh current-thread runtime in a scoped thread.
///
/// Works from sync code and from inside any runtime (including in `Drop` while a test's
/// runtime is running), because the future never touches the caller's runtime.
fn block_on_thread<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build a current-thread tokio runtime")
                    .block_on(future)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Backstop cleanup that runs even when the test process is killed (see the module doc).
///
/// The reaper leads its own process group, and the harness starts its short-lived
/// commands (`initdb`, `pg_ctl`, `openssl`) and `redis-server` in that group, so the
/// reaper can first stop whatever was in flight when the test process died
/// (`kill -TERM 0`; the reaper itself ignores SIGTERM) and then clean up.
struct Reaper {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Reaper {
    /// Starts `sh -c <script>` with `args` as `$1…`; the script runs when the test process
    /// goes away (or this value is dropped) without [`Reaper::disarm`] having been called.
    fn spawn(what: &str, script: &str, args: &[&OsStr], run_as: Option<OsUser>) -> Reaper {
        let script = format!(
            "trap '' TERM; read -r word; [ \"$word\" = disarm ] && exit 0; \
             kill -TERM 0 2>/dev/null; {script}"
        );
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(script)
            .arg(format!("walshift-test-reaper-{what}"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .current_dir("/")
            .process_group(0);
        if let Some(user) = run_as {
            command.uid(user.uid).gid(user.gid);
        }
        let mut child =
            command.spawn().unwrap_or_else(|err| panic!("spawn the {what} reaper (sh): {err}"));
        let stdin = child.stdin.take();
        Reaper { child, stdin }
    }

    /// The reaper's process group, for `Command::process_group` of the commands and
    /// servers it is responsible for.
    fn process_group(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pids fit in i32")
    }

    /// The owner cleaned up by itself: let the reaper exit without running its script.
    fn disarm(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            // If this write fails the reaper sees EOF and cleans up again, which is harmless.
            let _ = stdin.write_all(b"disarm\n");
        }
    }
}

impl Drop for Reaper {
    /// Closes the pipe (running the script unless disarmed) and reaps the child.
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Err(err) = self.child.wait() {
            eprintln!("warning: waiting for a test reaper process failed: {err}");
        }
    }
}

/// A throwaway CA, a server certificate for `localhost`/`127.0.0.1` signed
/// by it (`ca.crt`, `server.crt`, `server.key`), and a second CA that signed
/// nothing (`other-ca.crt`), in `dir`; `openssl` runs in process group `group`.
/// Shared by the TLS Postgres clusters and the TLS Redis servers.
pub(crate) fn generate_certificates(dir: &std::path::Path, group: i32) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .stdin(Stdio::null())
            .process_group(group)
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("run openssl (is it on PATH?): {err}"));
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    for (key, cert, name) in [
        ("ca.key", "ca.crt", "walshift test Redis CA"),
        ("other-ca.key", "other-ca.crt", "unrelated CA"),
    ] {
        let subject = format!("/CN={name}");
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-keyout", key, "-out", cert, "-days", "2", "-subj", &subject],
                &["-addext", "basicConstraints=critical,CA:TRUE"],
                &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ]
            .concat(),
        );
    }
    openssl(
        &[
            &["req", "-new"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = DNS:localhost, IP:127.0.0.1\n\
         basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\n",
    )
    .expect("write server.ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
}
