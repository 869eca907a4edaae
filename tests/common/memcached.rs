//! Real `memcached` processes for the tests, each on an ephemeral port (127.0.0.1 only,
//! no UDP), killed on drop. A test can give it a small memory limit (`-m`, to see
//! evictions), kill it, start it again on the same port (empty), pause it (SIGSTOP) and
//! resume it, and read its `stats`.
//!
//! Needs `memcached` on the PATH or at /usr/bin/memcached (`.ci/run` installs it).

use std::io::{Read as _, Write as _};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::poll_until;
use super::ports::free_port;

/// One `memcached` process.
pub struct MemcachedServer {
    pub port: u16,
    memory_mb: u32,
    child: Option<Child>,
}

impl Drop for MemcachedServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl MemcachedServer {
    /// A server with 64 MB, answering when this returns.
    pub async fn start() -> MemcachedServer {
        MemcachedServer::start_with_memory(64).await
    }

    /// A server with `memory_mb` megabytes for items (`-m`): past it, the least
    /// recently used items are evicted.
    pub async fn start_with_memory(memory_mb: u32) -> MemcachedServer {
        let mut server = MemcachedServer {
            port: free_port(),
            memory_mb,
            child: None,
        };
        server.spawn().await;
        server
    }

    /// `127.0.0.1:PORT`, as `session.memcached.servers` names it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let binary = if std::path::Path::new("/usr/bin/memcached").exists() {
            "/usr/bin/memcached"
        } else {
            "memcached"
        };
        let child = Command::new(binary)
            .args(["-l", "127.0.0.1", "-U", "0", "-t", "1"])
            .args(["-p", &self.port.to_string()])
            .args(["-m", &self.memory_mb.to_string()])
            // memcached refuses to run as root without a user to switch to; the flag
            // is ignored when not root.
            .args(["-u", "root"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("memcached runs (install the memcached package)");
        self.child = Some(child);
        let port = self.port;
        poll_until(
            Duration::from_secs(10),
            "memcached to accept connections",
            || async move { std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() },
        )
        .await;
    }

    /// Kills the server (SIGKILL); its items are gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("server running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Freezes the process (SIGSTOP): connections are accepted by the kernel but never
    /// answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Resumes a paused process (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Deletes `key` (as an eviction would); whether it existed.
    pub fn delete(&self, key: &str) -> bool {
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("memcached answers");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream
            .write_all(format!("md {key}\r\n").as_bytes())
            .expect("write md");
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).expect("read md");
        buf[..n].starts_with(b"HD")
    }

    /// One `stats` value (e.g. `curr_items`, `bytes`, `evictions`), read on a
    /// connection of its own.
    pub fn stat(&self, name: &str) -> u64 {
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("memcached answers");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream.write_all(b"stats\r\n").expect("write stats");
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while !text.ends_with("END\r\n") {
            let n = stream.read(&mut buf).expect("read stats");
            assert!(n > 0, "memcached closed the stats connection");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text.lines()
            .find_map(|line| {
                let mut words = line.split(' ');
                (words.next() == Some("STAT") && words.next() == Some(name))
                    .then(|| words.next()?.trim().parse().ok())
                    .flatten()
            })
            .unwrap_or_else(|| panic!("no stat {name}"))
    }
}
