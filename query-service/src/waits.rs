//! Reading your writes without feeding an overload: the `?min_version=` waiters of one
//! process share one waiting room ([`Waits`]), and a todo that is not in the read model yet is
//! answered 404 without a store read when it cannot be there.
//!
//! - A request reads its todo once. If the read model is behind, it waits in the room under
//!   the todo's id; every waiter on the same todo shares what the room learns of it.
//! - The room is told what landed ([`Landed`]): by this process's consumer after each batch,
//!   and by the change fan-out for every replica's batches. This process's consumer's notice
//!   carries the todo's state, which it has just written, and answers its waiters with no store
//!   read at all. A notice without it (a duplicate the consumer skipped, or any notice from the
//!   fan-out: it comes through the broker, and a read is answered from the read model only)
//!   makes the todo due: it is read at once, once for all its waiters.
//! - Rounds are the fallback, for notices that never came (the fan-out away, a notice
//!   dropped): one `_id: {$in: …}` read of every todo whose read is due, so at most one read
//!   per todo per round whatever the number of waiters. Each todo's reads start
//!   [`ROUND_BASE`] after its first waiter came and then back off, doubling up to
//!   [`ROUND_MAX`] while they find its version missing: a read side that is behind is not asked
//!   more often for being behind, and a todo whose version never comes slows no other. One
//!   read also falls just before the earliest waiter's deadline, so nobody is told the read
//!   model is behind when it caught up since the last read; past the deadline the waiter is
//!   answered with the version the room last saw, without a read of its own.
//! - The highest todo id the read model holds is known from the same notices (and from the
//!   projection's counters, read again at most every [`HIGHEST_REFRESH`] when a request asks
//!   past it): a todo above it is not there, and its 404 costs no store read. The counters move
//!   after a batch's write, so a todo written in the last [`HIGHEST_REFRESH`] (or while the
//!   counters' update is retried) may answer 404 without `?min_version=`: a client that must
//!   read its own write asks with it, and waits.

use crate::store::{ReadError, Store, Stored};
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot, Notify};

/// When a todo's first read after its first waiter came is due, and the interval its reads
/// start from.
pub const ROUND_BASE: Duration = Duration::from_millis(100);
/// The longest interval between two reads of a todo whose version is still missing.
pub const ROUND_MAX: Duration = Duration::from_millis(1_600);
/// How long before the earliest waiter's deadline its todo is read once more.
const LAST_READ_BEFORE: Duration = Duration::from_millis(30);
/// How often the highest todo id is read from the counters, at most, when a request asks
/// for a todo past the highest one known.
pub const HIGHEST_REFRESH: Duration = Duration::from_millis(250);
/// Most ids one round reads in one command.
const ROUND_CHUNK: usize = 1_000;

/// One todo that landed in the read model at `version` or later. `state` is what the read
/// model holds after it, when the notice carries it.
#[derive(Debug, Clone)]
pub struct Landed {
    pub id: i64,
    pub version: i64,
    pub state: Option<Stored>,
}

impl Landed {
    /// What a fan-out notice's change says landed: that the todo is due for a read, not its
    /// state. A notice comes through the broker, where anyone who may publish to the fan-out
    /// exchange could forge one; an answer to a read comes from the read model only.
    pub fn of_change(c: &crate::changes::Change) -> Self {
        Landed {
            id: c.id,
            version: c.version,
            state: None,
        }
    }
}

/// A batch of what landed, as the consumer and the fan-out broadcast it.
pub type Applied = Arc<Vec<Landed>>;

/// Why a wait ended without the wanted version: the read model is behind, at `have`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Behind {
    pub have: Option<i64>,
}

/// Whether the read model holding `stored` settles a wait for `want`: that version or a later
/// one, or the todo's deletion (final: no later version follows a tombstone).
pub fn settles(stored: &Stored, want: i64) -> bool {
    matches!(stored, Stored::Deleted { .. }) || stored.version() >= want
}

struct Waiter {
    want: i64,
    deadline: Instant,
    tx: oneshot::Sender<Stored>,
}

struct Slot {
    waiters: Vec<Waiter>,
    /// The version the room last saw of the todo (`None`: not in the read model).
    have: Option<i64>,
    /// Read it at once: a notice said something landed.
    due: bool,
    /// When its next read is due, and the interval that led there.
    next_read: Instant,
    interval: Duration,
}

impl Slot {
    /// After a read that settled nobody: the next one an interval later (doubled), or just
    /// before the earliest waiter's deadline if that comes first.
    fn back_off(&mut self, now: Instant) {
        self.interval = (self.interval * 2).min(ROUND_MAX);
        let mut next = now + self.interval;
        if let Some(earliest) = self.waiters.iter().map(|w| w.deadline).min() {
            let last = earliest.checked_sub(LAST_READ_BEFORE).unwrap_or(earliest);
            if last > now {
                next = next.min(last);
            }
        }
        self.next_read = next;
    }
}

/// Figures of the room (registered in `crate::metrics`, served at `/metrics`).
#[derive(Debug, Default, Clone)]
pub struct WaitFigures {
    /// Rounds run.
    pub rounds: Counter,
    /// Todos read by rounds (one per waited-for todo per round).
    pub round_reads: Counter,
    /// Waiters answered by a notice, with no read.
    pub answered_by_notice: Counter,
    /// Reads of a todo skipped: its id is past the highest one the read model holds.
    pub absent_without_read: Counter,
}

/// A waiter's place in the room: dropped, it leaves.
pub struct Ticket {
    room: Arc<Waits>,
    id: i64,
    deadline: Instant,
    rx: oneshot::Receiver<Stored>,
}

impl Ticket {
    /// Waits until the read model holds the wanted version (or the todo's deletion), or until
    /// the deadline it was registered with. `have` is what the caller's own read saw.
    pub async fn wait(mut self, have: Option<i64>) -> Result<Stored, Behind> {
        if let Some(slot) = self.room.slots().get_mut(&self.id) {
            slot.have = slot.have.max(have);
        }
        let deadline = self.deadline;
        // The room's task plans its next read.
        self.room.wake.notify_one();
        match tokio::time::timeout_at(deadline.into(), &mut self.rx).await {
            Ok(Ok(stored)) => Ok(stored),
            _ => {
                let seen = self.room.slots().get(&self.id).and_then(|s| s.have);
                Err(Behind {
                    have: seen.max(have),
                })
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.rx.close();
        self.room.forget_closed(self.id);
    }
}

pub struct Waits {
    store: Store,
    slots: Mutex<HashMap<i64, Slot>>,
    wake: Notify,
    highest: AtomicI64,
    highest_read: Mutex<Option<Instant>>,
    pub figures: WaitFigures,
}

impl Waits {
    pub fn new(store: Store, figures: WaitFigures) -> Arc<Self> {
        Arc::new(Self {
            store,
            slots: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            highest: AtomicI64::new(0),
            highest_read: Mutex::new(None),
            figures,
        })
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<i64, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether todo `id` may be in the read model: `false` when its id is past the highest
    /// one the read model holds (known from notices, or read from the counters at most every
    /// [`HIGHEST_REFRESH`]).
    pub async fn may_exist(&self, id: i64) -> Result<bool, ReadError> {
        if id <= self.highest.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let stale = self
            .highest_read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|at| at.elapsed() >= HIGHEST_REFRESH);
        if stale {
            let highest = self.store.max_todo_id().await?;
            self.highest.fetch_max(highest, Ordering::Relaxed);
            *self.highest_read.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        }
        let may = id <= self.highest.load(Ordering::Relaxed);
        if !may {
            self.figures.absent_without_read.inc();
        }
        Ok(may)
    }

    /// Takes a place in the room for version `want` of todo `id` until `deadline`, before the
    /// caller's own read, so that nothing landing after that read goes unseen.
    pub fn register(self: &Arc<Self>, id: i64, want: i64, deadline: Instant) -> Ticket {
        let (tx, rx) = oneshot::channel();
        self.slots()
            .entry(id)
            .or_insert_with(|| Slot {
                waiters: Vec::new(),
                have: None,
                due: false,
                next_read: Instant::now() + ROUND_BASE,
                interval: ROUND_BASE,
            })
            .waiters
            .push(Waiter { want, deadline, tx });
        Ticket {
            room: self.clone(),
            id,
            deadline,
            rx,
        }
    }

    /// Forgets the waiters of `id` that gave up.
    fn forget_closed(&self, id: i64) {
        let mut slots = self.slots();
        if let Some(slot) = slots.get_mut(&id) {
            slot.waiters.retain(|w| !w.tx.is_closed());
            if slot.waiters.is_empty() {
                slots.remove(&id);
            }
        }
    }

    /// Answers the waiters of `id` that `stored` settles; forgets the todo when none is left.
    /// Returns how many it answered.
    fn answer(slots: &mut HashMap<i64, Slot>, id: i64, stored: &Stored) -> usize {
        let Some(slot) = slots.get_mut(&id) else {
            return 0;
        };
        slot.have = slot.have.max(Some(stored.version()));
        let mut answered = 0;
        let mut kept = Vec::with_capacity(slot.waiters.len());
        for w in slot.waiters.drain(..) {
            if settles(stored, w.want) {
                if w.tx.send(stored.clone()).is_ok() {
                    answered += 1;
                }
            } else if !w.tx.is_closed() {
                kept.push(w);
            }
        }
        slot.waiters = kept;
        if slot.waiters.is_empty() {
            slots.remove(&id);
        }
        answered
    }

    /// What landed: answers the waiters a notice's state settles, marks the others due.
    pub fn landed(&self, batch: &[Landed]) {
        if let Some(top) = batch.iter().map(|l| l.id).max() {
            self.highest.fetch_max(top, Ordering::Relaxed);
        }
        let mut due = false;
        let mut answered = 0;
        {
            let mut slots = self.slots();
            for l in batch {
                match &l.state {
                    Some(stored) => answered += Self::answer(&mut slots, l.id, stored),
                    None => {
                        if let Some(slot) = slots.get_mut(&l.id) {
                            slot.due = true;
                            due = true;
                        }
                    }
                }
            }
        }
        self.figures.answered_by_notice.inc_by(answered as u64);
        if due {
            self.wake.notify_one();
        }
    }

    /// Notices may have been missed: every todo waited for is read at once.
    fn all_due(&self) {
        for slot in self.slots().values_mut() {
            slot.due = true;
        }
        self.wake.notify_one();
    }

    /// One round: reads every todo that is due (a notice said so, or its next read came),
    /// once, and answers what that settles. The others back off.
    async fn round(&self) -> Result<(), ReadError> {
        let now = Instant::now();
        let ids: Vec<i64> = {
            let mut slots = self.slots();
            slots.retain(|_, s| {
                s.waiters.retain(|w| !w.tx.is_closed());
                !s.waiters.is_empty()
            });
            slots
                .iter_mut()
                .filter(|(_, s)| s.due || s.next_read <= now)
                .map(|(id, s)| {
                    s.due = false;
                    *id
                })
                .collect()
        };
        if ids.is_empty() {
            return Ok(());
        }
        self.figures.rounds.inc();
        for chunk in ids.chunks(ROUND_CHUNK) {
            self.figures.round_reads.inc_by(chunk.len() as u64);
            let result = self.store.get_many(chunk).await;
            let now = Instant::now();
            let mut slots = self.slots();
            if let Ok(found) = &result {
                for (id, stored) in found {
                    if let Some(stored) = stored {
                        Self::answer(&mut slots, *id, stored);
                    }
                }
            }
            // Read, and still waiting (or the read failed): the next read backs off.
            for id in chunk {
                if let Some(slot) = slots.get_mut(id) {
                    slot.back_off(now);
                }
            }
            result?;
        }
        Ok(())
    }

    /// When the next read of some todo is due (`None`: nobody waits).
    fn next_read(&self) -> Option<Instant> {
        self.slots().values().map(|s| s.next_read).min()
    }

    /// The room's task: takes what landed from `applied`, and runs the rounds, until
    /// `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        mut applied: broadcast::Receiver<Applied>,
        shutdown: crate::shutdown::Shutdown,
    ) {
        loop {
            let next = self.next_read();
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.triggered() => return,
                batch = applied.recv() => match batch {
                    Ok(batch) => self.landed(&batch),
                    Err(broadcast::error::RecvError::Lagged(_)) => self.all_due(),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                // A notice made a todo due, or a new waiter came (the next read is planned
                // again at the top of the loop).
                _ = self.wake.notified() => {}
                _ = sleep => {}
            }
            if let Err(err) = self.round().await {
                tracing::debug!(error = %err, "min_version read failed; backing off");
            }
        }
    }
}
