//! The check that the read model equals the write model: every todo's state and version, both
//! ways (every todo PostgreSQL or its log has, and every document MongoDB holds).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use query_service::store::{Store, Stored};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, QueryableByName)]
struct Row {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    title: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    description: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    completed: bool,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    version: i64,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    updated_at: DateTime<Utc>,
}

#[derive(Debug, QueryableByName)]
struct Last {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    todo_id: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    version: i64,
}

/// Differences between PostgreSQL (the write model) and MongoDB (the read model); empty when
/// they agree on every todo, live or deleted: each todo of the log (live in PostgreSQL, or
/// deleted) has its document at its last version, every live row has events, and MongoDB holds
/// no document for a todo neither PostgreSQL nor the log has.
pub async fn differences(database_url: &str, mongodb_uri: &str, mongo_db: &str) -> Vec<String> {
    let mut pg = AsyncPgConnection::establish(database_url)
        .await
        .expect("PostgreSQL");
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT id, title, description, completed, version, created_at, updated_at FROM todos",
    )
    .load(&mut pg)
    .await
    .expect("todos");
    let last: Vec<Last> =
        diesel::sql_query("SELECT todo_id, max(version) AS version FROM events GROUP BY todo_id")
            .load(&mut pg)
            .await
            .expect("events");
    let live: BTreeMap<i64, Row> = rows.into_iter().map(|r| (r.id, r)).collect();
    let store = Store::connect(mongodb_uri, mongo_db)
        .await
        .expect("MongoDB");
    let mut diffs = Vec::new();
    let logged: BTreeSet<i64> = last.iter().map(|l| l.todo_id).collect();
    for id in live.keys().filter(|id| !logged.contains(id)) {
        diffs.push(format!(
            "todo {id}: live in PostgreSQL, but the log has no event for it"
        ));
    }
    let mut stored_ids = store.all_ids().await.expect("read model ids");
    stored_ids.sort_unstable();
    for id in stored_ids.iter().filter(|id| !logged.contains(id)) {
        let stored = store.get(*id).await.expect("read model");
        diffs.push(format!(
            "todo {id}: in MongoDB ({stored:?}), but neither PostgreSQL nor the log has it"
        ));
    }
    for Last { todo_id, version } in last {
        let stored = store.get(todo_id).await.expect("read model");
        match (live.get(&todo_id), stored) {
            (Some(row), Some(Stored::Live(t))) => {
                let pg = (
                    &row.title,
                    &row.description,
                    row.completed,
                    row.version,
                    row.created_at,
                    row.updated_at,
                );
                let mongo = (
                    &t.title,
                    &t.description,
                    t.completed,
                    t.version,
                    t.created_at,
                    t.updated_at,
                );
                if pg != mongo {
                    diffs.push(format!(
                        "todo {todo_id}: PostgreSQL {pg:?} vs MongoDB {mongo:?}"
                    ));
                }
            }
            (None, Some(Stored::Deleted { version: v })) if v == version => {}
            (expected, got) => diffs.push(format!(
                "todo {todo_id}: PostgreSQL {} (last version {version}) vs MongoDB {got:?}",
                if expected.is_some() {
                    "live"
                } else {
                    "deleted"
                }
            )),
        }
    }
    diffs
}
