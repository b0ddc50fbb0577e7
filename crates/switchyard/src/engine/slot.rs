//! [`Slot`]: where a queued request's start lands (the dispatcher fills it,
//! the caller's handle reads it), and what a started request waits on.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use switchyard_batch::HandleOf;
use switchyard_core::{CancellationToken, RequestId};
use switchyard_text::{EmbeddingHandler, GenerationStream};

use crate::engine::error::{EngineError, Result};
use crate::engine::image_ops::ImageOpsHandler;
use crate::engine::models::LoadedModel;
use crate::engine::request::Response;
use crate::engine::results::ResultKey;

/// A started request's pipeline end.
pub(crate) enum Started {
    /// Text arriving from a generation engine.
    Stream(GenerationStream),
    /// One batcher handle per input.
    Embeddings(Vec<HandleOf<EmbeddingHandler>>),
    /// A processed image.
    Image(HandleOf<ImageOpsHandler>),
    /// Generated images.
    #[cfg(feature = "diffusion")]
    Images(HandleOf<switchyard_diffusion::DiffusionHandler>),
    /// The answer, from the result cache.
    Cached(Response),
}

impl Started {
    /// The batcher request ids it waits on (none for a generation).
    pub(crate) fn batch_ids(&self) -> Vec<RequestId> {
        match self {
            Started::Stream(_) | Started::Cached(_) => Vec::new(),
            Started::Embeddings(handles) => handles.iter().map(|h| h.id()).collect(),
            Started::Image(h) => vec![h.id()],
            #[cfg(feature = "diffusion")]
            Started::Images(h) => vec![h.id()],
        }
    }

    /// Cancels what it waits on.
    pub(crate) fn cancel(&self) {
        match self {
            Started::Stream(s) => s.cancel(),
            Started::Cached(_) => {}
            Started::Embeddings(handles) => handles.iter().for_each(|h| h.cancel()),
            Started::Image(h) => h.cancel(),
            #[cfg(feature = "diffusion")]
            Started::Images(h) => h.cancel(),
        }
    }
}

/// Runs when a request is cancelled after it started.
pub(crate) type CancelHook = Box<dyn FnOnce() + Send>;

enum SlotState {
    /// Waiting in the engine's queue (or for its model to load).
    Waiting,
    /// Running; the model is kept alive until the result is read.
    Started(Started, Option<Arc<LoadedModel>>),
    /// Ended before starting.
    Failed(EngineError),
    /// Handed to the reader.
    Taken,
}

/// Where a request's start lands: the dispatcher fills it, the handle
/// reads it.
pub(crate) struct Slot {
    state: Mutex<(SlotState, Option<Waker>)>,
    ready: Condvar,
    /// Cancels the request wherever it is.
    pub(crate) cancel: CancellationToken,
    /// Units done (tokens read, inputs embedded).
    pub(crate) done_units: AtomicU64,
    /// Units the request asks for (max tokens, inputs, denoising steps).
    pub(crate) total_units: u64,
    /// Tells the pipeline at once when the request is cancelled.
    hook: Mutex<Option<CancelHook>>,
}

impl Slot {
    pub(crate) fn new(total_units: u64) -> Self {
        Self {
            state: Mutex::new((SlotState::Waiting, None)),
            ready: Condvar::new(),
            cancel: CancellationToken::new(),
            done_units: AtomicU64::new(0),
            total_units,
            hook: Mutex::new(None),
        }
    }

    /// Cancels the request wherever it is, telling its pipeline now.
    pub(crate) fn cancel_now(&self) {
        self.cancel.cancel();
        let hook = self.hook.lock().take();
        if let Some(hook) = hook {
            hook();
        }
    }

    /// Runs `hook` when the request is cancelled (now, if it already is).
    pub(crate) fn on_cancel(&self, hook: CancelHook) {
        let mut slot = self.hook.lock();
        if self.cancel.is_cancelled() {
            drop(slot);
            hook();
        } else {
            *slot = Some(hook);
        }
    }

    fn set(&self, new: SlotState) {
        let waker = {
            let mut st = self.state.lock();
            if !matches!(st.0, SlotState::Waiting) {
                return;
            }
            st.0 = new;
            st.1.take()
        };
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The request started.
    pub(crate) fn start(&self, started: Started, model: Arc<LoadedModel>) {
        self.set(SlotState::Started(started, Some(model)));
    }

    /// The request was answered without running (from the result cache).
    pub(crate) fn ready(&self, response: Response) {
        self.set(SlotState::Started(Started::Cached(response), None));
    }

    /// The request ended without running.
    pub(crate) fn fail(&self, error: EngineError) {
        self.set(SlotState::Failed(error));
    }

    pub(crate) fn take_now(&self) -> Option<Result<(Started, Option<Arc<LoadedModel>>)>> {
        let mut st = self.state.lock();
        match std::mem::replace(&mut st.0, SlotState::Taken) {
            SlotState::Waiting => {
                st.0 = SlotState::Waiting;
                None
            }
            SlotState::Started(s, m) => Some(Ok((s, m))),
            SlotState::Failed(e) => Some(Err(e)),
            SlotState::Taken => Some(Err(EngineError::invalid(
                "handle",
                "the result was already taken",
            ))),
        }
    }

    pub(crate) fn take_blocking(&self) -> Result<(Started, Option<Arc<LoadedModel>>)> {
        let mut st = self.state.lock();
        while matches!(st.0, SlotState::Waiting) {
            self.ready.wait(&mut st);
        }
        drop(st);
        self.take_now()
            .unwrap_or_else(|| Err(EngineError::invalid("handle", "not started")))
    }

    pub(crate) fn poll_take(
        &self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(Started, Option<Arc<LoadedModel>>)>> {
        if let Some(r) = self.take_now() {
            return Poll::Ready(r);
        }
        let mut st = self.state.lock();
        if matches!(st.0, SlotState::Waiting) {
            st.1 = Some(cx.waker().clone());
            return Poll::Pending;
        }
        drop(st);
        match self.take_now() {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }
}

/// How a request ended, reported to the engine's metrics and sessions.
pub(crate) trait Reporter: Send + Sync {
    /// `id` ended with `outcome` after `latency` (from submission).
    fn ended(&self, id: RequestId, outcome: &Result<()>, latency: Duration);

    /// A request under result-cache `key` succeeded with `response`.
    fn remember(&self, key: ResultKey, response: &Response);
}
