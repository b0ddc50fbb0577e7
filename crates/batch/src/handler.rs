//! The seam between the batcher and whatever it runs.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use switchyard_core::{CancellationToken, Priority, RequestId};

use crate::handle::Cell;
use crate::{BatchKey, YIELD_POLL, YieldGate};

/// Runs batches of inputs: the one verb a pipeline implements to be batched.
///
/// `run` gets the inputs of one batch (all with the same [`BatchKey`]) and
/// returns one result per input, in order. [`key`](Self::key) and
/// [`cost`](Self::cost) tell the batcher which inputs may share a batch and how
/// much of the batch's cost budget each one uses.
///
/// A panic inside `run` fails that batch's requests with
/// [`BatchError::HandlerPanicked`](crate::BatchError::HandlerPanicked); the
/// worker carries on. Returning the wrong number of results fails them with
/// [`BatchError::ResultCount`](crate::BatchError::ResultCount).
///
/// ```
/// use switchyard_batch::{BatchContext, BatchHandler, BatchKey};
///
/// /// Upper-cases strings; strings of different lengths never share a batch.
/// struct Shout;
///
/// impl BatchHandler for Shout {
///     type Input = String;
///     type Output = String;
///     type Error = std::convert::Infallible;
///
///     fn run(&self, batch: &mut [String], _: &BatchContext<'_>) -> Vec<Result<String, Self::Error>> {
///         batch.iter().map(|s| Ok(s.to_uppercase())).collect()
///     }
///
///     fn key(&self, input: &String) -> BatchKey {
///         BatchKey::new("shout", input.len() as u64)
///     }
/// }
/// ```
pub trait BatchHandler: Send + Sync + 'static {
    /// One request's input.
    type Input: Send + 'static;
    /// One request's output.
    type Output: Send + 'static;
    /// One request's failure.
    type Error: Send + 'static;

    /// Run one batch; return exactly one result per input, in order.
    fn run(
        &self,
        batch: &mut [Self::Input],
        context: &BatchContext<'_>,
    ) -> Vec<Result<Self::Output, Self::Error>>;

    /// Which inputs may share a batch. Default: all of them.
    fn key(&self, input: &Self::Input) -> BatchKey {
        let _ = input;
        BatchKey::default()
    }

    /// How much of a batch's cost budget the input uses (tokens, pixels...).
    /// Default: 1.
    fn cost(&self, input: &Self::Input) -> u64 {
        let _ = input;
        1
    }

    /// Whether `error` means the batch did not fit in memory. The inputs
    /// that failed so are run once more, after the batcher's
    /// [out-of-memory hook](crate::BatcherBuilder::on_out_of_memory) (which
    /// may free memory), in two halves; so `run` must leave such inputs as
    /// it got them. Default: never.
    fn is_out_of_memory(&self, error: &Self::Error) -> bool {
        let _ = error;
        false
    }
}

impl<H: BatchHandler> BatchHandler for Arc<H> {
    type Input = H::Input;
    type Output = H::Output;
    type Error = H::Error;

    fn run(
        &self,
        batch: &mut [Self::Input],
        context: &BatchContext<'_>,
    ) -> Vec<Result<Self::Output, Self::Error>> {
        (**self).run(batch, context)
    }

    fn is_out_of_memory(&self, error: &Self::Error) -> bool {
        (**self).is_out_of_memory(error)
    }

    fn key(&self, input: &Self::Input) -> BatchKey {
        (**self).key(input)
    }

    fn cost(&self, input: &Self::Input) -> u64 {
        (**self).cost(input)
    }
}

/// What a handler may ask about the batch it is running: the key, each
/// request's id, and each request's cancellation token.
pub struct BatchContext<'a> {
    pub(crate) key: &'a BatchKey,
    pub(crate) members: &'a [Member<'a>],
    pub(crate) running: Option<&'a RunningSet>,
    pub(crate) pause: Option<Pause<'a>>,
}

/// What [`BatchContext::yield_point`] waits on: the device's gate, the
/// batcher's source id on it, and the batch's most urgent priority.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pause<'a> {
    pub(crate) gate: &'a YieldGate,
    pub(crate) source: u64,
    pub(crate) priority: Priority,
}

/// The ids of the batch a worker is running, so that `Batcher::cancel(id)`
/// reaches running requests without the worker cloning every request's cell.
#[derive(Debug, Default)]
pub(crate) struct RunningSet {
    any_cancelled: AtomicBool,
    inner: Mutex<Running>,
}

#[derive(Debug, Default)]
struct Running {
    ids: Vec<RequestId>,
    cancelled: Vec<RequestId>,
    tokens: Vec<(RequestId, CancellationToken)>,
}

impl RunningSet {
    /// Mark these requests as running.
    pub(crate) fn start(&self, ids: impl Iterator<Item = RequestId>) {
        let mut r = self.inner.lock();
        r.ids.extend(ids);
    }

    /// The batch is over.
    pub(crate) fn finish(&self) {
        let mut r = self.inner.lock();
        r.ids.clear();
        r.cancelled.clear();
        r.tokens.clear();
        self.any_cancelled.store(false, Ordering::Release);
    }

    /// Cancel `id` if it is running here; whether it was.
    pub(crate) fn cancel(&self, id: RequestId) -> bool {
        let mut r = self.inner.lock();
        if !r.ids.contains(&id) {
            return false;
        }
        if !r.cancelled.contains(&id) {
            r.cancelled.push(id);
        }
        for (tid, token) in &r.tokens {
            if *tid == id {
                token.cancel();
            }
        }
        self.any_cancelled.store(true, Ordering::Release);
        true
    }

    fn is_cancelled(&self, id: RequestId) -> bool {
        self.any_cancelled.load(Ordering::Acquire) && self.inner.lock().cancelled.contains(&id)
    }

    /// Remember a token handed out, cancelling it if its request already was.
    fn register(&self, id: RequestId, token: &CancellationToken) {
        let mut r = self.inner.lock();
        if r.cancelled.contains(&id) {
            token.cancel();
        }
        r.tokens.push((id, token.clone()));
    }
}

/// One request of a running batch, as the context sees it.
pub(crate) struct Member<'a> {
    pub(crate) id: RequestId,
    pub(crate) cancel: &'a dyn CancelSource,
}

/// A request's cancellation state, whatever its output type.
pub(crate) trait CancelSource: Sync {
    fn token(&self) -> CancellationToken;
    fn is_cancelled(&self) -> bool;
}

impl<O: Send, E: Send> CancelSource for Cell<O, E> {
    fn token(&self) -> CancellationToken {
        Cell::token(self)
    }
    fn is_cancelled(&self) -> bool {
        self.is_cancel_requested()
    }
}

impl BatchContext<'_> {
    /// The batch's key.
    pub fn key(&self) -> &BatchKey {
        self.key
    }

    /// The number of inputs.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the batch is empty (it never is when `run` is called).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The id of input `index`.
    pub fn id(&self, index: usize) -> Option<RequestId> {
        self.members.get(index).map(|m| m.id)
    }

    /// Whether input `index`'s caller has cancelled it (cheap: one atomic load).
    pub fn is_cancelled(&self, index: usize) -> bool {
        self.members.get(index).is_some_and(|m| {
            m.cancel.is_cancelled() || self.running.is_some_and(|r| r.is_cancelled(m.id))
        })
    }

    /// Input `index`'s cancellation token, for long jobs that check it
    /// between steps. Out of range gives a fresh, never-cancelled token.
    pub fn token(&self, index: usize) -> CancellationToken {
        let Some(member) = self.members.get(index) else {
            return CancellationToken::new();
        };
        let token = member.cancel.token();
        if let Some(running) = self.running {
            running.register(member.id, &token);
        }
        token
    }

    /// Call between the steps of a long batch: blocks while the batcher's
    /// [`YieldGate`] holds the batch's most urgent priority for work of
    /// the device's other pipelines (never for requests queued here: the
    /// batcher's urgent lane runs those beside this batch, and a batch of
    /// the lane may be what this one would wait for), or until every input
    /// is cancelled. Returns at
    /// once without a gate.
    pub fn yield_point(&self) {
        let Some(pause) = self.pause else { return };
        while !pause
            .gate
            .wait_besides(pause.priority, pause.source, YIELD_POLL)
        {
            if (0..self.len()).all(|i| self.is_cancelled(i)) {
                return;
            }
        }
    }

    /// A context for calling a handler directly, outside a batcher (tests,
    /// benchmarks): no request can be cancelled.
    pub fn detached<R>(key: &BatchKey, len: usize, f: impl FnOnce(&BatchContext<'_>) -> R) -> R {
        let never = NeverCancelled;
        let members: Vec<Member<'_>> = (0..len)
            .map(|_| Member {
                id: RequestId::next(),
                cancel: &never,
            })
            .collect();
        f(&BatchContext {
            key,
            members: &members,
            running: None,
            pause: None,
        })
    }
}

struct NeverCancelled;

impl CancelSource for NeverCancelled {
    fn token(&self) -> CancellationToken {
        CancellationToken::new()
    }
    fn is_cancelled(&self) -> bool {
        false
    }
}

impl fmt::Debug for BatchContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchContext")
            .field("key", self.key)
            .field("len", &self.members.len())
            .finish()
    }
}
