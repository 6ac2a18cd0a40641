//! Redis for integration tests.
//!
//! [`RedisServer::shared`] is one `redis-server` per test process (or the server at
//! `WALSHIFT_TEST_REDIS_URL`); [`RedisServer::start`] a private one for tests that stop
//! or disturb it. Tests isolate themselves on a shared server with a fresh
//! [`key_prefix`], never with `FLUSHALL`. [`RedisServer::command`] is a minimal RESP2
//! client for assertions. Cleanup is described in [`super`]'s module doc.

use std::fs;
use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::wait::wait_until_blocking;
use super::{Reaper, free_port, unique_suffix};

/// URL of an existing server (`redis://host:port`) that [`RedisServer::shared`] uses.
const REDIS_URL_ENV: &str = "WALSHIFT_TEST_REDIS_URL";
/// How often a start is retried with a new port when the port was taken meanwhile.
const START_ATTEMPTS: u32 = 5;
/// How long a started server may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Read/write timeout of [`RedisServer::command`].
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh `walshift:test:<unique>:` key prefix; take one per test.
pub fn key_prefix() -> String {
    format!("walshift:test:{}:", unique_suffix())
}

/// A reply of the RESP2 protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR …`
    Error(String),
    Integer(i64),
    /// `None` is the null bulk string (for example `GET` of a missing key).
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// A Redis server: local (owned by the harness) or external (shared only).
pub struct RedisServer {
    /// `host:port`
    addr: String,
    url: String,
    /// Dropped (killing the server) when this is dropped; `None` for external servers.
    local: Option<LocalRedis>,
    /// TLS and ACL of a server from [`RedisServer::start_tls`].
    tls: Option<TlsRedis>,
}

/// Password of the harness's own ACL user (`harness`, every command) on
/// servers from [`RedisServer::start_tls`].
const HARNESS_PASSWORD: &str = "harness-only-password";

/// What [`RedisServer::start_tls`] set up.
struct TlsRedis {
    /// The throwaway CA that signed the server's certificate.
    ca_cert: PathBuf,
    /// A second CA that signed nothing this server trusts or presents.
    other_ca_cert: PathBuf,
}

impl RedisServer {
    /// The process-wide server, started on first use, or `WALSHIFT_TEST_REDIS_URL`.
    /// Never dropped: the reaper kills it when the test process exits.
    pub fn shared() -> &'static RedisServer {
        static SHARED: OnceLock<RedisServer> = OnceLock::new();
        SHARED.get_or_init(|| match std::env::var(REDIS_URL_ENV) {
            Ok(url) => {
                let addr = url
                    .strip_prefix("redis://")
                    .map(|rest| rest.split('/').next().unwrap_or(rest))
                    .filter(|addr| !addr.contains('@'))
                    .unwrap_or_else(|| {
                        panic!("{REDIS_URL_ENV} must look like redis://host:port (no credentials)")
                    })
                    .to_owned();
                RedisServer { addr, url, local: None, tls: None }
            }
            Err(_) => RedisServer::start(),
        })
    }

    /// Starts a private `redis-server` (from `PATH`) on a free loopback port and waits
    /// until it answers `PING`.
    pub fn start() -> RedisServer {
        let started = Instant::now();
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let mut local = LocalRedis::spawn(port);
            let up = wait_until_blocking("redis-server to answer PING", START_TIMEOUT, || {
                if ping(&addr) {
                    return Some(true);
                }
                match local.child.try_wait() {
                    Ok(Some(_)) => Some(false),
                    Ok(None) => None,
                    Err(err) => panic!("wait for redis-server: {err}"),
                }
            });
            if up {
                eprintln!("test redis on {addr} started in {} ms", started.elapsed().as_millis());
                let url = format!("redis://{addr}");
                return RedisServer { addr, url, local: Some(local), tls: None };
            }
            let log = fs::read_to_string(local.dir.join("redis.log")).unwrap_or_default();
            if !log.contains("Address already in use") || attempt == START_ATTEMPTS {
                panic!("redis-server exited during startup:\n{log}");
            }
        }
        unreachable!("the last attempt panics")
    }

    /// Starts a private `redis-server` that only speaks TLS (`--port 0`,
    /// `--tls-port`), with a certificate for `localhost`/`127.0.0.1` signed by
    /// a throwaway CA ([`RedisServer::ca_cert_path`]), the `default` user off,
    /// and `users` as ACL rules (each the words of one `user` directive, e.g.
    /// `["walshift", "on", ">secret", "~walshift:*", "+get"]`). The harness
    /// itself talks to it as a user of its own.
    pub fn start_tls(users: &[Vec<String>]) -> RedisServer {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let local = LocalRedis::spawn_with(|dir, group| {
            super::generate_certificates(dir, group);
            let mut args: Vec<String> = [
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                "server.crt",
                "--tls-key-file",
                "server.key",
                "--tls-ca-cert-file",
                "ca.crt",
                "--tls-auth-clients",
                "no",
                "--user",
                "default",
                "off",
                "--user",
                "harness",
                "on",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            args.extend([format!(">{HARNESS_PASSWORD}"), "~*".into(), "&*".into(), "+@all".into()]);
            for user in users {
                args.push("--user".into());
                args.extend(user.iter().cloned());
            }
            args
        });
        let tls = TlsRedis {
            ca_cert: local.dir.join("ca.crt"),
            other_ca_cert: local.dir.join("other-ca.crt"),
        };
        let mut server = RedisServer {
            addr,
            url: format!("rediss://localhost:{port}"),
            local: Some(local),
            tls: Some(tls),
        };
        let up = wait_until_blocking("redis-server (TLS) to answer PING", START_TIMEOUT, || {
            if matches!(server.try_command(&["PING"]), Ok(Reply::Status(ref s)) if s == "PONG") {
                return Some(true);
            }
            match server.local.as_mut().map(|l| l.child.try_wait()) {
                Some(Ok(Some(_))) => Some(false),
                _ => None,
            }
        });
        if !up {
            let dir = &server.local.as_ref().expect("local").dir;
            let log = fs::read_to_string(dir.join("redis.log")).unwrap_or_default();
            panic!("redis-server (TLS) exited during startup:\n{log}");
        }
        server
    }

    /// The CA that signed a [`RedisServer::start_tls`] server's certificate.
    pub fn ca_cert_path(&self) -> &std::path::Path {
        &self.tls.as_ref().expect("ca_cert_path() needs RedisServer::start_tls").ca_cert
    }

    /// A CA that did not sign the server's certificate (a wrong
    /// `tls_ca_file`).
    pub fn other_ca_cert_path(&self) -> &std::path::Path {
        &self.tls.as_ref().expect("other_ca_cert_path() needs RedisServer::start_tls").other_ca_cert
    }

    /// `rediss://user:password@localhost:port` for a TLS server.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        let port = self.addr.rsplit(':').next().expect("port");
        format!("rediss://{user}:{password}@localhost:{port}")
    }

    /// Over TLS as the harness's user (servers from
    /// [`RedisServer::start_tls`]).
    fn try_command(&self, args: &[&str]) -> Result<Reply, String> {
        let tls = self.tls.as_ref().expect("a TLS server");
        let root_cert = fs::read(&tls.ca_cert).map_err(|e| e.to_string())?;
        let client = redis::Client::build_with_tls(
            self.url_as("harness", HARNESS_PASSWORD),
            redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) },
        )
        .map_err(|e| e.to_string())?;
        let mut conn = client.get_connection_with_timeout(IO_TIMEOUT).map_err(|e| e.to_string())?;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        match cmd.query::<redis::Value>(&mut conn) {
            Ok(value) => Ok(from_value(value)),
            Err(e) if e.code().is_some() => Ok(Reply::Error(e.to_string())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Kills a private server (its data is gone: no persistence).
    pub fn stop(&mut self) {
        self.local = None;
    }

    /// Starts a private server again on the same port, empty.
    pub fn restart(&mut self) {
        self.local = None;
        let port: u16 = self.addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
        let local = LocalRedis::spawn(port);
        let addr = self.addr.clone();
        wait_until_blocking("redis-server to answer PING again", START_TIMEOUT, || {
            ping(&addr).then_some(())
        });
        self.local = Some(local);
    }

    /// Subscribes to `channel` on a connection of its own; every message
    /// is recorded with the time it arrived.
    pub fn subscribe(&self, channel: &str) -> Subscriber {
        let stream = TcpStream::connect(&self.addr).expect("connect the subscriber");
        let request = format!("*2\r\n$9\r\nSUBSCRIBE\r\n${}\r\n{channel}\r\n", channel.len());
        (&stream).write_all(request.as_bytes()).expect("subscribe");
        let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
        // The subscription's confirmation.
        read_reply(&mut reader).expect("subscription confirmed");
        let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&messages);
        std::thread::spawn(move || {
            while let Ok(Reply::Array(Some(parts))) = read_reply(&mut reader) {
                if let Some(Reply::Bulk(Some(payload))) = parts.get(2) {
                    let text = String::from_utf8_lossy(payload).into_owned();
                    sink.lock().unwrap().push((Instant::now(), text));
                }
            }
        });
        Subscriber { messages, _stream: stream }
    }

    /// `redis://host:port`
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `host:port`, for raw TCP connections.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one command on a new connection and returns the reply; panics on I/O errors.
    pub fn command(&self, args: &[&str]) -> Reply {
        if self.tls.is_some() {
            return self
                .try_command(args)
                .unwrap_or_else(|err| panic!("redis (TLS) {args:?}: {err}"));
        }
        let stream = TcpStream::connect(&self.addr)
            .unwrap_or_else(|err| panic!("connect to redis at {}: {err}", self.addr));
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("set read timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("set write timeout");
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n{arg}\r\n", arg.len()).as_bytes());
        }
        (&stream).write_all(&request).expect("send a redis command");
        read_reply(&mut BufReader::new(stream))
            .unwrap_or_else(|err| panic!("read the reply to {args:?}: {err}"))
    }
}

/// Messages received on one channel.
pub struct Subscriber {
    messages: std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
    _stream: TcpStream,
}

impl Subscriber {
    /// Every message so far, with its arrival time.
    pub fn messages(&self) -> Vec<(Instant, String)> {
        self.messages.lock().unwrap().clone()
    }

    /// Every message so far, parsed as JSON.
    pub fn decisions(&self) -> Vec<(Instant, serde_json::Value)> {
        self.messages()
            .into_iter()
            .map(|(at, text)| {
                (
                    at,
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON: {text}: {e}")),
                )
            })
            .collect()
    }
}

/// The harness's [`Reply`] for a value of the `redis` crate.
fn from_value(value: redis::Value) -> Reply {
    match value {
        redis::Value::Nil => Reply::Bulk(None),
        redis::Value::Int(n) => Reply::Integer(n),
        redis::Value::BulkString(b) => Reply::Bulk(Some(b)),
        redis::Value::Okay => Reply::Status("OK".into()),
        redis::Value::SimpleString(s) => Reply::Status(s),
        redis::Value::Array(items) => {
            Reply::Array(Some(items.into_iter().map(from_value).collect()))
        }
        other => Reply::Error(format!("unexpected reply {other:?}")),
    }
}

/// `PING` on a fresh connection answers `+PONG`.
fn ping(addr: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let mut reply = [0; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Reply> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.strip_suffix("\r\n").ok_or_else(|| invalid(format!("bad line {line:?}")))?;
    let (kind, rest) = line.split_at_checked(1).ok_or_else(|| invalid("empty reply".into()))?;
    let number = || rest.parse::<i64>().map_err(|_| invalid(format!("bad number {rest:?}")));
    Ok(match kind {
        "+" => Reply::Status(rest.to_owned()),
        "-" => Reply::Error(rest.to_owned()),
        ":" => Reply::Integer(number()?),
        "$" => match usize::try_from(number()?) {
            Err(_) => Reply::Bulk(None),
            Ok(len) => {
                let mut data = vec![0; len + 2];
                reader.read_exact(&mut data)?;
                data.truncate(len);
                Reply::Bulk(Some(data))
            }
        },
        "*" => match usize::try_from(number()?) {
            Err(_) => Reply::Array(None),
            Ok(len) => {
                Reply::Array(Some((0..len).map(|_| read_reply(reader)).collect::<Result<_, _>>()?))
            }
        },
        _ => return Err(invalid(format!("unknown reply type {line:?}"))),
    })
}

fn invalid(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// A `redis-server` process and its directory; dropping kills it and removes both.
struct LocalRedis {
    child: Child,
    dir: PathBuf,
    reaper: Reaper,
}

impl LocalRedis {
    fn spawn(port: u16) -> LocalRedis {
        LocalRedis::spawn_with(|_, _| vec!["--port".to_owned(), port.to_string()])
    }

    /// Starts `redis-server` with the arguments `args` returns (called with
    /// the server's directory and the reaper's process group, before the
    /// server starts) and the harness defaults.
    fn spawn_with(args: impl FnOnce(&std::path::Path, i32) -> Vec<String>) -> LocalRedis {
        let dir = std::env::temp_dir().join(format!("walshift-redis-{}", unique_suffix()));
        fs::create_dir(&dir).unwrap_or_else(|err| panic!("create {}: {err}", dir.display()));
        let log = fs::File::create(dir.join("redis.log")).expect("create redis.log");
        // Before the server, so that no instant exists in which it would not be reaped.
        let reaper = Reaper::spawn("redis", r#"rm -rf "$1""#, &[dir.as_os_str()], None);
        let args = args(&dir, reaper.process_group());
        let child = Command::new("redis-server")
            .args(&args)
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--daemonize", "no", "--dir"])
            .arg(&dir)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the redis.log handle"))
            .stderr(log)
            .process_group(reaper.process_group())
            .spawn()
            .unwrap_or_else(|err| panic!("start redis-server (is it on PATH?): {err}"));
        LocalRedis { child, dir, reaper }
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        // SIGKILL: the data is throwaway and the port is free once wait() returns.
        let _ = self.child.kill();
        let mut clean = true;
        if let Err(err) = self.child.wait() {
            clean = false;
            eprintln!("warning: waiting for redis-server failed: {err}");
        }
        if let Err(err) = fs::remove_dir_all(&self.dir) {
            clean = false;
            eprintln!("warning: could not remove {}: {err}", self.dir.display());
        }
        if clean {
            self.reaper.disarm();
        }
    }
}
