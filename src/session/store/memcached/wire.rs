//! The Memcached meta protocol (`mg`, `ms`, `md`, `mn`) on one TCP connection,
//! pipelined: callers hand a request to the connection's task through a channel and get
//! the reply through a oneshot; the task writes requests in the order they came and
//! hands replies back in the same order (Memcached answers in order).
//!
//! Why not a client crate: `async-memcached` (maintained, meta commands) runs one
//! request at a time on a connection it borrows mutably, closes the connection when a
//! call is cancelled (a request that hits its deadline), and has no reconnect, timeouts
//! or server selection; `memcache-async` has no meta commands (no CAS with a TTL in one
//! command). A pipelined link per worker and server is what the Redis store has (one
//! multiplexed connection per worker), and the subset of the protocol used here is
//! small. A caller that gives up (its deadline passed) only drops its oneshot: the task
//! still reads that reply, so the connection never loses its place in the stream.
//!
//! Nothing here logs a key or a value.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// Largest value this store reads back (a session record, an index item): a longer
/// `VA` is a protocol error, never an allocation of what the server claims.
const MAX_VALUE: usize = 1 << 20;

/// Requests queued on one link before callers wait.
const QUEUE: usize = 1024;

/// Requests written in one batch.
const BATCH: usize = 64;

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    /// `VA`: the item's value, its CAS, and the seconds it has left (`-1`: no expiry;
    /// `None` when the server did not say).
    Value {
        data: Bytes,
        cas: u64,
        ttl: Option<i64>,
    },
    /// `HD`: stored, deleted, or found.
    Done,
    /// `NS`: not stored (an add found the key taken, a replace found none).
    NotStored,
    /// `EX`: the CAS did not match (someone changed the item).
    Exists,
    /// `NF`: not found (a delete or CAS on a missing item).
    NotFound,
    /// `EN`: a get found nothing.
    Miss,
    /// `MN`: the answer to a no-op.
    Noop,
    /// `SERVER_ERROR`, `CLIENT_ERROR` or `ERROR`: the server answered, with a refusal
    /// (out of memory, a bad command). Only its first word is kept.
    Refused(&'static str),
}

/// Why a request got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum LinkError {
    /// A new connection could not be made (refused, unreachable, a name that does not
    /// resolve).
    #[error("cannot connect ({0:?})")]
    Connect(std::io::ErrorKind),
    /// A new connection was not made within the connect deadline.
    #[error("connecting timed out")]
    ConnectTimeout,
    /// The connection broke (reset, closed by the server, a reply that does not parse).
    #[error("connection lost ({0:?})")]
    Broken(std::io::ErrorKind),
}

impl LinkError {
    /// Whether the failure came from making a fresh connection (the server itself does
    /// not answer), not from an old one that broke.
    pub(super) fn fresh(self) -> bool {
        matches!(self, LinkError::Connect(_) | LinkError::ConnectTimeout)
    }
}

/// One queued request.
struct Job {
    request: Bytes,
    reply: oneshot::Sender<Result<Reply, LinkError>>,
}

/// A handle on one connection's task; cheap to clone. Once the task ended (the
/// connection broke or never came up) [`Link::is_closed`] says so, and a new link is
/// made in its place.
#[derive(Clone)]
pub(super) struct Link {
    jobs: mpsc::Sender<Job>,
}

impl Link {
    /// Starts a connection to `address` on the current runtime (the task connects
    /// first; requests sent meanwhile wait for it). The task ends when the connection
    /// breaks or every handle is dropped.
    pub(super) fn open(address: String, connect: Duration) -> Link {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(drive(address, connect, queue));
        Link { jobs }
    }

    /// Whether the connection's task ended.
    pub(super) fn is_closed(&self) -> bool {
        self.jobs.is_closed()
    }

    /// Sends `request` (one meta command, `\r\n`-terminated, with its data block) and
    /// waits for its reply.
    pub(super) async fn call(&self, request: Bytes) -> Result<Reply, LinkError> {
        let (reply, answer) = oneshot::channel();
        let closed = LinkError::Broken(std::io::ErrorKind::NotConnected);
        self.jobs
            .send(Job { request, reply })
            .await
            .map_err(|_| closed)?;
        answer.await.unwrap_or(Err(closed))
    }
}

/// Connects one fresh connection to `address`, sends `mn` and waits for `MN`: whether
/// the server answers, whatever state the workers' links are in.
pub(super) async fn probe(address: &str, connect: Duration) -> Result<(), LinkError> {
    let mut stream = open_stream(address, connect).await?;
    let broken = |e: std::io::Error| LinkError::Broken(e.kind());
    stream.write_all(b"mn\r\n").await.map_err(broken)?;
    let mut buf = BytesMut::with_capacity(64);
    loop {
        if stream.read_buf(&mut buf).await.map_err(broken)? == 0 {
            return Err(LinkError::Broken(std::io::ErrorKind::UnexpectedEof));
        }
        match parse(&mut buf)? {
            Some(Reply::Noop) => return Ok(()),
            Some(_) => return Err(LinkError::Broken(std::io::ErrorKind::InvalidData)),
            None => {}
        }
    }
}

/// Sends `requests` on one fresh connection to `address` and reads as many replies;
/// `Ok` when every one was answered (whatever the answer: a delete of an item already
/// gone is done too).
pub(super) async fn send_all(
    address: &str,
    connect: Duration,
    requests: Vec<Bytes>,
) -> Result<(), LinkError> {
    let mut stream = open_stream(address, connect).await?;
    let broken = |e: std::io::Error| LinkError::Broken(e.kind());
    for request in &requests {
        stream.write_all(request).await.map_err(broken)?;
    }
    let mut buf = BytesMut::with_capacity(1024);
    let mut answered = 0;
    while answered < requests.len() {
        if stream.read_buf(&mut buf).await.map_err(broken)? == 0 {
            return Err(LinkError::Broken(std::io::ErrorKind::UnexpectedEof));
        }
        while let Some(_reply) = parse(&mut buf)? {
            answered += 1;
        }
    }
    Ok(())
}

async fn open_stream(address: &str, connect: Duration) -> Result<TcpStream, LinkError> {
    match tokio::time::timeout(connect, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => {
            // Small requests and replies: no Nagle delay.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(error)) => Err(LinkError::Connect(error.kind())),
        Err(_) => Err(LinkError::ConnectTimeout),
    }
}

/// The connection's task: connect, then write requests and read replies until the
/// connection breaks or every [`Link`] is gone. Whatever is pending when it ends gets
/// the error.
async fn drive(address: String, connect: Duration, mut queue: mpsc::Receiver<Job>) {
    let mut pending: VecDeque<oneshot::Sender<Result<Reply, LinkError>>> = VecDeque::new();
    let error = match open_stream(&address, connect).await {
        Ok(stream) => serve(stream, &mut queue, &mut pending).await,
        Err(error) => error,
    };
    // Closed first, so a caller that gets the error and asks again finds this link
    // closed and makes a new one.
    queue.close();
    for waiter in pending {
        let _ = waiter.send(Err(error));
    }
    while let Ok(job) = queue.try_recv() {
        let _ = job.reply.send(Err(error));
    }
}

/// Serves one open connection; returns why it ended.
async fn serve(
    mut stream: TcpStream,
    queue: &mut mpsc::Receiver<Job>,
    pending: &mut VecDeque<oneshot::Sender<Result<Reply, LinkError>>>,
) -> LinkError {
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = BytesMut::with_capacity(1024);
    loop {
        tokio::select! {
            // `read_buf` is cancel-safe: a read that loses the race takes no bytes.
            read = stream.read_buf(&mut buf) => {
                match read {
                    Ok(0) => return LinkError::Broken(std::io::ErrorKind::UnexpectedEof),
                    Ok(_) => {}
                    Err(error) => return LinkError::Broken(error.kind()),
                }
                loop {
                    match parse(&mut buf) {
                        Ok(Some(reply)) => match pending.pop_front() {
                            // A caller that gave up dropped its receiver: fine.
                            Some(waiter) => {
                                let _ = waiter.send(Ok(reply));
                            }
                            // A reply nobody asked for: the stream is out of step.
                            None => return LinkError::Broken(std::io::ErrorKind::InvalidData),
                        },
                        Ok(None) => break,
                        Err(error) => return error,
                    }
                }
            }
            job = queue.recv() => {
                // Every handle dropped: nobody will ask again.
                let Some(job) = job else {
                    return LinkError::Broken(std::io::ErrorKind::NotConnected);
                };
                out.clear();
                out.extend_from_slice(&job.request);
                pending.push_back(job.reply);
                for _ in 1..BATCH {
                    let Ok(job) = queue.try_recv() else { break };
                    out.extend_from_slice(&job.request);
                    pending.push_back(job.reply);
                }
                if let Err(error) = stream.write_all(&out).await {
                    return LinkError::Broken(error.kind());
                }
            }
        }
    }
}

/// Takes one complete reply off the front of `buf`; `None` when more bytes are needed.
fn parse(buf: &mut BytesMut) -> Result<Option<Reply>, LinkError> {
    let bad = LinkError::Broken(std::io::ErrorKind::InvalidData);
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        // A line never gets this long: a stream out of step.
        return if buf.len() > 4096 { Err(bad) } else { Ok(None) };
    };
    let line = &buf[..end];
    let mut words = line.split(|&b| b == b' ');
    let head = words.next().unwrap_or_default();
    let reply = match head {
        b"VA" => {
            let size = words
                .next()
                .and_then(|w| std::str::from_utf8(w).ok())
                .and_then(|w| w.parse::<usize>().ok())
                .filter(|&n| n <= MAX_VALUE)
                .ok_or(bad)?;
            let (mut cas, mut ttl) = (0, None);
            for word in words {
                let number = |w: &[u8]| std::str::from_utf8(w).ok()?.parse::<i64>().ok();
                match word.split_first() {
                    Some((b'c', rest)) => {
                        cas = number(rest)
                            .and_then(|n| u64::try_from(n).ok())
                            .unwrap_or(0);
                    }
                    Some((b't', rest)) => ttl = number(rest),
                    _ => {}
                }
            }
            let total = end + 2 + size + 2;
            if buf.len() < total {
                return Ok(None);
            }
            if &buf[total - 2..total] != b"\r\n" {
                return Err(bad);
            }
            buf.advance(end + 2);
            let data = buf.split_to(size).freeze();
            buf.advance(2);
            return Ok(Some(Reply::Value { data, cas, ttl }));
        }
        b"HD" => Reply::Done,
        b"NS" => Reply::NotStored,
        b"EX" => Reply::Exists,
        b"NF" => Reply::NotFound,
        b"EN" => Reply::Miss,
        b"MN" => Reply::Noop,
        b"SERVER_ERROR" => Reply::Refused("SERVER_ERROR"),
        b"CLIENT_ERROR" => Reply::Refused("CLIENT_ERROR"),
        b"ERROR" => Reply::Refused("ERROR"),
        _ => return Err(bad),
    };
    buf.advance(end + 2);
    Ok(Some(reply))
}

/// How `ms` treats an existing item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Store whatever is there (`MS`).
    Set,
    /// Only if no item exists (`ME`, "add").
    Add,
    /// Only if an item exists (`MR`, "replace").
    Replace,
}

/// `mg <key> v c t`: the value, its CAS and its remaining TTL.
pub(super) fn get(key: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(key.len() + 12);
    out.extend_from_slice(b"mg ");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b" v c t\r\n");
    out.freeze()
}

/// `ms <key> <len> T<ttl> M<mode> [C<cas>]` and the data block. `ttl` as
/// [`exptime`] makes it.
pub(super) fn set(key: &str, value: &[u8], ttl: i64, mode: Mode, cas: Option<u64>) -> Bytes {
    use std::fmt::Write as _;
    let mut head = String::with_capacity(key.len() + 48);
    let mode = match mode {
        Mode::Set => 'S',
        Mode::Add => 'E',
        Mode::Replace => 'R',
    };
    let _ = write!(head, "ms {key} {} T{ttl} M{mode}", value.len());
    if let Some(cas) = cas {
        let _ = write!(head, " C{cas}");
    }
    head.push_str("\r\n");
    let mut out = BytesMut::with_capacity(head.len() + value.len() + 2);
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

/// `md <key> [C<cas>]`.
pub(super) fn delete(key: &str, cas: Option<u64>) -> Bytes {
    let mut text = format!("md {key}");
    if let Some(cas) = cas {
        text.push_str(&format!(" C{cas}"));
    }
    text.push_str("\r\n");
    Bytes::from(text)
}

/// `mn`: a no-op, answered `MN`.
pub(super) fn noop() -> Bytes {
    Bytes::from_static(b"mn\r\n")
}

/// The seconds after which Memcached should drop an item that must live `ms`
/// milliseconds from `now_ms` (unix): rounded up, plus one second because the server's
/// clock ticks once a second (an item never goes before its time; expiry is also
/// checked on read). Never 0 (which means "never"). Memcached reads more than 30 days
/// as a unix time, so longer lifetimes are sent as one.
pub(super) fn exptime(ms: u64, now_ms: u64) -> i64 {
    const THIRTY_DAYS: u64 = 30 * 24 * 3600;
    let seconds = ms.div_ceil(1000).saturating_add(1);
    let seconds = if seconds > THIRTY_DAYS {
        (now_ms / 1000).saturating_add(seconds)
    } else {
        seconds
    };
    i64::try_from(seconds).unwrap_or(i64::from(i32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(bytes: &[u8]) -> Vec<Result<Option<Reply>, LinkError>> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            let reply = parse(&mut buf);
            let stop = !matches!(reply, Ok(Some(_)));
            out.push(reply);
            if stop {
                return out;
            }
        }
    }

    #[test]
    fn replies_parse_in_order_and_wait_for_whole_values() {
        let replies = parse_all(b"HD\r\nVA 3 c17 t-1\r\nabc\r\nEN\r\nNS\r\nEX\r\nNF\r\nMN\r\n");
        assert_eq!(
            replies,
            vec![
                Ok(Some(Reply::Done)),
                Ok(Some(Reply::Value {
                    data: Bytes::from_static(b"abc"),
                    cas: 17,
                    ttl: Some(-1),
                })),
                Ok(Some(Reply::Miss)),
                Ok(Some(Reply::NotStored)),
                Ok(Some(Reply::Exists)),
                Ok(Some(Reply::NotFound)),
                Ok(Some(Reply::Noop)),
                Ok(None),
            ]
        );
        let mut partial = BytesMut::from(&b"VA 5 c1\r\nab"[..]);
        assert_eq!(parse(&mut partial), Ok(None));
        partial.extend_from_slice(b"cde\r\n");
        assert!(matches!(parse(&mut partial), Ok(Some(Reply::Value { .. }))));
        assert!(partial.is_empty());
        // A value with a line break inside is read by its length.
        let mut crlf = BytesMut::from(&b"VA 4 c2\r\na\r\nb\r\nHD\r\n"[..]);
        assert!(matches!(parse(&mut crlf), Ok(Some(Reply::Value { .. }))));
        assert_eq!(parse(&mut crlf), Ok(Some(Reply::Done)));
    }

    #[test]
    fn refusals_and_garbage() {
        let mut buf = BytesMut::from(&b"SERVER_ERROR out of memory storing object\r\n"[..]);
        assert_eq!(parse(&mut buf), Ok(Some(Reply::Refused("SERVER_ERROR"))));
        assert!(parse(&mut BytesMut::from(&b"WHAT\r\n"[..])).is_err());
        assert!(parse(&mut BytesMut::from(&b"VA x\r\n"[..])).is_err());
        assert!(parse(&mut BytesMut::from(&b"VA 99999999999 c1\r\n"[..])).is_err());
        assert!(parse(&mut BytesMut::from(&b"VA 1 c1\r\nabc\r\n"[..])).is_err());
    }

    #[test]
    fn commands_are_written_as_the_meta_protocol_says() {
        assert_eq!(&get("k")[..], b"mg k v c t\r\n");
        assert_eq!(
            &set("k", b"ab", 5, Mode::Add, None)[..],
            b"ms k 2 T5 ME\r\nab\r\n"
        );
        assert_eq!(
            &set("k", b"", 5, Mode::Set, Some(9))[..],
            b"ms k 0 T5 MS C9\r\n\r\n"
        );
        assert_eq!(&delete("k", Some(3))[..], b"md k C3\r\n");
        assert_eq!(&delete("k", None)[..], b"md k\r\n");
    }

    #[test]
    fn expiry_times_are_never_early_never_zero_and_absolute_past_thirty_days() {
        assert_eq!(exptime(0, 0), 1);
        assert_eq!(exptime(1, 0), 2);
        assert_eq!(exptime(60_000, 0), 61);
        let now = 1_800_000_000_000;
        let year = 365 * 24 * 3600 * 1000;
        assert_eq!(exptime(year, now), 1_800_000_000 + 365 * 24 * 3600 + 1);
    }
}
