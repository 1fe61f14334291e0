//! The changes the projection applies, as `GET /todos/stream` sends them: one per event that
//! changed the read model (a todo's new state, or its deletion), with the todo's version and
//! the event's position in the command side's log.
//!
//! Every replica's stream carries every change, whichever replica's consumer applied it: the
//! consumer publishes each acked batch's changes to a fanout exchange of the read side
//! (`crate::fanout`), and every replica's fan-out listener hands what arrives to its [`Hub`],
//! which gives each stream client its own queue bounded in bytes. A client further behind
//! than its budget is told so and let go: neither the consumer nor the listener ever waits for
//! a client.

use crate::store::Todo;
use chrono::{DateTime, Utc};
use events::Envelope;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use tokio::sync::mpsc;

/// One applied change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

impl Change {
    /// The change an applied event made.
    pub fn of_event(e: &Envelope) -> Self {
        let todo = Todo::after(e);
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

    /// About what the change costs a client's queue: its todo's text and the fixed fields.
    fn weight(&self) -> usize {
        const FIXED: usize = 256;
        FIXED
            + self.todo.as_ref().map_or(0, |t| {
                t.title.len() + t.description.as_ref().map_or(0, String::len)
            })
    }
}

/// The changes of one batch, as the fan-out carries them and every client shares them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub changes: Vec<Change>,
}

impl Batch {
    fn weight(&self) -> usize {
        self.changes.iter().map(Change::weight).sum()
    }
}

/// What a stream client's queue hands over.
#[derive(Debug, Clone)]
pub enum Item {
    Changes(Arc<Batch>),
    /// The client will miss changes (it fell behind its budget, or the fan-out was
    /// interrupted): the last item, with the reason.
    Interrupted(String),
}

/// Hands every batch to every subscribed client, each through its own queue bounded in bytes.
pub struct Hub {
    budget: usize,
    subscribers: Mutex<HashMap<u64, Subscriber>>,
    next: AtomicUsize,
    /// Why the hub takes no more clients (the service is stopping), once [`Hub::close`]d.
    closed: Mutex<Option<String>>,
}

struct Subscriber {
    tx: mpsc::UnboundedSender<Item>,
    queued: Arc<AtomicUsize>,
}

/// A client's place in the [`Hub`]: its queue. Dropping it leaves the hub.
pub struct Subscription {
    id: u64,
    rx: mpsc::UnboundedReceiver<Item>,
    queued: Arc<AtomicUsize>,
    hub: Weak<Hub>,
}

impl Hub {
    /// A hub whose clients may each have `budget` bytes of changes queued.
    pub fn new(budget: usize) -> Arc<Self> {
        Arc::new(Self {
            budget: budget.max(1),
            subscribers: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
            closed: Mutex::new(None),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Subscriber>> {
        self.subscribers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let id = self.next.fetch_add(1, Ordering::Relaxed) as u64;
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let mut subscribers = self.lock();
        // Checked under the subscribers' lock, which `close` holds too: a client either
        // subscribed before the close (and is interrupted by it) or is told at once.
        let closed = self
            .closed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(reason) = closed {
            let _ = tx.send(Item::Interrupted(reason));
            return Subscription {
                id,
                rx,
                queued,
                hub: Weak::new(),
            };
        }
        subscribers.insert(
            id,
            Subscriber {
                tx,
                queued: queued.clone(),
            },
        );
        Subscription {
            id,
            rx,
            queued,
            hub: Arc::downgrade(self),
        }
    }

    /// Interrupts every client with `reason` and takes no more: a client subscribing after
    /// this gets the interruption at once (the service is stopping).
    pub fn close(&self, reason: &str) {
        let mut subscribers = self.lock();
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_string());
        for (_, s) in subscribers.drain() {
            let _ = s.tx.send(Item::Interrupted(reason.to_string()));
        }
    }

    /// Clients subscribed now.
    pub fn subscribers(&self) -> usize {
        self.lock().len()
    }

    /// Queues `batch` for every client; one whose queue would pass the budget is told it fell
    /// behind and let go. Never waits.
    pub fn publish(&self, batch: Batch) {
        if batch.changes.is_empty() {
            return;
        }
        let weight = batch.weight();
        let batch = Arc::new(batch);
        let budget = self.budget;
        self.lock().retain(|_, s| {
            let queued = s.queued.load(Ordering::Acquire);
            // A batch heavier than the whole budget still goes to a client that is not behind.
            if queued > 0 && queued + weight > budget {
                let _ = s.tx.send(Item::Interrupted(format!(
                    "more than {budget} bytes of changes behind (STREAM_BUFFER_BYTES); \
                     reconnect with Last-Event-ID"
                )));
                return false;
            }
            s.queued.fetch_add(weight, Ordering::AcqRel);
            s.tx.send(Item::Changes(batch.clone())).is_ok()
        });
    }

    /// Tells every client it will miss changes (`reason`) and lets them all go.
    pub fn interrupt(&self, reason: &str) {
        for (_, s) in self.lock().drain() {
            let _ = s.tx.send(Item::Interrupted(reason.to_string()));
        }
    }
}

impl Subscription {
    /// The next item; `None` once the hub let this client go and its queue is empty.
    pub async fn recv(&mut self) -> Option<Item> {
        let item = self.rx.recv().await?;
        if let Item::Changes(batch) = &item {
            self.queued.fetch_sub(batch.weight(), Ordering::AcqRel);
        }
        Some(item)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.lock().remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: i64, title_len: usize) -> Change {
        Change {
            id,
            version: 1,
            position: id,
            deleted: false,
            todo: Some(Todo {
                id,
                title: "t".repeat(title_len),
                description: None,
                completed: false,
                version: 1,
                created_at: Utc::now(),
                updated_at: Utc::now(),
                due_at: None,
                erased_at: None,
            }),
            occurred_at: Some(Utc::now()),
        }
    }

    #[tokio::test]
    async fn a_client_gets_every_batch_and_one_past_its_byte_budget_is_told_and_let_go() {
        let hub = Hub::new(10_000);
        let mut reading = hub.subscribe();
        let mut stuck = hub.subscribe();
        assert_eq!(hub.subscribers(), 2);
        // Each batch weighs about 2 KB: the stuck client's queue passes 10,000 bytes at the
        // fifth.
        for k in 0..8 {
            hub.publish(Batch {
                changes: vec![change(k, 1_800)],
            });
            match reading.recv().await {
                Some(Item::Changes(b)) => assert_eq!(b.changes[0].id, k),
                other => panic!("batch {k}: {other:?}"),
            }
        }
        assert_eq!(hub.subscribers(), 1, "the stuck client was let go");
        let mut got = 0;
        let reason = loop {
            match stuck.recv().await {
                Some(Item::Changes(_)) => got += 1,
                Some(Item::Interrupted(reason)) => break reason,
                None => panic!("no reason given"),
            }
        };
        assert_eq!(got, 4, "what fit in the budget");
        assert!(reason.contains("STREAM_BUFFER_BYTES"), "{reason}");
        assert!(stuck.recv().await.is_none());
        drop(reading);
        assert_eq!(hub.subscribers(), 0);
    }

    #[tokio::test]
    async fn an_interruption_reaches_every_client() {
        let hub = Hub::new(1 << 20);
        let mut a = hub.subscribe();
        hub.interrupt("the fan-out reconnected");
        assert!(matches!(a.recv().await, Some(Item::Interrupted(r)) if r.contains("reconnected")));
        assert!(a.recv().await.is_none());
        assert_eq!(hub.subscribers(), 0);
    }
}
