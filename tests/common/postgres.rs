//! A throwaway PostgreSQL cluster for the store's tests: `initdb` into a temp folder,
//! `pg_ctl` on an ephemeral port with no fsync, stopped (and its folder removed) on
//! drop. Run as root (CI), the server runs as the `postgres` system user, since
//! PostgreSQL refuses to run as root.
//!
//! [`PgCluster::shared`] hands the tests of one binary the same cluster while any of
//! them holds it; each test then uses tables of its own ([`unique_table`]). A test that
//! stops or restarts the server starts a cluster of its own with [`PgCluster::start`].

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::ports::free_port;

/// A running throwaway cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// `Some("postgres")` when the server must run as that user (we are root).
    run_as: Option<String>,
    /// More server options (`-c ssl=on ...`), for every start.
    options: String,
    pub port: u16,
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // A paused server cannot stop.
        let _ = std::panic::catch_unwind(|| self.resume());
        let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "20"]);
    }
}

/// The folder of the PostgreSQL binaries (the newest installed version).
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    versions.pop().unwrap_or_else(|| {
        panic!("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); apt-get install postgresql")
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The pids whose parent is `parent` (from /proc: no procps needed).
fn children(parent: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let pid = e.file_name().to_str()?.to_string();
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
            let after = stat.rsplit_once(')')?.1;
            let ppid = after.split_whitespace().nth(1)?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

impl PgCluster {
    /// Initialises and starts a new cluster (blocking; a second or two).
    pub fn start() -> PgCluster {
        PgCluster::start_with(None)
    }

    /// A cluster that also accepts TLS with this certificate and key (PEM).
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> PgCluster {
        PgCluster::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("cloakroom-pg-")
            .tempdir()
            .expect("tempdir");
        let run_as = is_root().then(|| "postgres".to_string());
        let mut options = String::new();
        if let Some((cert, key)) = tls {
            let cert_path = dir.path().join("server.crt");
            let key_path = dir.path().join("server.key");
            std::fs::write(&cert_path, cert).expect("write server.crt");
            std::fs::write(&key_path, key).expect("write server.key");
            // PostgreSQL refuses a key that others may read.
            let status = Command::new("chmod")
                .arg("600")
                .arg(&key_path)
                .status()
                .expect("chmod");
            assert!(status.success());
            options = format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert_path.display(),
                key_path.display()
            );
        }
        if let Some(user) = &run_as {
            let status = Command::new("chown")
                .args(["-R", user])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown {user} failed");
        }
        let cluster = PgCluster {
            bin: bin_dir(),
            run_as,
            options,
            port: free_port(),
            dir,
        };
        let data = cluster.data_dir();
        let out = cluster
            .command("initdb")
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.start_server();
        cluster
    }

    /// The cluster the tests of this binary share while any of them holds it.
    pub fn shared() -> Arc<PgCluster> {
        static SHARED: Mutex<Weak<PgCluster>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cluster) = slot.upgrade() {
            return cluster;
        }
        let cluster = Arc::new(PgCluster::start());
        *slot = Arc::downgrade(&cluster);
        cluster
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(path);
                command
            }
            None => Command::new(path),
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> std::process::Output {
        self.command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(args)
            .output()
            .expect("run pg_ctl")
    }

    /// Starts the server (again) on its port and waits until it accepts connections.
    pub fn start_server(&self) {
        let options = format!(
            "-F -p {} -k {} -c listen_addresses=127.0.0.1 -c full_page_writes=off \
             -c max_connections=200{}",
            self.port,
            self.dir.path().display(),
            self.options
        );
        let log = self.dir.path().join("server.log");
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .output()
            .expect("run pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Stops the server (connections are cut; committed data is kept).
    pub fn stop_server(&self) {
        let out = self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "20"]);
        assert!(
            out.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Kills the server the way a crash does (`pg_ctl stop -m immediate`): every
    /// backend exits at once, open connections are cut, the next start recovers.
    pub fn kill_server(&self) {
        let out = self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "20"]);
        assert!(
            out.status.success(),
            "pg_ctl stop -m immediate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Freezes every process of the server (SIGSTOP): it keeps its sockets but
    /// answers nothing, like a hung or overloaded database.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Undoes [`PgCluster::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid_file = std::fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .expect("read postmaster.pid");
        let postmaster = pid_file
            .lines()
            .next()
            .expect("pid line")
            .trim()
            .to_string();
        let mut pids = children(&postmaster);
        pids.push(postmaster);
        let status = Command::new("kill")
            .arg(signal)
            .args(&pids)
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pids:?} failed");
    }

    /// The URL of database `postgres` as the superuser.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The folder of the cluster (its socket and log live there).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A client connection for assertions (driven in a task of the current runtime).
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the test cluster");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        client
    }
}

/// A table name no other test of this run uses.
pub fn unique_table(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
