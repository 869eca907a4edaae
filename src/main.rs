//! The `cloakroom` binary: command line, runtime, signals (logging is `cloakroom::log`).
//!
//! `cloakroom [--config PATH]` runs the proxy; `cloakroom check` validates a config;
//! `--demo` also starts the built-in demo apps and makes a self-signed certificate when
//! none exists. Exit codes: 0 clean shutdown or valid config, 1 runtime failure,
//! 2 invalid config (the proxy never starts half-configured).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cloakroom::{config::Config, control, Listeners};
use tokio::signal::unix::{signal, SignalKind};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "cloakroom",
    version,
    about = "Hardened sessions, affinity and identity for legacy web apps"
)]
struct Cli {
    /// The configuration file.
    #[arg(
        short,
        long,
        env = "CLOAKROOM_CONFIG",
        default_value = "proxy.toml",
        global = true
    )]
    config: PathBuf,
    /// Also run the two built-in demo apps on the upstream addresses the config names,
    /// and make a self-signed localhost certificate if the configured one is missing.
    #[arg(long)]
    demo: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate the configuration (and that its certificates load); exit 0 or 2.
    Check,
    /// Print a fresh random `session.secret` (48 bytes from the OS CSPRNG, base64url).
    Secret,
    /// Ask a running proxy's admin listener for /healthz; exit 0 when it answers 200,
    /// 1 otherwise (a container HEALTHCHECK that needs no shell or curl).
    Health {
        /// Probe this URL instead of the admin address of the configuration.
        #[arg(long)]
        url: Option<String>,
    },
    /// Run only the two built-in demo apps, on these addresses (for compose.yaml,
    /// where the apps live in their own container).
    DemoApps {
        /// Addresses to serve, e.g. 0.0.0.0:9001 0.0.0.0:9002.
        #[arg(required = true)]
        addrs: Vec<SocketAddr>,
    },
    /// Print the SQL that creates the PostgreSQL session table (for DBAs who apply
    /// the schema themselves); the table is `session.postgres.table` of the config,
    /// or `--table`.
    Schema {
        /// The table (`table` or `schema.table`); without it the config's is used.
        #[arg(long)]
        table: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Health { url }) = &cli.command {
        return health(&cli.config, url.as_deref());
    }
    // Flushes the queued log lines when main returns.
    let _log = cloakroom::log::init(json_logs(&cli.config));
    match cli.command {
        Some(Command::Check) => check(&cli.config),
        Some(Command::Secret) => secret(),
        Some(Command::Health { .. }) => ExitCode::from(1),
        Some(Command::DemoApps { addrs }) => demo_apps(addrs),
        Some(Command::Schema { table }) => schema(&cli.config, table),
        None => {
            let Some(runtime) = main_runtime() else {
                return ExitCode::from(1);
            };
            runtime.block_on(serve(&cli.config, cli.demo))
        }
    }
}

/// `cloakroom secret`: a value for `session.secret` (or the next one, when rotating).
fn secret() -> ExitCode {
    use base64::Engine as _;
    match cloakroom::session::random_bytes::<48>() {
        Ok(bytes) => {
            println!(
                "{}",
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("cloakroom: {error}");
            ExitCode::from(1)
        }
    }
}

/// The current-thread runtime of the main thread (the request workers run their own).
fn main_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(error) => {
            eprintln!("cloakroom: cannot start the async runtime: {error}");
            None
        }
    }
}

/// `cloakroom demo-apps ADDR...`: the demo apps alone, until SIGTERM/SIGINT.
fn demo_apps(addrs: Vec<SocketAddr>) -> ExitCode {
    let Some(runtime) = main_runtime() else {
        return ExitCode::from(1);
    };
    runtime.block_on(async move {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            eprintln!("cloakroom: cannot install signal handlers");
            return ExitCode::from(1);
        };
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        eprintln!("cloakroom: demo apps on {addrs:?}");
        match cloakroom::demo::serve(addrs, stop).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("cloakroom: demo apps: {error}");
                ExitCode::from(1)
            }
        }
    })
}

/// `cloakroom health`: exit 0 when `/healthz` answers 200.
fn health(config: &Path, url: Option<&str>) -> ExitCode {
    let url = match url {
        Some(url) => url.to_string(),
        None => match Config::load(config)
            .map_err(|e| e.to_string())
            .and_then(|c| cloakroom::admin::probe::healthz_url(&c).map_err(|e| e.to_string()))
        {
            Ok(url) => url,
            Err(error) => {
                eprintln!("cloakroom health: {error}");
                return ExitCode::from(1);
            }
        },
    };
    match cloakroom::admin::probe::probe(&url) {
        Ok(()) => {
            println!("{url}: ok");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("cloakroom health: {error}");
            ExitCode::from(1)
        }
    }
}

/// Whether the config file asks for `[log] format = "json"`. Read before logging
/// starts, so even the first line has the right format; an unreadable file logs as
/// text (and the loader reports why).
fn json_logs(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(value) = text.parse::<toml::Table>() else {
        return false;
    };
    value
        .get("log")
        .and_then(|l| l.get("format"))
        .and_then(|f| f.as_str())
        == Some("json")
}

fn check(path: &Path) -> ExitCode {
    match cloakroom::state::load_with_certs(path) {
        Ok((config, _)) => {
            for warning in &config.warnings {
                eprintln!("warning: {warning}");
            }
            println!(
                "{}: ok ({} upstream(s), {} route(s))",
                path.display(),
                config.upstreams.len(),
                config.routes.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(2)
        }
    }
}

/// `cloakroom schema`: exit 0 with the script on stdout, 2 when there is no valid
/// table name to make it for.
fn schema(path: &Path, table: Option<String>) -> ExitCode {
    let table = match table {
        Some(table) => table,
        None => match cloakroom::config::Config::load(path) {
            Ok(config) => match &config.session.store {
                cloakroom::config::StoreKind::Postgres(postgres) => postgres.table.clone(),
                _ => {
                    eprintln!(
                        "{}: session.store is not \"postgres\"; pass --table NAME to print \
                         the schema anyway",
                        path.display()
                    );
                    return ExitCode::from(2);
                }
            },
            Err(errors) => {
                eprintln!("{errors}");
                return ExitCode::from(2);
            }
        },
    };
    match cloakroom::session::store::postgres::schema_script(&table) {
        Ok(script) => {
            print!("{script}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("cloakroom: --table: {message}");
            ExitCode::from(2)
        }
    }
}

async fn serve(path: &Path, demo: bool) -> ExitCode {
    if demo {
        if let Err(error) = cloakroom::demo::ensure_certificate(path) {
            eprintln!("cloakroom: --demo could not make a certificate: {error}");
            eprintln!(
                "cloakroom: put a certificate and key (cert.pem, key.pem) where [tls] cert and key \
                 point; in the container image, mount them: -v \"$PWD/certs:/etc/cloakroom/certs:ro\""
            );
            return ExitCode::from(1);
        }
    }
    let loaded = tokio::task::spawn_blocking({
        let path = path.to_path_buf();
        move || cloakroom::state::load_with_certs(&path)
    })
    .await;
    let (config, certs) = match loaded {
        Ok(Ok(loaded)) => loaded,
        Ok(Err(errors)) => {
            eprintln!("{errors}");
            eprintln!("cloakroom: not started: fix the configuration above (`cloakroom check` validates it)");
            return ExitCode::from(2);
        }
        Err(error) => {
            eprintln!("cloakroom: loading the configuration failed: {error}");
            return ExitCode::from(1);
        }
    };
    let listeners = match Listeners::bind(&config).await {
        Ok(listeners) => listeners,
        Err(error) => {
            eprintln!("cloakroom: {error}");
            return ExitCode::from(1);
        }
    };
    if let Ok(addr) = listeners.https.local_addr() {
        tracing::info!(%addr, "https listener");
    }
    let (handle, commands) = control();
    let demo_stop = tokio::sync::watch::channel(false);
    if demo {
        let addrs = demo_addresses(&config);
        let mut stop = demo_stop.1.clone();
        let shutdown = async move {
            let _ = stop.changed().await;
        };
        let apps = tokio::spawn(cloakroom::demo::serve(addrs.clone(), shutdown));
        tracing::warn!(
            ?addrs,
            "DEMO MODE: built-in demo apps are serving the configured upstream addresses"
        );
        tokio::spawn(async move {
            if let Ok(Err(error)) = apps.await {
                tracing::error!(%error, "demo app could not start");
            }
        });
    }
    if let Err(error) = watch_signals(handle) {
        eprintln!("cloakroom: cannot install signal handlers: {error}");
        return ExitCode::from(1);
    }
    let result = cloakroom::run(config, certs, listeners, commands).await;
    let _ = demo_stop.0.send(true);
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(error) => {
            tracing::error!(%error, "cloakroom failed");
            ExitCode::from(1)
        }
    }
}

/// SIGTERM/SIGINT shut down gracefully; SIGHUP reloads.
fn watch_signals(handle: cloakroom::Handle) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); handle.shutdown(); }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); handle.shutdown(); }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading");
                    // The result is logged by the proxy itself.
                    let _ = handle.reload().await;
                }
            }
        }
    });
    Ok(())
}

/// Loopback server addresses of every upstream: where the demo apps listen.
fn demo_addresses(config: &Config) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = config
        .upstreams
        .iter()
        .flat_map(|u| u.servers.iter().map(|s| s.addr))
        .filter(|a| a.ip().is_loopback())
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs
}
