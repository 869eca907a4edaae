//! A Redis Sentinel setup of real processes on ephemeral ports: a master, a replica
//! of it and three `redis-server --sentinel` watching it as [`MASTER`] (quorum 2), with
//! short timeouts (down after 1 s) so a failover takes seconds. Killed on drop.
//!
//! Needs `redis-server` and `redis-cli` on the PATH (`.ci/run` installs them).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::poll_until;
use super::ports::free_ports;
use super::redis::RedisServer;

/// The name the sentinels monitor the master under.
pub const MASTER: &str = "mymaster";

/// One `redis-server --sentinel` process.
struct Sentinel {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis-cli -p PORT ARGS...`: its output, `""` when it fails.
pub fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// A field of a `SENTINEL MASTER` reply (name and value on alternate lines).
fn field(reply: &str, name: &str) -> Option<String> {
    let mut lines = reply.lines();
    while let Some(line) = lines.next() {
        if line.trim() == name {
            return lines.next().map(|v| v.trim().to_owned());
        }
    }
    None
}

/// The master, its replica and three sentinels.
pub struct SentinelGroup {
    pub master: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<Sentinel>,
}

impl SentinelGroup {
    /// Starts everything and waits until the replica is in sync and every sentinel
    /// knows the replica and the two other sentinels (so a failover can be agreed).
    pub async fn start() -> SentinelGroup {
        let master = RedisServer::start().await;
        let replica = RedisServer::start_args(vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port.to_string(),
        ])
        .await;
        let mut sentinels = Vec::new();
        for port in free_ports::<3>() {
            let dir = tempfile::tempdir().expect("tempdir");
            let conf: PathBuf = dir.path().join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                     logfile {dir}/sentinel.log\n\
                     sentinel monitor {MASTER} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 5000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    dir = dir.path().display(),
                    master = master.port,
                ),
            )
            .expect("write sentinel.conf");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel runs");
            sentinels.push(Sentinel {
                port,
                child,
                _dir: dir,
            });
        }
        let group = SentinelGroup {
            master,
            replica,
            sentinels,
        };
        let replica = group.replica.port;
        poll_until(Duration::from_secs(20), "the replica to be in sync", || async move {
            cli(replica, &["info", "replication"]).contains("master_link_status:up")
        })
        .await;
        let ports = group.sentinel_ports();
        poll_until(
            Duration::from_secs(30),
            "every sentinel to know the replica and the other sentinels",
            || {
                let ports = ports.clone();
                async move {
                    ports.iter().all(|&port| {
                        let reply = cli(port, &["sentinel", "master", MASTER]);
                        field(&reply, "num-slaves").as_deref() == Some("1")
                            && field(&reply, "num-other-sentinels").as_deref() == Some("2")
                    })
                }
            },
        )
        .await;
        group
    }

    fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// `redis://127.0.0.1:PORT` of every sentinel.
    pub fn urls(&self) -> Vec<String> {
        self.sentinel_ports()
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// The port of the master the first answering sentinel names.
    pub fn named_master_port(&self) -> Option<u16> {
        self.sentinel_ports().iter().find_map(|&port| {
            cli(port, &["sentinel", "get-master-addr-by-name", MASTER])
                .lines()
                .nth(1)
                .and_then(|p| p.trim().parse().ok())
        })
    }

    /// Waits until the master has passed every write to the replica (`WAIT 1`).
    pub fn wait_replicated(&self) {
        let acked = cli(self.master.port, &["wait", "1", "2000"]);
        assert_eq!(
            acked.trim(),
            "1",
            "the replica did not acknowledge the writes"
        );
    }
}
