//! The PostgreSQL session store (`store = "postgres"`): durable sessions, shared by
//! every replica, auditable with SQL.
//!
//! Invariants:
//! - A row is keyed by the SHA-256 of the session's token; the token itself is never
//!   stored, so a copy of the table grants no session.
//! - Every operation is one statement (one round trip on a pooled connection with the
//!   statement already prepared), bounded by `session.postgres.timeout`. `load`
//!   records a use at most once per `touch_ms` in the same statement; regeneration is
//!   one statement (delete the old row, insert the new one), hence one transaction.
//! - Expiry is enforced on read from the row's times ([`Expiry::allows`]); the row's
//!   `expires_ms` only drives the background [`SessionStore::sweep`], which deletes
//!   in small batches and runs on one replica at a time (`pg_try_advisory_xact_lock`).
//! - A pooled connection that died (with a restarted server, most likely) fails its
//!   operation; the operation then runs once more on a connection that answers (a
//!   new one, or an older one that passed a round trip: see `pool`). Every operation
//!   may run twice: `load` reads, and its touch writes the same time again; `create`
//!   and `regenerate` insert under a fresh random token, so if a first run did commit
//!   and only its answer was lost, its row is held by no client and the sweep removes
//!   it at expiry; `save` writes the same values again; the deletes delete nothing
//!   more (a count from the admin API can miss what a lost first run removed); the
//!   sweep's transaction was rolled back with its connection.
//! - Known down, fail fast: the database is marked down when a new connection cannot
//!   be made or the retried operation fails too (never for one pooled connection
//!   that died), and when a timeout is confirmed by the probe (which gets no answer
//!   either); until a background probe (every [`PROBE_INTERVAL`]) reaches it again,
//!   every operation fails at once and [`SessionStore::known_down`] is true, so the
//!   request path answers 503 without waiting and without forwarding a request whose
//!   new session could not be stored.
//! - Nothing here logs a token, a cookie or the URL (it may hold a password).

mod error;
mod kv;
mod outage;
mod pool;
mod schema;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::ToSql;

use super::{SessionIndex, SessionInfo, SessionStore, StoreError, Sweep};
use crate::config::PostgresConfig;
use crate::random::random_bytes;
use crate::session::{record, Expiry, PublicId, Session, Token};
use error::PgError;
use outage::{is_outage, probe};
use pool::{Conn, Connector, Pool};
use schema::{SchemaError, Sql, SWEEP_BATCH};

pub use schema::{script as schema_script, table_name};

/// How often a database known to be down is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// Batches one sweep deletes at most (the next sweep goes on).
const SWEEP_BATCHES: usize = 20;
/// Largest millisecond value written (about 35,000 years): keeps the SQL arithmetic
/// on `bigint` far from overflow whatever the configured lifetimes.
const MAX_MS: u64 = 1 << 50;

/// The state the store and its probe task share.
#[derive(Debug)]
struct Shared {
    pool: Pool,
    connector: Connector,
    table: String,
    lock_key: i64,
    timeout: Duration,
    /// Set by a connection failure or a failed probe, cleared by a successful probe.
    down: AtomicBool,
    /// An operation timed out: the probe checks the database at its next tick (one
    /// slow statement alone does not take the store down).
    suspect: AtomicBool,
    /// The schema was found or made current (a start with the database down leaves
    /// this to the probe).
    schema_ready: AtomicBool,
}

/// The PostgreSQL store. Dropping it ends its probe task.
#[derive(Debug)]
pub struct PostgresStore {
    shared: Arc<Shared>,
    probe: tokio::task::JoinHandle<()>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.probe.abort();
    }
}

impl PostgresStore {
    /// Connects, brings the schema to this build's version and starts the probe task
    /// (on the current runtime, which also drives the connections). A database that
    /// cannot be reached is not an error: the store starts down and recovers when the
    /// database answers. A schema from a newer cloakroom, a refused migration or a bad
    /// TLS setup are errors.
    pub async fn open(config: &PostgresConfig) -> Result<PostgresStore, StoreError> {
        let connector = Connector::new(config).await?;
        let sql = Arc::new(Sql::new(&config.table));
        let pool = Pool::new(connector.clone(), sql, config.pool, config.timeout);
        let shared = Arc::new(Shared {
            pool,
            connector,
            table: config.table.clone(),
            lock_key: schema::lock_key(&config.table),
            timeout: config.timeout,
            down: AtomicBool::new(false),
            suspect: AtomicBool::new(false),
            schema_ready: AtomicBool::new(false),
        });
        match shared.prepare_schema().await {
            Ok(()) => {}
            Err(SchemaError::Pg(error)) if is_outage(&error) => {
                tracing::warn!(
                    %error,
                    table = %shared.table,
                    "session database unreachable at start; session routes answer 503 \
                     until it is back"
                );
                shared.down.store(true, Ordering::Relaxed);
            }
            Err(error) => {
                return Err(StoreError::backend(
                    "prepare the session table",
                    format!("session table {}: {error}", shared.table),
                ))
            }
        }
        let probe = tokio::spawn(probe(Arc::downgrade(&shared)));
        Ok(PostgresStore { shared, probe })
    }
}

impl Shared {
    /// Makes the schema current on a connection of its own (the pool's connections
    /// prepare statements against the table, so it must exist first).
    async fn prepare_schema(&self) -> Result<(), SchemaError> {
        let work = async {
            let mut client = self.connector.connect().await?;
            schema::ensure(&mut client, &self.table).await
        };
        match tokio::time::timeout(self.timeout * 4, work).await {
            Ok(Ok(())) => {
                self.schema_ready.store(true, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(SchemaError::Pg(PgError::Gone)),
        }
    }
}

/// The row key of a token.
fn token_hash(token: &Token) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, &token.0);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Unix ms as the `bigint` PostgreSQL keeps.
fn ms(value: u64) -> i64 {
    i64::try_from(value.min(MAX_MS)).unwrap_or(i64::MAX)
}

/// The stored form of a `bigint` ms column.
fn from_ms(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The parameters of a row insert: $1..$9 of `Sql::insert` and `Sql::regenerate`.
struct Row {
    hash: Vec<u8>,
    public_id: Vec<u8>,
    user: Option<String>,
    roles: Option<String>,
    pinned: Option<i64>,
    data: Vec<u8>,
    created: i64,
    last_seen: i64,
    expires: i64,
}

impl Row {
    fn new(token: &Token, session: &Session, expiry: Expiry) -> Row {
        let expires = session
            .last_seen
            .saturating_add(expiry.idle_ms)
            .min(session.created.saturating_add(expiry.absolute_ms));
        Row {
            hash: token_hash(token).to_vec(),
            public_id: session.public_id.0.to_vec(),
            user: session.user().map(str::to_owned),
            roles: session.roles().map(str::to_owned),
            pinned: session
                .pinned
                .map(|b| i64::from_be_bytes(b.0.to_be_bytes())),
            data: record::encode(session),
            created: ms(session.created),
            last_seen: ms(session.last_seen),
            expires: ms(expires),
        }
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.hash,
            &self.public_id,
            &self.user,
            &self.roles,
            &self.pinned,
            &self.data,
            &self.created,
            &self.last_seen,
            &self.expires,
        ]
    }
}

/// Tries fresh tokens until one is free (a 256-bit collision is not expected; the
/// bound keeps a broken random generator from looping).
async fn insert_fresh(
    conn: &Conn,
    statement: &tokio_postgres::Statement,
    session: &Session,
    expiry: Expiry,
    old: Option<[u8; 32]>,
) -> Result<Result<Token, StoreError>, PgError> {
    for _ in 0..4 {
        let token = match random_bytes::<32>() {
            Ok(bytes) => Token(bytes),
            Err(error) => return Ok(Err(StoreError::backend("draw a token", error))),
        };
        let row = Row::new(&token, session, expiry);
        let inserted = match &old {
            Some(old) => {
                let old = old.as_slice();
                let mut params: Vec<&(dyn ToSql + Sync)> = row.params().to_vec();
                params.push(&old);
                conn.client.execute(statement, &params).await?
            }
            None => conn.client.execute(statement, &row.params()).await?,
        };
        if inserted == 1 {
            return Ok(Ok(token));
        }
    }
    Ok(Err(StoreError::backend(
        "draw a token",
        "could not draw an unused token",
    )))
}

#[async_trait::async_trait]
impl SessionStore for PostgresStore {
    async fn load(
        &self,
        token: &Token,
        now: u64,
        expiry: Expiry,
    ) -> Result<Option<Session>, StoreError> {
        let hash = token_hash(token);
        let (now_ms, idle, absolute, touch) = (
            ms(now),
            ms(expiry.idle_ms),
            ms(expiry.absolute_ms),
            ms(expiry.touch_ms),
        );
        let row = self
            .shared
            .run(|conn| async move {
                let params: [&(dyn ToSql + Sync); 5] =
                    [&hash.as_slice(), &now_ms, &idle, &absolute, &touch];
                Ok(conn.client.query_opt(&conn.st.load, &params).await?)
            })
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let fields = (|| -> Result<_, tokio_postgres::Error> {
            let data: &[u8] = row.try_get(0)?;
            let created: i64 = row.try_get(1)?;
            let last_seen: i64 = row.try_get(2)?;
            let touched: Option<i64> = row.try_get(3)?;
            Ok((record::decode(data), created, last_seen, touched))
        })();
        let (decoded, created, last_seen, touched) =
            fields.map_err(|e| StoreError::backend("load", e))?;
        let (created, last_seen) = (from_ms(created), from_ms(last_seen));
        if !expiry.allows(created, last_seen, now) {
            return Ok(None);
        }
        // A row this build cannot read is no session (never an error for the client).
        let Ok(mut session) = decoded else {
            return Ok(None);
        };
        session.created = created;
        session.last_seen = touched.map_or(last_seen, from_ms);
        Ok(Some(session))
    }

    async fn create(&self, session: &Session, expiry: Expiry) -> Result<Token, StoreError> {
        self.shared
            .run(|conn| async move {
                insert_fresh(&conn, &conn.st.insert, session, expiry, None).await
            })
            .await?
    }

    async fn save(
        &self,
        token: &Token,
        session: &Session,
        expiry: Expiry,
    ) -> Result<(), StoreError> {
        let row = &Row::new(token, session, expiry);
        let (idle, absolute) = (ms(expiry.idle_ms), ms(expiry.absolute_ms));
        self.shared
            .run(|conn| async move {
                let params: [&(dyn ToSql + Sync); 9] = [
                    &row.hash,
                    &row.user,
                    &row.roles,
                    &row.pinned,
                    &row.data,
                    &row.created,
                    &row.last_seen,
                    &idle,
                    &absolute,
                ];
                conn.client.execute(&conn.st.save, &params).await?;
                Ok(())
            })
            .await
    }

    async fn regenerate(
        &self,
        old: &Token,
        session: &Session,
        expiry: Expiry,
    ) -> Result<Token, StoreError> {
        let old = token_hash(old);
        self.shared
            .run(|conn| async move {
                insert_fresh(&conn, &conn.st.regenerate, session, expiry, Some(old)).await
            })
            .await?
    }

    async fn destroy(&self, token: &Token) -> Result<(), StoreError> {
        let hash = token_hash(token);
        self.shared
            .run(|conn| async move {
                conn.client
                    .execute(&conn.st.destroy, &[&hash.as_slice()])
                    .await?;
                Ok(())
            })
            .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.shared
            .run(|conn| async move {
                conn.client.simple_query("SELECT 1").await?;
                Ok(())
            })
            .await
    }

    fn known_down(&self) -> bool {
        self.shared.down.load(Ordering::Relaxed)
    }
}

#[async_trait::async_trait]
impl SessionIndex for PostgresStore {
    async fn destroy_user(&self, user: &str) -> Result<usize, StoreError> {
        let removed =
            self.shared
                .run(|conn| async move {
                    Ok(conn.client.execute(&conn.st.destroy_user, &[&user]).await?)
                })
                .await?;
        Ok(usize::try_from(removed).unwrap_or(usize::MAX))
    }

    async fn destroy_public(&self, id: &PublicId) -> Result<bool, StoreError> {
        let id = id.0;
        let removed = self
            .shared
            .run(|conn| async move {
                Ok(conn
                    .client
                    .execute(&conn.st.destroy_public, &[&id.as_slice()])
                    .await?)
            })
            .await?;
        Ok(removed > 0)
    }

    async fn list_user(
        &self,
        user: &str,
        now: u64,
        expiry: Expiry,
    ) -> Result<Vec<SessionInfo>, StoreError> {
        let rows = self
            .shared
            .run(|conn| async move { Ok(conn.client.query(&conn.st.list_user, &[&user]).await?) })
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let fields = (|| -> Result<_, tokio_postgres::Error> {
                let public_id: &[u8] = row.try_get(0)?;
                let user: Option<String> = row.try_get(1)?;
                let roles: Option<String> = row.try_get(2)?;
                let created: i64 = row.try_get(3)?;
                let last_seen: i64 = row.try_get(4)?;
                Ok((public_id.to_vec(), user, roles, created, last_seen))
            })();
            let (public_id, user, roles, created, last_seen) =
                fields.map_err(|e| StoreError::backend("list_user", e))?;
            let (created, last_seen) = (from_ms(created), from_ms(last_seen));
            let Ok(public_id) = <[u8; 16]>::try_from(public_id.as_slice()) else {
                continue;
            };
            if expiry.allows(created, last_seen, now) {
                out.push(SessionInfo {
                    public_id: PublicId(public_id),
                    user,
                    roles,
                    created,
                    last_seen,
                });
            }
        }
        Ok(out)
    }

    async fn count(&self) -> Result<usize, StoreError> {
        let count: i64 = self
            .shared
            .run(|conn| async move {
                let row = conn.client.query_one(&conn.st.count, &[]).await?;
                Ok(row.try_get(0)?)
            })
            .await?;
        Ok(usize::try_from(count).unwrap_or(0))
    }
}

#[async_trait::async_trait]
impl Sweep for PostgresStore {
    async fn sweep(&self, now: u64, _expiry: Expiry) -> Result<usize, StoreError> {
        let (now, key) = (ms(now), self.shared.lock_key);
        let mut removed = 0usize;
        for _ in 0..SWEEP_BATCHES {
            // One short transaction per batch; a replica that does not get the lock
            // leaves this batch to the one that has it.
            let batch = self
                .shared
                .run(|mut conn| async move {
                    let Conn { client, st, .. } = &mut *conn;
                    let tx = client.transaction().await?;
                    let row = tx.query_one(&st.sweep_lock, &[&key]).await?;
                    let locked: bool = row.try_get(0)?;
                    if !locked {
                        return Ok(None);
                    }
                    let deleted = tx.execute(&st.sweep, &[&now]).await?;
                    tx.commit().await?;
                    Ok(Some(deleted))
                })
                .await?;
            let Some(deleted) = batch else {
                break;
            };
            removed += usize::try_from(deleted).unwrap_or(0);
            if deleted < SWEEP_BATCH.unsigned_abs() {
                break;
            }
        }
        // Expired `KeyValue` rows (logins never finished, old locks); not sessions, so
        // not counted among them.
        if let Err(error) = self.sweep_kv(now).await {
            tracing::debug!(%error, "could not remove expired key-value rows");
        }
        Ok(removed)
    }
}
