//! `query-service verify [COMMAND_URL] [--repair]`: checks the read model against the event
//! log command-service keeps.
//!
//! It reads the whole log (`GET /events`, oldest first), folds it into each todo's final
//! state (the state of its newest event, or a tombstone at the delete's version), and compares
//! every todo with what MongoDB holds: version, title, description, completed, timestamps, and
//! live or deleted. It also lists documents the read model holds for todos the log never had.
//! Every difference is printed; the exit code is non-zero if there is one.
//!
//! `--repair` replays the log through the version guard (what `replay` does: it adds what is
//! missing and moves what is behind forward, and can never move anything backwards), then
//! puts each document that is *ahead* of the log (a version the log never reached: only a
//! forged event or a hand edit puts one there, and the guard would keep it for ever) back to
//! the log's state, resets the highest todo id lists in id order walk to, and verifies again.
//! A document for a todo the log never had is reported, not deleted: there is no state to put
//! back, and removing data is left to a person.
//!
//! Run it while no writes are in flight: an event published after the log was read, or not
//! yet projected, shows as a difference.

use crate::replay::LogReader;
use crate::store::{Store, Stored};
use anyhow::Context;
use events::Envelope;
use std::collections::BTreeMap;

fn describe(stored: &Stored) -> String {
    match stored {
        Stored::Live(t) => format!("live at version {}", t.version),
        Stored::Deleted { version } => format!("deleted at version {version}"),
    }
}

/// What one verification found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Events read from the log.
    pub events: u64,
    /// Todos the log has, compared.
    pub compared: usize,
    pub live: usize,
    pub deleted: usize,
    /// One line per difference.
    pub differences: Vec<String>,
    /// The log's newest event of each todo the read model holds at a later version than the
    /// log has: what `--repair` puts back.
    pub ahead: Vec<Envelope>,
    /// The highest todo id and position the log has.
    pub highest: crate::store::Highest,
    /// The read model keeps a higher todo id or position than the log's.
    pub highest_ahead: bool,
}

/// Keeps each todo's newest event.
fn fold(newest: &mut BTreeMap<i64, Envelope>, e: &Envelope) {
    let newer = newest.get(&e.todo_id).is_none_or(|n| n.version < e.version);
    if newer {
        newest.insert(e.todo_id, e.clone());
    }
}

fn compare(id: i64, expected: &Stored, found: Option<&Option<Stored>>) -> Option<String> {
    let found = match found {
        None => {
            return Some(format!(
                "todo {id}: missing from the read model (the log has it {})",
                describe(expected)
            ))
        }
        Some(None) => {
            return Some(format!(
                "todo {id}: the read model's document cannot be read"
            ))
        }
        Some(Some(stored)) => stored,
    };
    match (expected, found) {
        (Stored::Deleted { version }, Stored::Deleted { version: have }) if version == have => None,
        (Stored::Live(want), Stored::Live(have)) if want == have => None,
        (Stored::Live(want), Stored::Live(have)) if want.version == have.version => {
            let mut fields = Vec::new();
            if want.title != have.title {
                fields.push(format!("title {:?} (log {:?})", have.title, want.title));
            }
            if want.description != have.description {
                fields.push(format!(
                    "description {:?} (log {:?})",
                    have.description, want.description
                ));
            }
            if want.completed != have.completed {
                fields.push(format!(
                    "completed {} (log {})",
                    have.completed, want.completed
                ));
            }
            if want.created_at != have.created_at {
                fields.push(format!(
                    "created_at {} (log {})",
                    have.created_at, want.created_at
                ));
            }
            if want.updated_at != have.updated_at {
                fields.push(format!(
                    "updated_at {} (log {})",
                    have.updated_at, want.updated_at
                ));
            }
            Some(format!(
                "todo {id}: at version {} the read model has {}",
                want.version,
                fields.join(", ")
            ))
        }
        (want, have) => Some(format!(
            "todo {id}: the read model has it {}, the log {}",
            describe(have),
            describe(want)
        )),
    }
}

/// Reads the whole log from `command_url` (sending `token`, `FEED_TOKEN`, if given) and
/// compares it with `store`: the generation of the read model the pointer names as it starts
/// (`store/generations.rs`), throughout.
pub async fn verify(
    store: &Store,
    command_url: &str,
    token: Option<&str>,
) -> anyhow::Result<Verification> {
    store
        .refresh_pointer()
        .await
        .context("reading the read model's pointer from MongoDB")?;
    let store = &store.pinned_now();
    let log = LogReader::new(command_url, token)?;
    let mut finals: BTreeMap<i64, Envelope> = BTreeMap::new();
    let mut report = Verification::default();
    let mut after = 0;
    let mut last_position = 0;
    loop {
        let page = log.page(after).await?;
        for e in &page {
            fold(&mut finals, e);
            last_position = last_position.max(e.position);
        }
        report.events += page.len() as u64;
        match page.last() {
            Some(last) if page.len() as i64 == log.page_size() => after = last.position,
            _ => break,
        }
    }
    let ids: Vec<i64> = finals.keys().copied().collect();
    for chunk in ids.chunks(500) {
        let stored = store.get_many(chunk).await?;
        for id in chunk {
            let expected = Stored::after(&finals[id]);
            match expected {
                Stored::Live(_) => report.live += 1,
                Stored::Deleted { .. } => report.deleted += 1,
            }
            let found = stored.get(id);
            if let Some(difference) = compare(*id, &expected, found) {
                report.differences.push(difference);
            }
            if let Some(Some(have)) = found {
                if have.version() > expected.version() {
                    report.ahead.push(finals[id].clone());
                }
            }
        }
    }
    report.compared = finals.len();
    report.highest = crate::store::Highest {
        todo_id: finals.keys().next_back().copied().unwrap_or(0),
        position: after.max(last_position),
        ..Default::default()
    };
    // What lists in id order and replays walk up to: past the log's highest, they walk ids
    // and positions that will never hold anything (a forged event before the read side held
    // events to the contract, or a hand edit).
    for (what, kept, log) in [
        (
            "todo id",
            store.max_todo_id().await?,
            report.highest.todo_id,
        ),
        (
            "position",
            store.max_position().await?,
            report.highest.position,
        ),
    ] {
        if kept > log {
            report.differences.push(format!(
                "the read model's highest {what} is {kept}, the log's {log}"
            ));
            report.highest_ahead = true;
        }
    }
    // The counts `/stats` serves, kept batch by batch.
    let live = finals.values().filter(|e| e.data.is_some()).count() as u64;
    let completed = finals
        .values()
        .filter(|e| e.data.as_ref().is_some_and(|d| d.completed))
        .count() as u64;
    if let (_, Some(kept)) = store.stats_and_counts().await? {
        if kept != (live, completed) {
            report.differences.push(format!(
                "the read model keeps {} live todos, {} completed; the log has {live}, {completed} completed",
                kept.0, kept.1
            ));
        }
    }
    for id in store.all_ids().await? {
        if !finals.contains_key(&id) {
            report.differences.push(format!(
                "todo {id}: in the read model, but the log has no event for it"
            ));
        }
    }
    Ok(report)
}

impl std::fmt::Display for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "compared {} todos ({} live, {} deleted) folded from {} events: {} difference(s)",
            self.compared,
            self.live,
            self.deleted,
            self.events,
            self.differences.len()
        )?;
        for d in &self.differences {
            writeln!(f, "  {d}")?;
        }
        Ok(())
    }
}

/// Puts each document of `report.ahead` back to the log's state, the highest todo id to the
/// log's, and counts the live and completed todos again: `--repair`'s part that the version
/// guard cannot do. Returns how many documents were put back.
pub async fn reset_ahead(store: &Store, report: &Verification) -> anyhow::Result<u64> {
    let mut reset = 0;
    for e in &report.ahead {
        reset += store.reset_ahead(e).await?;
    }
    store.reset_highest(report.highest).await?;
    // A read model that needed repair was changed by more than the projection (a hand edit, a
    // lost write), whose counts no batch saw: they are taken again.
    store.keep_counts(true).await?;
    Ok(reset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Todo;
    use chrono::{TimeZone, Utc};
    use events::{EventType, TodoState, SCHEMA_VERSION};

    fn event(todo_id: i64, version: i64, event_type: EventType, title: &str) -> Envelope {
        let at = Utc
            .with_ymd_and_hms(2026, 11, 25, 0, 0, 0)
            .single()
            .expect("time");
        Envelope {
            event_id: uuid::Uuid::new_v4(),
            event_type,
            schema_version: SCHEMA_VERSION,
            todo_id,
            version,
            position: version,
            occurred_at: at,
            correlation_id: "t".into(),
            causation_id: None,
            actor: None,
            data: (event_type != EventType::TodoDeleted).then(|| TodoState {
                title: title.into(),
                description: None,
                completed: false,
                created_at: at,
                updated_at: at,
                due_at: None,
                erased_at: None,
            }),
            changed: Vec::new(),
        }
    }

    #[test]
    fn the_fold_keeps_each_todos_newest_event_whatever_the_order() {
        let mut finals = BTreeMap::new();
        for e in [
            event(1, 2, EventType::TodoUpdated, "b"),
            event(1, 1, EventType::TodoCreated, "a"),
            event(2, 1, EventType::TodoCreated, "x"),
            event(2, 2, EventType::TodoDeleted, ""),
        ] {
            fold(&mut finals, &e);
        }
        assert!(
            matches!(Stored::after(&finals[&1]), Stored::Live(t) if t.title == "b" && t.version == 2)
        );
        assert_eq!(Stored::after(&finals[&2]), Stored::Deleted { version: 2 });
    }

    #[test]
    fn every_kind_of_difference_is_named() {
        let mut finals = BTreeMap::new();
        fold(&mut finals, &event(1, 2, EventType::TodoUpdated, "b"));
        let want = &Stored::after(&finals[&1]);
        let Stored::Live(todo) = want.clone() else {
            panic!("live")
        };
        assert_eq!(
            compare(1, want, Some(&Some(Stored::Live(todo.clone())))),
            None
        );
        let cases: Vec<(Option<Option<Stored>>, &str)> = vec![
            (None, "missing from the read model"),
            (Some(None), "cannot be read"),
            (
                Some(Some(Stored::Live(Todo {
                    version: 1,
                    ..todo.clone()
                }))),
                "live at version 1, the log live at version 2",
            ),
            (
                Some(Some(Stored::Live(Todo {
                    title: "c".into(),
                    ..todo.clone()
                }))),
                "title \"c\" (log \"b\")",
            ),
            (
                Some(Some(Stored::Deleted { version: 3 })),
                "deleted at version 3",
            ),
        ];
        for (found, expected) in cases {
            let difference = compare(1, want, found.as_ref()).expect("a difference");
            assert!(difference.contains(expected), "{difference}");
        }
    }
}
