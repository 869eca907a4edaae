//! The PostgreSQL schema of the session store, its migrations and the statements the
//! store runs, all derived from the configured table name.
//!
//! One row per session: the SHA-256 of its token (never the token itself), its public
//! id, user and roles in plain columns (for the admin API and for SQL audits), the
//! pinned server, the session in the one shared encoding (`session::record`), and its
//! created / last seen / expires times in unix milliseconds. A version table
//! (`cloakroom_schema`, beside the sessions table) records which migration steps ran;
//! the proxy applies the missing ones at start under an advisory lock (replicas that
//! start together wait for each other), or a DBA applies `cloakroom schema`'s output.
//!
//! The table name is a validated plain identifier (`config::validate::postgres`), so
//! it is written into the SQL unquoted.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::error::PgError;

/// The schema version this build writes and reads.
pub(crate) const VERSION: i32 = 2;

/// Migration steps; step `i` takes the schema from version `i` to `i + 1`.
fn steps(t: &Names) -> Vec<String> {
    vec![format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n\
         \x20   token_hash   bytea  PRIMARY KEY,      -- SHA-256 of the cookie's token\n\
         \x20   public_id    bytea  NOT NULL,         -- X-Session-Id (base64url of these bytes)\n\
         \x20   username     text,                    -- NULL while anonymous\n\
         \x20   roles        text,\n\
         \x20   pinned       bigint,                  -- the server the session is pinned to\n\
         \x20   data         bytea  NOT NULL,         -- the whole session (cloakroom's encoding)\n\
         \x20   created_ms   bigint NOT NULL,         -- unix ms; restarts at login\n\
         \x20   last_seen_ms bigint NOT NULL,         -- unix ms, written at most once per touch_interval\n\
         \x20   expires_ms   bigint NOT NULL          -- unix ms; the sweep deletes rows past it\n\
         );\n\
         CREATE INDEX IF NOT EXISTS {base}_user ON {table} (username) WHERE username IS NOT NULL;\n\
         CREATE INDEX IF NOT EXISTS {base}_public ON {table} (public_id);\n\
         CREATE INDEX IF NOT EXISTS {base}_expires ON {table} (expires_ms);",
        table = t.table,
        base = t.base,
    ),
    // 2: the `KeyValue` side (OIDC logins in progress, replay guards, locks).
    format!(
        "CREATE TABLE IF NOT EXISTS {table}_kv (\n\
         \x20   key        text   PRIMARY KEY,\n\
         \x20   value      bytea  NOT NULL,\n\
         \x20   expires_ms bigint NOT NULL\n\
         );\n\
         CREATE INDEX IF NOT EXISTS {base}_kv_exp ON {table}_kv (expires_ms);\n\
         CREATE TABLE IF NOT EXISTS {table}_kvset (\n\
         \x20   key        text   NOT NULL,\n\
         \x20   member     text   NOT NULL,\n\
         \x20   expires_ms bigint NOT NULL,\n\
         \x20   PRIMARY KEY (key, member)\n\
         );\n\
         CREATE INDEX IF NOT EXISTS {base}_kvs_exp ON {table}_kvset (expires_ms);",
        table = t.table,
        base = t.base,
    )]
}

/// Longest table name: PostgreSQL truncates identifiers at 63 bytes, and the index
/// names add a suffix to it.
const MAX_TABLE_NAME: usize = 48;

/// `table` or `schema.table`, each part a lower-case SQL identifier.
pub fn table_name(name: &str) -> Result<(), String> {
    let ident = |part: &str| {
        part.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let parts: Vec<&str> = name.split('.').collect();
    let valid = matches!(parts.len(), 1 | 2) && parts.iter().all(|p| ident(p));
    if !valid {
        return Err(format!(
            "\"{name}\" is not a plain table name; use lower-case letters, digits and _ \
             (optionally \"schema.table\"), like \"cloakroom_sessions\""
        ));
    }
    if parts.last().map_or(0, |p| p.len()) > MAX_TABLE_NAME {
        return Err(format!(
            "the table name is longer than {MAX_TABLE_NAME} characters"
        ));
    }
    Ok(())
}

/// The names the SQL uses.
struct Names {
    /// As configured: `table` or `schema.table`.
    table: String,
    /// The table part (index names are made from it).
    base: String,
    /// The version table, in the same schema.
    versions: String,
}

impl Names {
    fn new(table: &str) -> Names {
        let (schema, base) = match table.split_once('.') {
            Some((schema, base)) => (Some(schema), base),
            None => (None, table),
        };
        Names {
            table: table.to_owned(),
            base: base.to_owned(),
            versions: match schema {
                Some(schema) => format!("{schema}.cloakroom_schema"),
                None => "cloakroom_schema".to_owned(),
            },
        }
    }

    fn version_table(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n\
             \x20   table_name text PRIMARY KEY,\n\
             \x20   version    integer NOT NULL,\n\
             \x20   applied_at timestamptz NOT NULL DEFAULT now()\n\
             );",
            self.versions
        )
    }

    fn record_version(&self, version: i32) -> String {
        format!(
            "INSERT INTO {} (table_name, version) VALUES ('{}', {version})\n\
             \x20   ON CONFLICT (table_name) DO UPDATE SET version = EXCLUDED.version, applied_at = now();",
            self.versions, self.table
        )
    }
}

/// The whole schema as one SQL script, for DBAs who apply it themselves
/// (`cloakroom schema`). Idempotent. `Err` says why `table` is not a usable name.
pub fn script(table: &str) -> Result<String, String> {
    table_name(table)?;
    let names = Names::new(table);
    let mut out = format!(
        "-- cloakroom session store, schema version {VERSION}, table {table}\n\
         -- Apply once (psql -v ON_ERROR_STOP=1 -f ...); the proxy then finds the schema\n\
         -- current and runs no DDL itself.\nBEGIN;\n\
         -- the lock cloakroom's own migrations take (they may run at the same time)\n\
         SELECT pg_advisory_xact_lock({});\n{}\n",
        lock_key(&names.versions),
        names.version_table()
    );
    for step in steps(&names) {
        out.push_str(&step);
        out.push('\n');
    }
    out.push_str(&names.record_version(VERSION));
    out.push_str("\nCOMMIT;\n");
    Ok(out)
}

/// A key for the advisory locks of this table (migrations, sweeps): the first 8 bytes
/// of SHA-256 over the name, so two tables in one database do not share locks.
pub(crate) fn lock_key(table: &str) -> i64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, table.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(digest.as_ref().get(..8).unwrap_or(&[0; 8]));
    i64::from_be_bytes(bytes)
}

/// Why the schema could not be made current.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SchemaError {
    #[error(transparent)]
    Pg(#[from] PgError),
    /// The database was migrated by a newer cloakroom; this one must not touch it.
    #[error(
        "table {table} has schema version {found}, newer than this cloakroom's {VERSION}; \
         upgrade cloakroom"
    )]
    Newer { table: String, found: i32 },
}

impl From<tokio_postgres::Error> for SchemaError {
    fn from(error: tokio_postgres::Error) -> SchemaError {
        SchemaError::Pg(PgError::Driver(error))
    }
}

/// Brings the schema to [`VERSION`]: nothing when it is current (no DDL, so a proxy
/// whose role may not create tables runs on a schema a DBA applied), else the missing
/// steps in one transaction under an advisory lock.
pub(crate) async fn ensure(client: &mut Client, table: &str) -> Result<(), SchemaError> {
    let names = Names::new(table);
    let read = format!(
        "SELECT version FROM {} WHERE table_name = $1",
        names.versions
    );
    match client.query_opt(read.as_str(), &[&table]).await {
        Ok(Some(row)) => {
            let found: i32 = row.try_get(0)?;
            if found == VERSION {
                return Ok(());
            }
        }
        Ok(None) => {}
        Err(error) if error.code() == Some(&SqlState::UNDEFINED_TABLE) => {}
        Err(error) => return Err(error.into()),
    }
    let tx = client.transaction().await?;
    // One lock for every table's migration: they share the version table, and
    // concurrent `CREATE TABLE IF NOT EXISTS` of one table can fail in PostgreSQL.
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&lock_key(&names.versions)],
    )
    .await?;
    tx.batch_execute(&names.version_table()).await?;
    let found: i32 = tx
        .query_opt(read.as_str(), &[&table])
        .await?
        .map(|row| row.try_get(0))
        .transpose()?
        .unwrap_or(0);
    if found > VERSION {
        return Err(SchemaError::Newer {
            table: table.to_owned(),
            found,
        });
    }
    let from = usize::try_from(found).unwrap_or(0);
    for step in steps(&names).iter().skip(from) {
        tx.batch_execute(step).await?;
    }
    tx.batch_execute(&names.record_version(VERSION)).await?;
    tx.commit().await?;
    tracing::info!(
        table,
        from = found,
        to = VERSION,
        "session table schema migrated"
    );
    Ok(())
}

/// The text of every statement the store prepares.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) load: String,
    pub(crate) insert: String,
    pub(crate) save: String,
    pub(crate) regenerate: String,
    pub(crate) destroy: String,
    pub(crate) destroy_user: String,
    pub(crate) destroy_public: String,
    pub(crate) list_user: String,
    pub(crate) count: String,
    pub(crate) sweep_lock: String,
    pub(crate) sweep: String,
}

/// Rows one sweep statement deletes at most (short transactions, short row locks).
pub(crate) const SWEEP_BATCH: i64 = 500;

impl Sql {
    /// The statements for `table`.
    pub(crate) fn new(table: &str) -> Sql {
        let t = table;
        let columns =
            "token_hash, public_id, username, roles, pinned, data, created_ms, last_seen_ms, expires_ms";
        let values = "$1::bytea, $2::bytea, $3::text, $4::text, $5::bigint, $6::bytea, \
                      $7::bigint, $8::bigint, $9::bigint";
        Sql {
            // One round trip: read the row and, when due (last seen at least
            // touch_ms ago) and still live, record the use. $1 token hash, $2 now,
            // $3 idle, $4 absolute, $5 touch (ms).
            load: format!(
                "WITH s AS (SELECT data, created_ms, last_seen_ms FROM {t} WHERE token_hash = $1::bytea), \
                 touched AS (UPDATE {t} SET last_seen_ms = $2::bigint, \
                     expires_ms = LEAST($2::bigint + $3::bigint, created_ms + $4::bigint) \
                   WHERE token_hash = $1::bytea AND last_seen_ms <= $2::bigint - $5::bigint \
                     AND last_seen_ms > $2::bigint - $3::bigint AND created_ms > $2::bigint - $4::bigint \
                   RETURNING last_seen_ms) \
                 SELECT s.data, s.created_ms, s.last_seen_ms, (SELECT last_seen_ms FROM touched) FROM s"
            ),
            insert: format!(
                "INSERT INTO {t} ({columns}) VALUES ({values}) ON CONFLICT (token_hash) DO NOTHING"
            ),
            // XX: only an existing row. $1 token hash, $2 user, $3 roles, $4 pinned,
            // $5 data, $6 created, $7 last seen, $8 idle, $9 absolute.
            save: format!(
                "UPDATE {t} SET username = $2::text, roles = $3::text, pinned = $4::bigint, \
                   data = $5::bytea, created_ms = $6::bigint, \
                   last_seen_ms = GREATEST(last_seen_ms, $7::bigint), \
                   expires_ms = LEAST(GREATEST(last_seen_ms, $7::bigint) + $8::bigint, $6::bigint + $9::bigint) \
                 WHERE token_hash = $1::bytea"
            ),
            // Atomic: one statement is one transaction; the old token is gone when
            // the new one exists. $10 is the old token's hash.
            regenerate: format!(
                "WITH gone AS (DELETE FROM {t} WHERE token_hash = $10::bytea) \
                 INSERT INTO {t} ({columns}) VALUES ({values}) ON CONFLICT (token_hash) DO NOTHING"
            ),
            destroy: format!("DELETE FROM {t} WHERE token_hash = $1::bytea"),
            destroy_user: format!("DELETE FROM {t} WHERE username = $1::text"),
            destroy_public: format!("DELETE FROM {t} WHERE public_id = $1::bytea"),
            list_user: format!(
                "SELECT public_id, username, roles, created_ms, last_seen_ms FROM {t} \
                 WHERE username = $1::text ORDER BY created_ms"
            ),
            count: format!("SELECT count(*) FROM {t}"),
            sweep_lock: "SELECT pg_try_advisory_xact_lock($1::bigint)".to_owned(),
            sweep: format!(
                "DELETE FROM {t} WHERE token_hash IN (SELECT token_hash FROM {t} \
                 WHERE expires_ms <= $1::bigint LIMIT {SWEEP_BATCH} FOR UPDATE SKIP LOCKED)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_creates_the_table_its_indexes_and_records_the_version() {
        let sql = script("auth.sessions").unwrap();
        assert!(script("x;drop").is_err());
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS auth.cloakroom_schema"));
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS auth.sessions ("));
        assert!(sql.contains("sessions_user ON auth.sessions (username)"));
        assert!(sql.contains("sessions_expires ON auth.sessions (expires_ms)"));
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS auth.sessions_kv ("));
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS auth.sessions_kvset ("));
        assert!(sql.contains(&format!("VALUES ('auth.sessions', {VERSION})")));
        assert!(sql.trim_end().ends_with("COMMIT;"));
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        for good in ["cloakroom_sessions", "auth.sessions", "_t1"] {
            assert!(table_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Sessions", "a.b.c", "x;drop", "1abc", "a-b", ".t", "t."] {
            assert!(table_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lock_keys_differ_per_table() {
        assert_ne!(lock_key("a"), lock_key("b"));
        assert_eq!(lock_key("a"), lock_key("a"));
    }
}
