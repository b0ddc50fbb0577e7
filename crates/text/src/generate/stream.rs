//! [`GenerationStream`]: the receiving end of one request's text deltas,
//! readable as a blocking [`Iterator`] or as a [`futures_core::Stream`].

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::{Condvar, Mutex};
use switchyard_core::CancellationToken;

use super::TextDelta;
use crate::Result;

#[derive(Default)]
struct State {
    items: VecDeque<Result<TextDelta>>,
    closed: bool,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    ready: Condvar,
}

/// The text of one generation as it is produced.
///
/// Each item is a [`TextDelta`]; the last one carries the
/// [`Finished`](super::Finished) reason and usage. Read it with a blocking
/// `for delta in stream`, or poll it as a `futures_core::Stream` from async
/// code. Dropping the stream cancels the generation, which frees its KV
/// blocks within one step.
pub struct GenerationStream {
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for GenerationStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("GenerationStream")
            .field("buffered", &state.items.len())
            .field("closed", &state.closed)
            .field("cancelled", &self.cancel.is_cancelled())
            .finish()
    }
}

/// The producing end, held by the generation loop. Dropping it ends the
/// stream.
pub(crate) struct DeltaSender {
    shared: Arc<Shared>,
}

/// A connected stream and sender; `cancel` is the request's token.
pub(crate) fn channel(cancel: CancellationToken) -> (DeltaSender, GenerationStream) {
    let shared = Arc::new(Shared::default());
    (
        DeltaSender {
            shared: shared.clone(),
        },
        GenerationStream { shared, cancel },
    )
}

impl DeltaSender {
    /// Hand one item to the reader (never blocks). A last delta or an error
    /// ends the stream at once, without waiting for the rest of the batch.
    pub(crate) fn send(&self, item: Result<TextDelta>) {
        let last = !matches!(&item, Ok(d) if d.finish.is_none());
        let waker = {
            let mut state = self.shared.state.lock();
            state.items.push_back(item);
            state.closed |= last;
            state.waker.take()
        };
        self.shared.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Drop for DeltaSender {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.state.lock();
            state.closed = true;
            state.waker.take()
        };
        self.shared.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl GenerationStream {
    /// Stop the generation; the stream then ends with a delta whose finish
    /// reason is `Cancelled` (unless it had already finished).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Whether the generation has ended: everything it will produce is
    /// buffered here, waiting to be read.
    pub fn is_finished(&self) -> bool {
        self.shared.state.lock().closed
    }

    /// The request's cancellation token.
    pub fn cancellation_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Read everything to the end into one [`Completion`](super::Completion).
    pub fn collect_completion(self) -> Result<super::Completion> {
        let mut text = String::new();
        let mut tokens = Vec::new();
        for delta in self {
            let delta = delta?;
            text.push_str(&delta.text);
            tokens.extend_from_slice(&delta.tokens);
            if let Some(done) = delta.finish {
                return Ok(super::Completion {
                    text,
                    tokens,
                    finish_reason: done.reason,
                    usage: done.usage,
                });
            }
        }
        Err(crate::TextError::InvalidInput {
            field: "stream",
            reason: "the generation ended without a finish reason".into(),
        })
    }
}

impl Iterator for GenerationStream {
    type Item = Result<TextDelta>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut state = self.shared.state.lock();
        loop {
            if let Some(item) = state.items.pop_front() {
                return Some(item);
            }
            if state.closed {
                return None;
            }
            self.shared.ready.wait(&mut state);
        }
    }
}

impl futures_core::Stream for GenerationStream {
    type Item = Result<TextDelta>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut state = self.shared.state.lock();
        if let Some(item) = state.items.pop_front() {
            return Poll::Ready(Some(item));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for GenerationStream {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
