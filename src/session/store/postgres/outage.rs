//! How the PostgreSQL store meets a database that fails: every operation runs under
//! the deadline on a pooled connection, once more when that connection died (see the
//! parent module's header for why each operation may run twice), and the "known
//! down" flag is kept from fresh connections' view (a new connection, the retry, or
//! the probe), never from one pooled connection that died.

use std::future::Future;
use std::sync::atomic::Ordering;

use super::error::PgError;
use super::pool::Manager;
use super::schema::SchemaError;
use super::{Shared, PROBE_INTERVAL};
use crate::session::StoreError;

impl Shared {
    /// Runs `op` on a pooled connection under the deadline, failing at once while
    /// the database is known down. When the connection died under it, `op` runs once
    /// more on a connection that answers (see the module header); an outage seen by
    /// that second run, or by a new connection, marks the database down, and a
    /// timeout asks the probe.
    pub(super) async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(deadpool::managed::Object<Manager>) -> Fut,
        Fut: Future<Output = Result<T, PgError>>,
    {
        if self.down.load(Ordering::Relaxed) {
            return Err(StoreError::backend(
                "query",
                "the session database is unreachable (retrying in the background)",
            ));
        }
        // `None`: every connection busy (or being made) for the whole wait.
        let work = async {
            let mut retried = false;
            loop {
                let conn = match self.pool.get().await {
                    Ok(conn) => conn,
                    Err(deadpool::managed::PoolError::Backend(error)) => return Err(Some(error)),
                    Err(deadpool::managed::PoolError::Timeout(_)) => return Err(None),
                    Err(_) => return Err(Some(PgError::Gone)),
                };
                match op(conn).await {
                    Ok(value) => return Ok(value),
                    Err(error) if !retried && is_outage(&error) => {
                        tracing::debug!(%error, "a pooled session database connection broke; running the operation once more");
                        self.pool.connection_broke();
                        retried = true;
                    }
                    Err(error) => return Err(Some(error)),
                }
            }
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(Some(error))) => {
                if is_outage(&error) {
                    self.mark_down(&error);
                }
                Err(StoreError::backend("query", error))
            }
            Ok(Err(None)) | Err(_) => {
                self.suspect.store(true, Ordering::Relaxed);
                Err(StoreError::Timeout)
            }
        }
    }

    pub(super) fn mark_down(&self, why: &dyn std::fmt::Display) {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = %why,
                table = %self.table,
                "session database unreachable; session routes answer 503 until it is back"
            );
        }
    }

    /// One probe of a database marked down: the schema if still missing, then a
    /// pooled connection and a trivial query.
    async fn probe_once(&self) -> bool {
        if !self.schema_ready.load(Ordering::Relaxed) {
            match self.prepare_schema().await {
                Ok(()) => {}
                Err(SchemaError::Pg(_)) => return false,
                Err(error) => {
                    tracing::error!(%error, "session table schema cannot be used");
                    return false;
                }
            }
        }
        let ping = async {
            let conn = self.pool.get().await.ok()?;
            conn.client.simple_query("SELECT 1").await.ok()
        };
        matches!(tokio::time::timeout(self.timeout, ping).await, Ok(Some(_)))
    }
}

/// Probes the database while it is marked down, and once after an operation timed
/// out (marking it down when that probe fails too); ends with the store.
pub(super) async fn probe(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.down.load(Ordering::Relaxed) {
            if Box::pin(shared.probe_once()).await {
                shared.down.store(false, Ordering::Relaxed);
                shared.suspect.store(false, Ordering::Relaxed);
                tracing::info!(table = %shared.table, "session database reachable again");
            }
        } else if shared.suspect.swap(false, Ordering::Relaxed)
            && !Box::pin(shared.probe_once()).await
        {
            shared.mark_down(&"operations and a probe found no answer within the timeout");
        }
    }
}

/// Whether `error` means the database cannot be reached (as opposed to a statement
/// it refused): no server answer at all, or a server saying it is shutting down or
/// not accepting connections (SQLSTATE classes 08 and 57).
pub(super) fn is_outage(error: &PgError) -> bool {
    match error {
        PgError::Gone => true,
        PgError::Driver(error) => match error.as_db_error() {
            None => true,
            Some(db) => {
                let code = db.code().code();
                code.starts_with("08") || code.starts_with("57")
            }
        },
    }
}
