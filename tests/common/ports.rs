//! Ports for the tests, the one place that picks them.
//!
//! A server in this process never gets a port number: the test binds `127.0.0.1:0`
//! and hands the bound listener over (see `TestProxyBuilder::start`, `MockUpstream`),
//! so nothing can take the port in between. A server in another process (the
//! `cloakroom` binary, `redis-server`, PostgreSQL) binds the port itself; for those,
//! [`free_ports`] holds every listener it binds until it knows all the ports, so one
//! call never returns the same port twice (two `free_port()` calls in a row could).
//! The ports are released when it returns, just before the caller starts its server.

use std::net::{SocketAddr, TcpListener};

/// `N` distinct ports on 127.0.0.1 that were free a moment ago.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    let mut ports = [0u16; N];
    for (port, listener) in ports.iter_mut().zip(&held) {
        *port = listener.local_addr().expect("local addr").port();
    }
    ports
}

/// One port on 127.0.0.1 that was free a moment ago (see [`free_ports`]).
pub fn free_port() -> u16 {
    let [port] = free_ports::<1>();
    port
}

/// An address where nothing listens (bound to port 0, then released).
pub fn refused_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}
