//! `Idempotency-Key` on `POST /todos`: a request sent again with the same key and the same
//! content is answered with the first answer instead of creating a second todo. Here live the
//! key with the hash of its request ([`Key`]), the stored answers in `idempotency_keys` and how
//! long they are kept ([`Keys`], `IDEMPOTENCY_TTL_HOURS`), the answer as it is replayed
//! ([`Replayed`]), and the background task that removes expired keys ([`Keys::clean`]).

use crate::commands::{CommandError, Todo};
use crate::db::PgPool;
use crate::input::TodoInput;
use crate::shutdown::Shutdown;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Jsonb, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// How often [`Keys::clean`] removes expired keys.
const CLEANUP_EVERY: Duration = Duration::from_secs(600);
/// Expired keys removed per statement: each statement stays well within
/// `DATABASE_STATEMENT_TIMEOUT_MS` however many keys expired.
const CLEANUP_BATCH: usize = 1_000;

/// Removes up to `$2` keys older than `$1` hours: through the index on `created_at`
/// (migration `2026-12-05-000001_idempotency_keys_expiry_index`), so it reads the expired keys
/// only, however many live ones there are.
pub const REMOVE_EXPIRED: &str = "DELETE FROM idempotency_keys WHERE ctid IN ( \
     SELECT ctid FROM idempotency_keys \
     WHERE created_at <= now() - make_interval(hours => $1::int) LIMIT $2)";

/// An `Idempotency-Key` and the hash of the request it came with.
#[derive(Debug, Clone)]
pub struct Key {
    pub key: String,
    pub request_hash: String,
}

impl Key {
    /// The key sent with `input`.
    pub fn new(key: String, input: &TodoInput) -> Self {
        Self {
            key,
            request_hash: request_hash(input),
        }
    }
}

/// The hash a repeated `Idempotency-Key` request is compared by: that of the validated input,
/// never of the JSON text. Two bodies that ask for the same todo (keys in another order, other
/// spacing, a title validation trims, a description null or left out) hash the same, whatever
/// features `serde_json` was built with.
fn request_hash(input: &TodoInput) -> String {
    /// A struct serializes its fields in declaration order: a fixed encoding.
    #[derive(serde::Serialize)]
    struct Canonical<'a> {
        title: &'a str,
        description: Option<&'a str>,
        completed: bool,
    }
    let canonical = serde_json::to_vec(&Canonical {
        title: &input.title,
        description: input.description.as_deref(),
        completed: input.completed,
    })
    .unwrap_or_default();
    Sha256::digest(&canonical)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The `request_hash` of a stored answer whose todo was erased (`Commands::erase`): the hash
/// of its text is gone with the text (a hash of a title would let a guess be checked), so a
/// repeat of the key is answered with the erased answer, whatever its body.
pub const ERASED_REQUEST: &str = "erased";

/// The answer stored for a key, replayed for a repeat of its request: the status and the todo
/// the first request created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub status: u16,
    pub todo: Todo,
}

/// The stored answers, each kept `ttl_hours` (`IDEMPOTENCY_TTL_HOURS`): a key older than that
/// is free again.
#[derive(Debug, Clone, Copy)]
pub struct Keys {
    ttl_hours: i64,
}

#[derive(QueryableByName)]
struct Stored {
    #[diesel(sql_type = Text)]
    request_hash: String,
    #[diesel(sql_type = Integer)]
    response_status: i32,
    #[diesel(sql_type = Jsonb)]
    response_body: serde_json::Value,
}

impl Stored {
    /// The answer this row holds; an error if it cannot be read back into one.
    fn replayed(self, key: &str) -> Result<Replayed, CommandError> {
        let unreadable = |what: String| {
            CommandError::Internal(anyhow::anyhow!(
                "the stored answer of Idempotency-Key {key:?} cannot be read: {what}"
            ))
        };
        let status = u16::try_from(self.response_status)
            .map_err(|_| unreadable(format!("status {}", self.response_status)))?;
        let todo = serde_json::from_value(self.response_body)
            .map_err(|e| unreadable(format!("body: {e}")))?;
        Ok(Replayed { status, todo })
    }
}

impl Keys {
    pub fn new(ttl_hours: i64) -> Self {
        Self { ttl_hours }
    }

    /// The live answer stored for `key`: `None` when there is none or it expired, an error when
    /// it was stored for another request or cannot be read.
    pub async fn replay(
        &self,
        conn: &mut AsyncPgConnection,
        key: &Key,
    ) -> Result<Option<Replayed>, CommandError> {
        let stored: Option<Stored> = diesel::sql_query(
            "SELECT request_hash, response_status, response_body FROM idempotency_keys \
             WHERE key = $1 AND created_at > now() - make_interval(hours => $2::int)",
        )
        .bind::<Text, _>(&key.key)
        .bind::<BigInt, _>(self.ttl_hours)
        .get_result(conn)
        .await
        .optional()?;
        match stored {
            None => Ok(None),
            Some(s) if s.request_hash == ERASED_REQUEST => s.replayed(&key.key).map(Some),
            Some(s) if s.request_hash != key.request_hash => {
                Err(CommandError::IdempotencyKeyReused)
            }
            Some(s) => s.replayed(&key.key).map(Some),
        }
    }

    /// Stores `todo` as the answer (201) to `key`, in the transaction that created it. Takes the
    /// key unless a live entry holds it (an expired one is replaced): false when another
    /// request took it first.
    pub async fn remember(
        &self,
        conn: &mut AsyncPgConnection,
        key: &Key,
        todo: &Todo,
    ) -> Result<bool, CommandError> {
        let body = serde_json::to_value(todo)
            .map_err(|e| CommandError::Internal(anyhow::Error::new(e)))?;
        let taken = diesel::sql_query(
            "INSERT INTO idempotency_keys (key, request_hash, response_status, response_body) \
             VALUES ($1, $2, 201, $3) \
             ON CONFLICT (key) DO UPDATE SET request_hash = EXCLUDED.request_hash, \
               response_status = EXCLUDED.response_status, \
               response_body = EXCLUDED.response_body, created_at = now() \
             WHERE idempotency_keys.created_at <= now() - make_interval(hours => $4::int)",
        )
        .bind::<Text, _>(&key.key)
        .bind::<Text, _>(&key.request_hash)
        .bind::<Jsonb, _>(body)
        .bind::<BigInt, _>(self.ttl_hours)
        .execute(conn)
        .await?;
        Ok(taken > 0)
    }

    /// The background task: every [`CLEANUP_EVERY`], removes the expired keys, until
    /// `shutdown`. A cleanup that fails (PostgreSQL away) is logged at warn and tried again next
    /// time.
    pub async fn clean(self, pool: PgPool, shutdown: Shutdown) {
        tracing::info!("idempotency key cleanup started");
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CLEANUP_EVERY) => {}
                _ = shutdown.triggered() => break,
            }
            match self.remove_expired(&pool).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "expired idempotency keys removed"),
                Err(err) => {
                    tracing::warn!(error = %err, "idempotency key cleanup failed; trying again later")
                }
            }
        }
        tracing::info!("idempotency key cleanup stopped");
    }

    /// Removes the expired keys, [`CLEANUP_BATCH`] per statement; returns how many.
    pub async fn remove_expired(&self, pool: &PgPool) -> anyhow::Result<usize> {
        let mut conn = pool.get().await?;
        let mut removed = 0;
        loop {
            let n = diesel::sql_query(REMOVE_EXPIRED)
                .bind::<BigInt, _>(self.ttl_hours)
                .bind::<BigInt, _>(CLEANUP_BATCH as i64)
                .execute(&mut conn)
                .await?;
            removed += n;
            if n < CLEANUP_BATCH {
                return Ok(removed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_hash_is_that_of_the_validated_input() {
        let hash =
            |body: &str| request_hash(&crate::input::todo_input(body.as_bytes()).expect(body));
        let first = hash(r#"{"title":"a","completed":true}"#);
        for same in [
            r#"{"completed":true,"title":"a"}"#,
            r#"{ "title" : " a ", "completed" : true, "description" : null }"#,
        ] {
            assert_eq!(hash(same), first, "{same}");
        }
        for other in [
            r#"{"title":"a"}"#,
            r#"{"title":"b","completed":true}"#,
            r#"{"title":"a","completed":true,"description":""}"#,
        ] {
            assert_ne!(hash(other), first, "{other}");
        }
    }

    #[test]
    fn a_stored_answer_is_read_back_as_the_todo_or_fails() {
        let todo = Todo {
            id: 7,
            title: "t".into(),
            description: None,
            completed: false,
            version: 1,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            due_at: None,
            erased_at: None,
        };
        let stored = |status: i32, body: serde_json::Value| Stored {
            request_hash: String::new(),
            response_status: status,
            response_body: body,
        };
        let body = serde_json::to_value(&todo).expect("json");
        assert_eq!(
            stored(201, body.clone()).replayed("k").expect("readable"),
            Replayed {
                status: 201,
                todo: todo.clone()
            }
        );
        let mut no_version = body.clone();
        no_version
            .as_object_mut()
            .expect("object")
            .remove("version");
        for (status, body) in [(201, no_version), (201, serde_json::json!({})), (-1, body)] {
            assert!(
                matches!(
                    stored(status, body.clone()).replayed("k"),
                    Err(CommandError::Internal(_))
                ),
                "{status} {body}"
            );
        }
    }
}
