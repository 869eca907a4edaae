//! Server health, off the request path.
//!
//! - Active checks (`[upstreams.NAME.health]`): every `interval`, `GET path` on a fresh
//!   connection within `timeout`; a 2xx or 3xx passes. `fall` consecutive failures mark
//!   a server down, `rise` consecutive passes mark it up.
//! - Passive detection (in the pipeline): a refused, reset or timed-out connect marks a
//!   server down at once. Without active checks, a server marked down is probed with a
//!   TCP connect after 0.5 s, then 1 s, 2 s, … up to 5 s, and is up again on success.
//!
//! One task owns every check; state lives in each server's `BackendState`, keyed by
//! `(upstream, address)`, so it carries over across reloads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::config::HealthConfig;
use crate::state::AppState;
use crate::upstream::{BackendState, MAX_BACKOFF};

/// How often the task looks for due checks.
const TICK: Duration = Duration::from_millis(100);

/// Runs checks and probes until shutdown begins.
pub(crate) async fn run(state: Arc<AppState>) {
    let stop = state.stop.clone();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checks = JoinSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.wait() => return,
        }
        while checks.try_join_next().is_some() {}
        let runtime = state.runtime();
        let now = Instant::now();
        for pool in &runtime.upstreams {
            for backend in &pool.backends {
                let server = backend.state.clone();
                let mut probe = server.probe();
                if probe.next > now {
                    continue;
                }
                let target = Target {
                    state: server.clone(),
                    upstream: pool.name.clone(),
                    name: backend.name.to_string(),
                };
                match &pool.health {
                    Some(config) => {
                        // A configured interval (at most 400 days) past the clock's
                        // range cannot be: checked, never a panic.
                        probe.next = now.checked_add(config.interval).unwrap_or(now);
                        drop(probe);
                        checks.spawn(active_check(target, config.clone()));
                    }
                    None if !server.is_healthy() => {
                        probe.next = now + probe.backoff;
                        probe.backoff = (probe.backoff * 2).min(MAX_BACKOFF);
                        drop(probe);
                        checks.spawn(reconnect_probe(target));
                    }
                    None => {}
                }
            }
        }
    }
}

/// The server a check is about.
struct Target {
    state: Arc<BackendState>,
    upstream: String,
    name: String,
}

async fn active_check(target: Target, config: HealthConfig) {
    let result = tokio::time::timeout(config.timeout, http_check(&target, &config.path)).await;
    let verdict = match result {
        Ok(Ok(status)) if status < 400 => Ok(()),
        Ok(Ok(status)) => Err(format!("{} answered {status}", config.path)),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(format!("no answer within {:?}", config.timeout)),
    };
    let detail = verdict.as_ref().err().map_or("ok", String::as_str);
    target.state.stats.checked(verdict.is_ok(), detail);
    let mut probe = target.state.probe();
    match verdict {
        Ok(()) => {
            probe.fails = 0;
            probe.passes = probe.passes.saturating_add(1);
            let up = probe.passes >= config.rise;
            drop(probe);
            if up && !target.state.is_healthy() {
                target.state.mark_up(&target.upstream, &target.name);
            }
        }
        Err(why) => {
            probe.passes = 0;
            probe.fails = probe.fails.saturating_add(1);
            let down = probe.fails >= config.fall;
            drop(probe);
            if down {
                target.state.mark_down(
                    &target.upstream,
                    &target.name,
                    &format!("health check: {why}"),
                );
            }
        }
    }
}

/// One `GET` on a fresh connection; returns the status code.
async fn http_check(target: &Target, path: &str) -> Result<u16, String> {
    let stream = TcpStream::connect(target.state.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let request = Request::get(path)
        .header(header::HOST, target.name.as_str())
        .header(header::USER_AGENT, "cloakroom-health")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request: {e}"))?;
    driver.abort();
    Ok(response.status().as_u16())
}

async fn reconnect_probe(target: Target) {
    let connected = tokio::time::timeout(
        Duration::from_secs(2),
        TcpStream::connect(target.state.addr),
    )
    .await;
    if let Ok(Ok(_)) = connected {
        target.state.mark_up(&target.upstream, &target.name);
    }
}
