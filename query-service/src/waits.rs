//! Reading your writes without feeding an overload: the `?min_version=` waiters of one
//! process share one waiting room ([`Waits`]), and a todo that is not in the read model yet is
//! answered 404 without a store read when it cannot be there.
//!
//! - A request reads its todo once. If the read model is behind, it waits in the room under
//!   the todo's id; every waiter on the same todo shares what the room learns of it.
//! - The room is told what landed ([`Landed`]): by this process's consumer after each batch,
//!   and by the change fan-out for every replica's batches. A notice that carries the todo's
//!   state answers its waiters with no store read at all. A notice without it (a duplicate
//!   the consumer skipped) makes the todo due for a read in the next round.
//! - Rounds are the fallback, for notices that never came (the fan-out away, a notice
//!   dropped): one `_id: {$in: …}` read of every todo someone waits for, so at most one read
//!   per todo per round whatever the number of waiters. Rounds start [`ROUND_BASE`] apart and
//!   double, up to [`ROUND_MAX`], while they answer nobody: a read side that is behind is not
//!   asked more often for being behind. A waiter whose deadline passes is answered with the
//!   version the room last saw, without a read of its own.
//! - The highest todo id the read model holds is known from the same notices (and from the
//!   projection's counters, read again at most every [`HIGHEST_REFRESH`] when a request asks
//!   past it): a todo above it is not there, and its 404 costs no store read.

use crate::store::{ReadError, Store, Stored};
use std::collections::HashMap;
use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, oneshot, Notify};

/// The first interval between rounds, and the interval again after a round answered someone.
pub const ROUND_BASE: Duration = Duration::from_millis(100);
/// The longest interval between rounds while the read side stays behind.
pub const ROUND_MAX: Duration = Duration::from_millis(1_600);
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
    /// What a fan-out notice's change says landed.
    pub fn of_change(c: &crate::changes::Change) -> Self {
        Landed {
            id: c.id,
            version: c.version,
            state: match (&c.todo, c.deleted) {
                (Some(todo), false) => Some(Stored::Live(todo.clone())),
                (_, true) => Some(Stored::Deleted { version: c.version }),
                (None, false) => None,
            },
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

struct Slot {
    /// Waiters and the version each wants.
    waiters: Vec<(i64, oneshot::Sender<Stored>)>,
    /// The version the room last saw of the todo (`None`: not in the read model).
    have: Option<i64>,
    /// Read it in the next round even if no round is due.
    due: bool,
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
    rx: oneshot::Receiver<Stored>,
}

impl Ticket {
    /// Waits until the read model holds the wanted version (or the todo's deletion), or until
    /// `deadline`. `have` is what the caller's own read saw.
    pub async fn wait(mut self, have: Option<i64>, deadline: Instant) -> Result<Stored, Behind> {
        {
            let mut slots = self.room.slots.lock().expect("slots");
            if let Some(slot) = slots.get_mut(&self.id) {
                slot.have = slot.have.max(have);
            }
        }
        // A new waiter starts the rounds.
        self.room.wake.notify_one();
        match tokio::time::timeout_at(deadline.into(), &mut self.rx).await {
            Ok(Ok(stored)) => Ok(stored),
            _ => {
                let slots = self.room.slots.lock().expect("slots");
                let seen = slots.get(&self.id).and_then(|s| s.have);
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

/// A store-order-free ordering of what a notice or a read says: does it settle a waiter who
/// wants `want`? A deletion is final.
fn settles(stored: &Stored, want: i64) -> bool {
    matches!(stored, Stored::Deleted { .. }) || stored.version() >= want
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

    /// How many todos someone waits for now.
    pub fn waited_for(&self) -> usize {
        self.slots.lock().expect("slots").len()
    }

    /// Whether todo `id` may be in the read model: `false` when its id is past the highest
    /// one the read model holds (known from notices, or read from the counters at most every
    /// [`HIGHEST_REFRESH`]).
    pub async fn may_exist(&self, id: i64) -> Result<bool, ReadError> {
        if id <= self.highest.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let stale = {
            let mut last = self.highest_read.lock().expect("highest_read");
            let stale = last.is_none_or(|at| at.elapsed() >= HIGHEST_REFRESH);
            if stale {
                *last = Some(Instant::now());
            }
            stale
        };
        if stale {
            let highest = self.store.max_todo_id().await?;
            self.highest.fetch_max(highest, Ordering::Relaxed);
        }
        let may = id <= self.highest.load(Ordering::Relaxed);
        if !may {
            self.figures
                .absent_without_read
                .inc();
        }
        Ok(may)
    }

    /// Takes a place in the room for version `want` of todo `id`, before the caller's own
    /// read, so that nothing landing after that read goes unseen.
    pub fn register(self: &Arc<Self>, id: i64, want: i64) -> Ticket {
        let (tx, rx) = oneshot::channel();
        self.slots
            .lock()
            .expect("slots")
            .entry(id)
            .or_insert(Slot {
                waiters: Vec::new(),
                have: None,
                due: false,
            })
            .waiters
            .push((want, tx));
        Ticket {
            room: self.clone(),
            id,
            rx,
        }
    }

    /// Forgets the waiters of `id` that gave up.
    fn forget_closed(&self, id: i64) {
        let mut slots = self.slots.lock().expect("slots");
        if let Some(slot) = slots.get_mut(&id) {
            slot.waiters.retain(|(_, tx)| !tx.is_closed());
            if slot.waiters.is_empty() {
                slots.remove(&id);
            }
        }
    }

    /// Answers the waiters of `id` that `stored` settles; forgets the todo when none is left.
    fn answer(slots: &mut HashMap<i64, Slot>, id: i64, stored: &Stored) -> usize {
        let Some(slot) = slots.get_mut(&id) else {
            return 0;
        };
        slot.have = slot.have.max(Some(stored.version()));
        let mut answered = 0;
        let mut kept = Vec::with_capacity(slot.waiters.len());
        for (want, tx) in slot.waiters.drain(..) {
            if settles(stored, want) {
                if tx.send(stored.clone()).is_ok() {
                    answered += 1;
                }
            } else if !tx.is_closed() {
                kept.push((want, tx));
            }
        }
        slot.waiters = kept;
        if slot.waiters.is_empty() {
            slots.remove(&id);
        }
        answered
    }

    /// What landed: answers the waiters a notice settles, marks the others due.
    pub fn landed(&self, batch: &[Landed]) {
        if let Some(top) = batch.iter().map(|l| l.id).max() {
            self.highest.fetch_max(top, Ordering::Relaxed);
        }
        let mut due = false;
        let mut answered = 0;
        {
            let mut slots = self.slots.lock().expect("slots");
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
        self.figures
            .answered_by_notice
            .inc_by(answered as u64);
        if due {
            self.wake.notify_one();
        }
    }

    /// Notices may have been missed: every todo waited for is read in the next round.
    fn all_due(&self) {
        for slot in self.slots.lock().expect("slots").values_mut() {
            slot.due = true;
        }
        self.wake.notify_one();
    }

    /// One round: reads the todos waited for (only the due ones, unless `all`), answers what
    /// it settles. Returns how many waiters it answered.
    async fn round(&self, all: bool) -> Result<usize, ReadError> {
        let ids: Vec<i64> = {
            let mut slots = self.slots.lock().expect("slots");
            slots.retain(|_, s| {
                s.waiters.retain(|(_, tx)| !tx.is_closed());
                !s.waiters.is_empty()
            });
            slots
                .iter_mut()
                .filter(|(_, s)| all || s.due)
                .map(|(id, s)| {
                    s.due = false;
                    *id
                })
                .collect()
        };
        if ids.is_empty() {
            return Ok(0);
        }
        self.figures.rounds.inc();
        let mut answered = 0;
        for chunk in ids.chunks(ROUND_CHUNK) {
            self.figures
                .round_reads
                .inc_by(chunk.len() as u64);
            let found = self.store.get_many(chunk).await?;
            let mut slots = self.slots.lock().expect("slots");
            for (id, stored) in found {
                if let Some(stored) = stored {
                    answered += Self::answer(&mut slots, id, &stored);
                }
            }
        }
        Ok(answered)
    }

    /// The room's task: takes what landed from `applied`, and runs the rounds, until
    /// `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        mut applied: broadcast::Receiver<Applied>,
        shutdown: crate::shutdown::Shutdown,
    ) {
        let mut interval = ROUND_BASE;
        let mut next_round: Option<tokio::time::Instant> = None;
        loop {
            let sleep = async {
                match next_round {
                    Some(at) => tokio::time::sleep_until(at).await,
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
                _ = self.wake.notified() => {
                    // Due todos are read at once; a new waiter starts the rounds.
                    match self.round(false).await {
                        Ok(n) if n > 0 => interval = ROUND_BASE,
                        Ok(_) => {}
                        Err(err) => tracing::debug!(error = %err, "min_version read failed"),
                    }
                }
                _ = sleep => {
                    match self.round(true).await {
                        Ok(n) if n > 0 => interval = ROUND_BASE,
                        Ok(_) => interval = (interval * 2).min(ROUND_MAX),
                        Err(err) => {
                            tracing::debug!(error = %err, "min_version round failed");
                            interval = (interval * 2).min(ROUND_MAX);
                        }
                    }
                    next_round = None;
                }
            }
            if self.waited_for() == 0 {
                interval = ROUND_BASE;
                next_round = None;
            } else if next_round.is_none() {
                next_round = Some(tokio::time::Instant::now() + interval);
            }
        }
    }
}
