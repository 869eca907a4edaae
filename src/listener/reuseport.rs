//! The https listener's sockets: one accept queue per worker (`SO_REUSEPORT`).

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Backlog of each worker's accept queue (as `TcpListener::bind`'s).
const BACKLOG: u32 = 1024;

/// Binds the https listener so that each worker can have an accept queue of its own
/// (`SO_REUSEPORT`, see [`worker_listeners`]).
///
/// A port shared with `SO_REUSEPORT` would also be shared with a second cloakroom
/// started on the same address by the same user, which would then get half the
/// connections instead of failing to start. So the address is first bound once without
/// the option: a port in use still fails here with "address in use". Must run inside a
/// tokio runtime.
pub fn bind_https(addr: SocketAddr) -> io::Result<TcpListener> {
    if addr.port() != 0 {
        drop(std::net::TcpListener::bind(addr)?);
    }
    reuseport_socket(addr)?.listen(BACKLOG)
}

fn reuseport_socket(addr: SocketAddr) -> io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// One listening socket per worker: `https` and `workers - 1` more on its address, each
/// with its own accept queue, which the kernel fills by a hash of the client's address
/// and port (`SO_REUSEPORT`, as nginx's `reuseport` and HAProxy's per-thread bind). One
/// queue shared by all workers wakes every idle worker for each new connection (all but
/// one find nothing), and whoever wins takes it, busy or not.
///
/// When `https` was bound without `SO_REUSEPORT` (a caller's own socket), its address
/// cannot be shared: the workers then share its one queue, as before. Must run inside a
/// tokio runtime (the sockets are made by tokio, then handed over as std sockets).
pub(crate) fn worker_listeners(
    https: TcpListener,
    workers: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    let addr = https.local_addr()?;
    let first = https.into_std()?;
    let mut listeners = Vec::with_capacity(workers);
    for _ in 1..workers {
        let sibling = match reuseport_socket(addr).and_then(|s| s.listen(BACKLOG)) {
            Ok(sibling) => sibling.into_std()?,
            Err(error) => {
                tracing::debug!(%addr, %error, "no accept queue per worker (the listener was bound without SO_REUSEPORT); the workers share one");
                let mut shared = Vec::with_capacity(workers);
                for _ in 0..workers {
                    shared.push(first.try_clone()?);
                }
                return Ok(shared);
            }
        };
        listeners.push(sibling);
    }
    listeners.push(first);
    Ok(listeners)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn each_worker_gets_its_own_accept_queue_on_one_port() {
        let https = bind_https("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = https.local_addr().unwrap();
        let listeners = worker_listeners(https, 3).unwrap();
        assert_eq!(listeners.len(), 3);
        for listener in &listeners {
            assert_eq!(listener.local_addr().unwrap(), addr);
        }
        // Connections land in the queues of the sockets; every one is accepted by one.
        let clients: Vec<std::net::TcpStream> = (0..60)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let mut per_queue = vec![0usize; listeners.len()];
        for _ in 0..200 {
            for (listener, n) in listeners.iter().zip(per_queue.iter_mut()) {
                listener.set_nonblocking(true).unwrap();
                while listener.accept().is_ok() {
                    *n += 1;
                }
            }
            if per_queue.iter().sum::<usize>() == clients.len() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            per_queue.iter().sum::<usize>(),
            clients.len(),
            "{per_queue:?}"
        );
        assert!(
            per_queue.iter().filter(|&&n| n > 0).count() > 1,
            "the kernel spreads connections over the queues: {per_queue:?}"
        );
    }

    #[tokio::test]
    async fn a_port_in_use_is_still_an_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let error = bind_https(taken.local_addr().unwrap()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);

        // A second cloakroom on the address of a first one fails too, rather than
        // sharing its port.
        let first = bind_https("127.0.0.1:0".parse().unwrap()).unwrap();
        let error = bind_https(first.local_addr().unwrap()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
    }

    #[tokio::test]
    async fn a_socket_bound_without_reuseport_is_shared_by_the_workers() {
        let https = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = https.local_addr().unwrap();
        let listeners = worker_listeners(https, 2).unwrap();
        assert_eq!(listeners.len(), 2);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        listeners[1].set_nonblocking(true).unwrap();
        // One queue: what one handle accepts, the other does not see.
        let mut accepted = 0;
        for _ in 0..100 {
            if listeners[1].accept().is_ok() {
                accepted += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(accepted, 1);
        assert!(
            listeners[0].accept().is_err(),
            "nonblocking: the queue is empty now"
        );
    }
}
