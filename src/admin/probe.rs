//! `cloakroom health`: the client side of `/healthz`, for container health checks that
//! have no shell or curl. One plain HTTP/1.1 `GET` with a deadline; success is a 200.
//! Blocking on purpose (it runs alone, before any runtime exists).

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::config::Config;

/// How long the whole probe may take.
const DEADLINE: Duration = Duration::from_secs(3);

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0} is not a URL like http://127.0.0.1:9901/healthz")]
    BadUrl(String),
    #[error("the configuration has no [listen] admin address to probe")]
    NoAdmin,
    #[error("{addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url} answered {status_line:?}")]
    Unhealthy { url: String, status_line: String },
}

/// The `/healthz` URL of the admin listener `config` names (an unspecified address
/// such as `0.0.0.0` is probed on loopback).
pub fn healthz_url(config: &Config) -> Result<String, ProbeError> {
    let addr = config.listen.admin.ok_or(ProbeError::NoAdmin)?;
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(format!(
        "http://{}/healthz",
        SocketAddr::new(ip, addr.port())
    ))
}

/// `GET url`; `Ok` on a 200.
pub fn probe(url: &str) -> Result<(), ProbeError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ProbeError::BadUrl(url.to_string()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/healthz"),
    };
    let io = |source| ProbeError::Io {
        addr: authority.to_string(),
        source,
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| ProbeError::BadUrl(url.to_string()))?;
    let mut stream = TcpStream::connect_timeout(&addr, DEADLINE).map_err(io)?;
    stream.set_read_timeout(Some(DEADLINE)).map_err(io)?;
    stream.set_write_timeout(Some(DEADLINE)).map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: cloakroom-health\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = stream.read(&mut chunk).map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(chunk.get(..n).unwrap_or(&[]));
    }
    let text = String::from_utf8_lossy(&head);
    let status_line = text.lines().next().unwrap_or("").to_string();
    if status_line.split(' ').nth(1) == Some("200") {
        Ok(())
    } else {
        Err(ProbeError::Unhealthy {
            url: url.to_string(),
            status_line,
        })
    }
}
