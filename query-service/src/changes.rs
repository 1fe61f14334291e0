//! The changes the projection applies, as `GET /todos/stream` sends them: one per event that
//! changed the read model (a todo's new state, or its deletion), with the todo's version and
//! the event's position in the command side's log. The consumer broadcasts each batch's
//! changes as it acks the batch; the stream reads them, or, for a client reconnecting with
//! `Last-Event-ID`, first what the read model holds past that position.

use crate::store::Todo;
use chrono::{DateTime, Utc};
use events::{Envelope, EventType};
use serde::Serialize;
use std::sync::Arc;

/// One applied change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub id: i64,
    pub version: i64,
    /// The event's position in the command side's log: the stream's event id.
    pub position: i64,
    pub deleted: bool,
    /// The todo's state after the change; `None` for a deletion.
    pub todo: Option<Todo>,
    /// When the change happened on the write side (`None` when replayed from the read model,
    /// which keeps no such time for a deletion).
    pub occurred_at: Option<DateTime<Utc>>,
}

/// The changes of one batch, shared by every subscriber.
pub type Changes = Arc<Vec<Change>>;

impl Change {
    /// The change an applied event made.
    pub fn of_event(e: &Envelope) -> Self {
        let todo = match (&e.event_type, &e.data) {
            (EventType::TodoCreated | EventType::TodoUpdated, Some(data)) => Some(Todo {
                id: e.todo_id,
                title: data.title.clone(),
                description: data.description.clone(),
                completed: data.completed,
                version: e.version,
                created_at: data.created_at,
                updated_at: data.updated_at,
            }),
            _ => None,
        };
        Change {
            id: e.todo_id,
            version: e.version,
            position: e.position,
            deleted: todo.is_none(),
            todo,
            occurred_at: Some(e.occurred_at),
        }
    }

    /// Milliseconds from the write to now (what the reader sees as the read side's lag).
    pub fn lag_ms(&self, now: DateTime<Utc>) -> Option<i64> {
        self.occurred_at.map(|at| (now - at).num_milliseconds())
    }
}
