//! Real `redis-server` processes for the tests: a standalone server (optionally with
//! TLS) or a 3-primary Redis Cluster, each on ephemeral ports, without persistence
//! (`--save "" --appendonly no`), killed on drop. The tests can also stop, restart (on
//! the same port), pause (SIGSTOP) and resume (SIGCONT) a standalone server.
//!
//! Needs `redis-server` and `redis-cli` on the PATH (`.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::ports::{free_port, free_ports};
use super::{poll_until, TestPki};

/// How the server is reached.
#[derive(Clone)]
enum Transport {
    Plain,
    /// Server certificate and key files, and the CA that issued them.
    Tls {
        cert: PathBuf,
        key: PathBuf,
        ca: PathBuf,
        /// Holds the three files.
        _files: std::sync::Arc<tempfile::TempDir>,
    },
}

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    transport: Transport,
    extra: Vec<String>,
    /// Starts, for the log file name.
    starts: u32,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl RedisServer {
    /// A plain server on an ephemeral port, answering when this returns.
    pub async fn start() -> RedisServer {
        RedisServer::start_with(Transport::Plain, Vec::new()).await
    }

    /// A server that speaks only TLS, with a certificate for `localhost` from `pki`.
    pub async fn start_tls(pki: &TestPki) -> RedisServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let leaf = pki.issue(&["localhost"], "redis test server");
        let cert = dir.path().join("redis.pem");
        let key = dir.path().join("redis.key");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&cert, &leaf.cert_pem).expect("write cert");
        std::fs::write(&key, &leaf.key_pem).expect("write key");
        std::fs::write(&ca, pki.ca_pem()).expect("write ca");
        let files = std::sync::Arc::new(dir);
        let transport = Transport::Tls {
            cert,
            key,
            ca,
            _files: files,
        };
        RedisServer::start_with(transport, Vec::new()).await
    }

    /// A plain server started with `extra` arguments (e.g. `--replicaof HOST PORT`).
    pub async fn start_args(extra: Vec<String>) -> RedisServer {
        RedisServer::start_with(Transport::Plain, extra).await
    }

    async fn start_with(transport: Transport, extra: Vec<String>) -> RedisServer {
        let mut server = RedisServer {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            transport,
            extra,
            starts: 0,
        };
        server.spawn().await;
        server
    }

    /// `redis://127.0.0.1:PORT` or `rediss://localhost:PORT`.
    pub fn url(&self) -> String {
        match self.transport {
            Transport::Plain => format!("redis://127.0.0.1:{}", self.port),
            Transport::Tls { .. } => format!("rediss://localhost:{}", self.port),
        }
    }

    /// The CA file of a TLS server.
    pub fn ca_file(&self) -> Option<&Path> {
        match &self.transport {
            Transport::Plain => None,
            Transport::Tls { ca, .. } => Some(ca),
        }
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join(format!("redis-{}.log", self.starts))
    }

    async fn spawn(&mut self) {
        self.starts += 1;
        let log = self.log_file();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .args(["--logfile", &log.display().to_string()]);
        match &self.transport {
            Transport::Plain => {
                cmd.args(["--port", &self.port.to_string()]);
            }
            Transport::Tls { cert, key, ca, .. } => {
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .args(["--tls-cert-file", &cert.display().to_string()])
                    .args(["--tls-key-file", &key.display().to_string()])
                    .args(["--tls-ca-cert-file", &ca.display().to_string()])
                    .args(["--tls-auth-clients", "no"]);
            }
        }
        cmd.args(&self.extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (install the redis-server package)");
        self.child = Some(child);
        poll_until(
            Duration::from_secs(10),
            "redis-server to accept connections",
            || {
                let log = log.clone();
                async move {
                    std::fs::read_to_string(&log)
                        .is_ok_and(|text| text.contains("Ready to accept connections"))
                }
            },
        )
        .await;
    }

    /// Kills the server (SIGKILL); its data is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused process must be resumed to die promptly on some kernels.
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
}

/// A Redis Cluster of 3 primaries (no replicas), each on ephemeral ports.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts 3 cluster-enabled servers and joins them with `redis-cli --cluster create`.
    pub async fn start() -> RedisCluster {
        let mut nodes = Vec::new();
        for bus_port in free_ports::<3>() {
            let dir = tempfile::tempdir().expect("tempdir");
            let conf = dir.path().join("nodes.conf");
            let extra = vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                conf.display().to_string(),
                "--cluster-port".into(),
                bus_port.to_string(),
            ];
            let mut node = RedisServer::start_with(Transport::Plain, extra).await;
            node.dir = dir;
            nodes.push(node);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        poll_until(
            Duration::from_secs(20),
            "the cluster to report ok on every node",
            || {
                let ports = ports.clone();
                async move {
                    ports.iter().all(|port| {
                        Command::new("redis-cli")
                            .args(["-p", &port.to_string(), "cluster", "info"])
                            .output()
                            .is_ok_and(|o| {
                                String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok")
                            })
                    })
                }
            },
        )
        .await;
        RedisCluster { nodes }
    }

    /// The seed URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}
