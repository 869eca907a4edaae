//! [`PgError`]: why a connection could not be made or used. Its own file so the pool
//! and the schema code both use it without importing each other.

/// Why a connection could not be made or used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PgError {
    /// The driver reported an error (network, protocol or SQL), printed with its causes
    /// ("db error: ERROR: permission denied ..."): its own text alone says only "db
    /// error".
    #[error("{}", crate::error_chain::display_chain(.0))]
    Driver(#[from] tokio_postgres::Error),
    /// The task that drives connections ended before answering (shutdown).
    #[error("the connection task ended (shutting down)")]
    Gone,
}
