//! The [`KeyValue`] side of the PostgreSQL store: values in `{table}_kv`, sets in
//! `{table}_kvset` (schema step 2), each row with its expiry in unix milliseconds.
//! Expired rows read as absent and are deleted by the sweep.
//!
//! These statements run on a login or a certificate order, not on every request, so
//! they are sent unprepared (a parse on each call) rather than adding to the
//! statements every pooled connection prepares.

use std::time::Duration;

use super::{ms, PostgresStore};
use crate::clock::unix_ms;
use crate::session::store::kv::{ttl_ms, KeyValue};
use crate::session::StoreError;

/// The expiry of a row written now for `ttl`.
fn until(now: i64, ttl: Duration) -> i64 {
    now.saturating_add(ms(ttl_ms(ttl)))
}

impl PostgresStore {
    fn kv_table(&self) -> String {
        format!("{}_kv", self.shared.table)
    }

    fn set_table(&self) -> String {
        format!("{}_kvset", self.shared.table)
    }

    /// Deletes expired keys and set members; how many rows.
    pub(super) async fn sweep_kv(&self, now: i64) -> Result<usize, StoreError> {
        let sql = format!(
            "WITH v AS (DELETE FROM {} WHERE expires_ms <= $1 RETURNING 1), \
             s AS (DELETE FROM {} WHERE expires_ms <= $1 RETURNING 1) \
             SELECT (SELECT count(*) FROM v) + (SELECT count(*) FROM s)",
            self.kv_table(),
            self.set_table()
        );
        let sql = sql.as_str();
        let removed: i64 = self
            .shared
            .run(|conn| async move { Ok(conn.client.query_one(sql, &[&now]).await?.try_get(0)?) })
            .await?;
        Ok(usize::try_from(removed).unwrap_or(0))
    }
}

#[async_trait::async_trait]
impl KeyValue for PostgresStore {
    fn shared(&self) -> bool {
        true
    }

    async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO {} (key, value, expires_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_ms = EXCLUDED.expires_ms",
            self.kv_table()
        );
        let (sql, until) = (sql.as_str(), until(ms(unix_ms()), ttl));
        self.shared
            .run(|conn| async move {
                conn.client.execute(sql, &[&key, &value, &until]).await?;
                Ok(())
            })
            .await
    }

    async fn put_new(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool, StoreError> {
        let table = self.kv_table();
        // Inserts, or replaces a row that has expired; a live row stays.
        let sql = format!(
            "INSERT INTO {table} (key, value, expires_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_ms = EXCLUDED.expires_ms \
             WHERE {table}.expires_ms <= $4 RETURNING 1"
        );
        let now = ms(unix_ms());
        let (sql, until) = (sql.as_str(), until(now, ttl));
        let rows = self
            .shared
            .run(|conn| async move {
                Ok(conn
                    .client
                    .execute(sql, &[&key, &value, &until, &now])
                    .await?)
            })
            .await?;
        Ok(rows > 0)
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let sql = format!(
            "SELECT value FROM {} WHERE key = $1 AND expires_ms > $2",
            self.kv_table()
        );
        let (sql, now) = (sql.as_str(), ms(unix_ms()));
        self.shared
            .run(|conn| async move {
                let row = conn.client.query_opt(sql, &[&key, &now]).await?;
                Ok(row.map(|row| row.try_get(0)).transpose()?)
            })
            .await
    }

    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let sql = format!(
            "DELETE FROM {} WHERE key = $1 RETURNING value, expires_ms",
            self.kv_table()
        );
        let (sql, now) = (sql.as_str(), ms(unix_ms()));
        self.shared
            .run(|conn| async move {
                let Some(row) = conn.client.query_opt(sql, &[&key]).await? else {
                    return Ok(None);
                };
                let expires: i64 = row.try_get(1)?;
                Ok((expires > now).then(|| row.try_get(0)).transpose()?)
            })
            .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let sql = format!(
            "WITH v AS (DELETE FROM {} WHERE key = $1) DELETE FROM {} WHERE key = $1",
            self.kv_table(),
            self.set_table()
        );
        let sql = sql.as_str();
        self.shared
            .run(|conn| async move {
                conn.client.execute(sql, &[&key]).await?;
                Ok(())
            })
            .await
    }

    async fn release(&self, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        let sql = format!(
            "DELETE FROM {} WHERE key = $1 AND value = $2 AND expires_ms > $3",
            self.kv_table()
        );
        let (sql, now) = (sql.as_str(), ms(unix_ms()));
        let rows = self
            .shared
            .run(|conn| async move { Ok(conn.client.execute(sql, &[&key, &value, &now]).await?) })
            .await?;
        Ok(rows > 0)
    }

    async fn add(&self, key: &str, member: &str, ttl: Duration) -> Result<(), StoreError> {
        // The whole set lives `ttl` from this addition (as a Redis set's PEXPIRE).
        let table = self.set_table();
        let sql = format!(
            "WITH others AS (UPDATE {table} SET expires_ms = $3 WHERE key = $1 AND member <> $2) \
             INSERT INTO {table} (key, member, expires_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (key, member) DO UPDATE SET expires_ms = EXCLUDED.expires_ms"
        );
        let (sql, until) = (sql.as_str(), until(ms(unix_ms()), ttl));
        self.shared
            .run(|conn| async move {
                conn.client.execute(sql, &[&key, &member, &until]).await?;
                Ok(())
            })
            .await
    }

    async fn members(&self, key: &str) -> Result<Vec<String>, StoreError> {
        let sql = format!(
            "SELECT member FROM {} WHERE key = $1 AND expires_ms > $2",
            self.set_table()
        );
        let (sql, now) = (sql.as_str(), ms(unix_ms()));
        self.shared
            .run(|conn| async move {
                let rows = conn.client.query(sql, &[&key, &now]).await?;
                Ok(rows
                    .iter()
                    .map(|row| row.try_get(0))
                    .collect::<Result<Vec<String>, _>>()?)
            })
            .await
    }
}
