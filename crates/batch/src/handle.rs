//! Result delivery: the cell a worker fills and the handle a caller holds.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use switchyard_core::{CancellationToken, Clock, Deadline, RequestId};

use crate::BatchError;
use crate::queue::Position;

/// What a request ends with: the handler's output or why there is none.
pub type Outcome<O, E> = Result<O, BatchError<E>>;

/// Where one request's result lands.
pub(crate) struct Cell<O, E> {
    state: Mutex<CellState<O, E>>,
    ready: Condvar,
    /// Set (after the result is stored) so waiters can spin without the lock.
    done: AtomicBool,
    cancel_requested: AtomicBool,
    token: OnceLock<CancellationToken>,
}

/// Polls of `done` before a waiter blocks: results usually arrive within
/// microseconds, and a futex sleep and wake costs more than that.
const SPIN_POLLS: u32 = 64;
const YIELD_POLLS: u32 = 16;

struct CellState<O, E> {
    result: Option<Outcome<O, E>>,
    completed: bool,
    blocked: bool,
    waker: Option<Waker>,
}

impl<O, E> Cell<O, E> {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(CellState {
                result: None,
                completed: false,
                blocked: false,
                waker: None,
            }),
            ready: Condvar::new(),
            done: AtomicBool::new(false),
            cancel_requested: AtomicBool::new(false),
            token: OnceLock::new(),
        }
    }

    /// Store the outcome (the first one wins) and wake whoever waits.
    /// Returns whether this call stored it.
    pub(crate) fn complete(&self, outcome: Outcome<O, E>) -> bool {
        let waker = {
            let mut state = self.state.lock();
            if state.completed {
                return false;
            }
            state.completed = true;
            state.result = Some(outcome);
            self.done.store(true, Ordering::Release);
            if state.blocked {
                self.ready.notify_all();
            }
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// Ask a running request to stop: sets its token if one was handed out.
    pub(crate) fn request_cancel(&self) {
        self.cancel_requested.store(true, Ordering::SeqCst);
        if let Some(token) = self.token.get() {
            token.cancel();
        }
    }

    pub(crate) fn is_cancel_requested(&self) -> bool {
        self.cancel_requested.load(Ordering::SeqCst)
    }

    /// The request's cancellation token, made on first use.
    pub(crate) fn token(&self) -> CancellationToken {
        let token = self.token.get_or_init(CancellationToken::new).clone();
        if self.cancel_requested.load(Ordering::SeqCst) {
            token.cancel();
        }
        token
    }

    fn take(&self) -> Option<Outcome<O, E>> {
        self.state.lock().result.take()
    }

    /// Spin, then yield, for a short while in case the result is close.
    fn spin_until_done(&self) {
        for _ in 0..SPIN_POLLS {
            if self.done.load(Ordering::Acquire) {
                return;
            }
            std::hint::spin_loop();
        }
        for _ in 0..YIELD_POLLS {
            if self.done.load(Ordering::Acquire) {
                return;
            }
            std::thread::yield_now();
        }
    }

    /// Block until completed or until `limit` (real time) passes.
    fn wait_for(&self, limit: Option<Duration>) -> Option<Outcome<O, E>> {
        if limit.is_none_or(|l| !l.is_zero()) {
            self.spin_until_done();
        }
        let mut state = self.state.lock();
        if !state.completed {
            state.blocked = true;
            match limit {
                None => {
                    while !state.completed {
                        self.ready.wait(&mut state);
                    }
                }
                Some(limit) => {
                    let until = std::time::Instant::now() + limit;
                    while !state.completed {
                        if self.ready.wait_until(&mut state, until).timed_out() {
                            break;
                        }
                    }
                }
            }
        }
        state.result.take()
    }
}

/// What a handle needs from the batcher that issued it.
pub(crate) trait Owner: Send + Sync {
    /// Remove the request from the queue if it is still there, completing its
    /// cell with `reason`. Returns whether it was queued.
    fn withdraw(&self, pos: Position, id: RequestId, reason: Withdrawal) -> bool;
    /// The batcher's clock.
    fn clock(&self) -> &dyn Clock;
}

/// Why a handle withdraws its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Withdrawal {
    Cancelled,
    TimedOut,
}

/// The caller's side of one submitted request.
///
/// Wait for the result with [`wait`](Self::wait), poll with
/// [`try_get`](Self::try_get), bound the wait with
/// [`wait_timeout`](Self::wait_timeout), or `.await` it under any executor
/// (it implements [`Future`]). Dropping the handle, or calling
/// [`cancel`](Self::cancel), takes a queued request out of the queue; a
/// running one has its cancellation token set.
///
/// A blocking wait fails with [`BatchError::TimedOut`] as soon as the
/// request's deadline passes while it is still queued; an awaited handle is
/// failed when a worker next sweeps the queue.
pub struct Handle<O, E> {
    id: RequestId,
    pos: Position,
    cell: Arc<Cell<O, E>>,
    owner: Arc<dyn Owner>,
    deadline: Option<Deadline>,
    finished: bool,
}

impl<O, E> Handle<O, E> {
    pub(crate) fn new(
        id: RequestId,
        pos: Position,
        cell: Arc<Cell<O, E>>,
        owner: Arc<dyn Owner>,
        deadline: Option<Deadline>,
    ) -> Self {
        Self {
            id,
            pos,
            cell,
            owner,
            deadline,
            finished: false,
        }
    }

    /// The request's id.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The result if it is there, without blocking. Once a result has been
    /// returned, later calls return [`BatchError::AlreadyTaken`].
    pub fn try_get(&mut self) -> Option<Outcome<O, E>> {
        if self.finished {
            return Some(Err(BatchError::AlreadyTaken));
        }
        self.expire_if_due();
        let result = self.cell.take();
        self.finished |= result.is_some();
        result
    }

    /// Block until the result arrives.
    pub fn wait(mut self) -> Outcome<O, E> {
        self.wait_inner(None)
            .unwrap_or(Err(BatchError::AlreadyTaken))
    }

    /// Block at most `timeout` (real time) for the result; `None` if it has
    /// not arrived, and the request carries on.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Outcome<O, E>> {
        self.wait_inner(Some(timeout))
    }

    /// Cancel the request: a queued one is removed (its result becomes
    /// [`BatchError::Cancelled`]); a running one has its token set, and its
    /// result is whatever the handler returns.
    pub fn cancel(&self) {
        if !self
            .owner
            .withdraw(self.pos, self.id, Withdrawal::Cancelled)
        {
            self.cell.request_cancel();
        }
    }

    /// Whether a result is ready (or was already taken).
    pub fn is_finished(&self) -> bool {
        self.finished || self.cell.done.load(Ordering::Acquire)
    }

    fn expire_if_due(&self) {
        if let Some(deadline) = self.deadline
            && deadline.is_expired(&self.owner.clock())
        {
            self.owner.withdraw(self.pos, self.id, Withdrawal::TimedOut);
        }
    }

    fn wait_inner(&mut self, limit: Option<Duration>) -> Option<Outcome<O, E>> {
        if self.finished {
            return Some(Err(BatchError::AlreadyTaken));
        }
        if self.deadline.is_none() && limit.is_none() {
            let result = self.cell.wait_for(None);
            self.finished |= result.is_some();
            return result;
        }
        let start = std::time::Instant::now();
        let result = loop {
            self.expire_if_due();
            let left = limit.map(|l| l.saturating_sub(start.elapsed()));
            // Wake at the deadline to withdraw the request if it is still queued.
            let until_deadline = self
                .deadline
                .filter(|d| !d.is_expired(&self.owner.clock()))
                .map(|d| d.remaining(&self.owner.clock()));
            let bound = match (left, until_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            if let Some(result) = self.cell.wait_for(bound) {
                break Some(result);
            }
            if left.is_some_and(|l| start.elapsed() >= l) {
                break None;
            }
        };
        self.finished |= result.is_some();
        result
    }
}

impl<O, E> Future for Handle<O, E> {
    type Output = Outcome<O, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(Err(BatchError::AlreadyTaken));
        }
        let mut state = this.cell.state.lock();
        if let Some(result) = state.result.take() {
            this.finished = true;
            return Poll::Ready(result);
        }
        match &mut state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<O, E> Drop for Handle<O, E> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if !self.cell.state.lock().completed
            && !self
                .owner
                .withdraw(self.pos, self.id, Withdrawal::Cancelled)
        {
            self.cell.request_cancel();
        }
    }
}

impl<O, E> fmt::Debug for Handle<O, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("id", &self.id)
            .field("finished", &self.is_finished())
            .finish()
    }
}
