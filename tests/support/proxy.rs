//! A loopback TCP proxy that can *stall*: stop forwarding on its open
//! connections without closing them, as a broken NAT, firewall or
//! half-dead network path does. The kernel keeps both sockets established
//! (and answers TCP keepalives), so only an application-level receive
//! timeout notices.
//!
//! Connections accepted after a [`Proxy::stall_existing`] forward normally,
//! so a client that gives up and reconnects gets through.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

struct Shared {
    /// Connections accepted before this epoch are stalled.
    stall_epoch: AtomicU64,
    stop: AtomicBool,
    /// Every socket, to shut down on drop.
    sockets: Mutex<Vec<TcpStream>>,
}

/// A running proxy in front of `upstream`.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Starts forwarding from a free loopback port to `upstream` (`host:port`).
    pub fn start(upstream: &str) -> Proxy {
        let upstream: SocketAddr = upstream.parse().expect("upstream is ip:port");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            stall_epoch: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
        });
        let s = Arc::clone(&shared);
        thread::spawn(move || {
            while !s.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(upstream) else {
                            let _ = client.shutdown(Shutdown::Both);
                            continue;
                        };
                        let epoch = s.stall_epoch.load(Ordering::SeqCst);
                        let _ = client.set_nonblocking(false);
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        {
                            let mut sockets = s.sockets.lock().unwrap();
                            sockets.push(client.try_clone().unwrap());
                            sockets.push(server.try_clone().unwrap());
                        }
                        pump(&s, client.try_clone().unwrap(), server.try_clone().unwrap(), epoch);
                        pump(&s, server, client, epoch);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Proxy { addr, shared }
    }

    /// `127.0.0.1:port` to connect to instead of the upstream.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// From now on, every connection open at this moment forwards nothing in
    /// either direction, and stays open.
    pub fn stall_existing(&self) {
        self.shared.stall_epoch.fetch_add(1, Ordering::SeqCst);
    }
}

/// Copies `from` → `to` on a thread until either side closes, the proxy
/// stops, or the connection is stalled (then it holds what it read and
/// forwards nothing more, keeping both sockets open).
fn pump(shared: &Arc<Shared>, mut from: TcpStream, mut to: TcpStream, epoch: u64) {
    let s = Arc::clone(shared);
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if s.stop.load(Ordering::SeqCst) {
                break;
            }
            if s.stall_epoch.load(Ordering::SeqCst) > epoch {
                thread::sleep(Duration::from_millis(50));
                continue;
            }
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    // A stall that began while reading swallows these bytes too.
                    if s.stall_epoch.load(Ordering::SeqCst) > epoch {
                        continue;
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        if s.stall_epoch.load(Ordering::SeqCst) <= epoch {
            let _ = to.shutdown(Shutdown::Write);
        }
    });
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for socket in self.shared.sockets.lock().unwrap().drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}
