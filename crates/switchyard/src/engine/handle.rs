//! [`Handle`] and [`TokenStream`]: how a caller follows one request, and
//! the [`Slot`] the engine fills when the request starts.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use switchyard_batch::{BatchError, HandleOf};
use switchyard_core::RequestId;
use switchyard_text::{
    Completion, Embedded, EmbeddingHandler, FinishReason, Finished, GenerationStream, TextDelta,
    TextError,
};

use crate::engine::error::{EngineError, Result};
use crate::engine::image_ops::ImageOpsHandler;
use crate::engine::models::LoadedModel;
use crate::engine::request::{Embeddings, Response};
use crate::engine::results::ResultKey;
use crate::engine::slot::{Reporter, Slot, Started};

/// Follows one submitted request: wait for its [`Response`] (blocking, with
/// a timeout, or as a `Future`), read a generation as a [`TokenStream`], or
/// cancel it. Dropping a handle cancels its request.
pub struct Handle {
    id: RequestId,
    model: String,
    slot: Arc<Slot>,
    reporter: Arc<dyn Reporter>,
    submitted: Instant,
    /// The future's progress once started.
    poll: Option<Polling>,
    /// Keeps the model loaded while the future reads from it.
    held: Option<Arc<LoadedModel>>,
    finished: bool,
    /// Where a success goes in the result cache.
    remember: Option<ResultKey>,
}

/// The vectors of a request's inputs, with the tokens read for them all
/// (OpenAI's `usage.prompt_tokens`).
fn gathered(inputs: Vec<Embedded>) -> Embeddings {
    let prompt_tokens = inputs.iter().filter_map(|e| e.tokens).sum();
    Embeddings {
        vectors: inputs.into_iter().map(|e| e.vector).collect(),
        prompt_tokens,
    }
}

enum Polling {
    Stream(Collect, GenerationStream),
    Embeddings(Vec<Option<Embedded>>, Vec<HandleOf<EmbeddingHandler>>),
    Image(HandleOf<ImageOpsHandler>),
    #[cfg(feature = "diffusion")]
    Images(HandleOf<switchyard_diffusion::DiffusionHandler>),
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("id", &self.id)
            .field("model", &self.model)
            .finish()
    }
}

/// Accumulates a generation's deltas into a [`Completion`].
#[derive(Default)]
struct Collect {
    text: String,
    tokens: Vec<u32>,
}

impl Collect {
    /// Adds `delta`; `Some` when it was the last.
    fn push(&mut self, delta: TextDelta) -> Option<Result<Completion>> {
        self.text.push_str(&delta.text);
        self.tokens.extend_from_slice(&delta.tokens);
        let finish = delta.finish?;
        if finish.reason == FinishReason::Cancelled {
            return Some(Err(EngineError::Cancelled));
        }
        Some(Ok(Completion {
            text: std::mem::take(&mut self.text),
            tokens: std::mem::take(&mut self.tokens),
            finish_reason: finish.reason,
            usage: finish.usage,
        }))
    }
}

/// The engine's reading of a batcher's error; `handler` reads the
/// pipeline's own.
fn batch_error<E: std::fmt::Display>(
    model: &str,
    e: BatchError<E>,
    handler: impl FnOnce(E) -> EngineError,
) -> EngineError {
    match e {
        BatchError::Cancelled => EngineError::Cancelled,
        BatchError::TimedOut => EngineError::TimedOut,
        BatchError::ShuttingDown => EngineError::ShuttingDown,
        BatchError::QueueFull { capacity, .. } => EngineError::QueueFull { capacity },
        BatchError::Handler(e) => handler(e),
        other => EngineError::Failed {
            model: model.to_owned(),
            reason: other.to_string(),
        },
    }
}

fn embed_error(model: &str, e: BatchError<Arc<TextError>>) -> EngineError {
    batch_error(model, e, |e| EngineError::from_text(model, &e))
}

fn image_error(model: &str, e: BatchError<Arc<switchyard_image::ImageError>>) -> EngineError {
    batch_error(model, e, |e| match &*e {
        switchyard_image::ImageError::InvalidArgument { .. } => {
            EngineError::invalid("ops", e.to_string())
        }
        other => EngineError::Failed {
            model: model.to_owned(),
            reason: other.to_string(),
        },
    })
}

#[cfg(feature = "diffusion")]
fn diffusion_error(
    model: &str,
    e: BatchError<Arc<switchyard_diffusion::DiffusionError>>,
) -> EngineError {
    batch_error(model, e, |e| EngineError::from_diffusion(model, &e))
}

impl Handle {
    pub(crate) fn new(
        id: RequestId,
        model: String,
        slot: Arc<Slot>,
        reporter: Arc<dyn Reporter>,
    ) -> Self {
        Self {
            id,
            model,
            slot,
            reporter,
            submitted: Instant::now(),
            poll: None,
            held: None,
            finished: false,
            remember: None,
        }
    }

    /// Stores a success in the result cache under `key`.
    pub(crate) fn remembering(mut self, key: Option<ResultKey>) -> Self {
        self.remember = key;
        self
    }

    /// The request's id (for [`Engine::cancel`](crate::Engine::cancel) and
    /// [`Engine::sessions`](crate::Engine::sessions)).
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The model serving it.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Cancels the request: a waiting one never runs, a running one stops
    /// within a step; either ends with [`EngineError::Cancelled`].
    pub fn cancel(&self) {
        self.slot.cancel_now();
    }

    fn report(&mut self, result: Result<Response>) -> Result<Response> {
        if !self.finished {
            self.finished = true;
            let outcome = result.as_ref().map(|_| ()).map_err(Clone::clone);
            self.reporter
                .ended(self.id, &outcome, self.submitted.elapsed());
            if let (Ok(response), Some(key)) = (&result, self.remember) {
                self.reporter.remember(key, response);
            }
        }
        result
    }

    /// Blocks until the request ends and returns its result.
    ///
    /// # Errors
    /// Why the request did not complete.
    pub fn wait(mut self) -> Result<Response> {
        let result = self.wait_inner();
        self.report(result)
    }

    fn wait_inner(&mut self) -> Result<Response> {
        let (started, _model) = self.slot.take_blocking()?;
        match started {
            Started::Stream(stream) => {
                let mut collect = Collect::default();
                for item in stream {
                    let delta = item.map_err(|e| EngineError::from_text(&self.model, &e))?;
                    self.slot
                        .done_units
                        .fetch_add(delta.tokens.len() as u64, Ordering::Relaxed);
                    if let Some(done) = collect.push(delta) {
                        return done.map(Response::Completion);
                    }
                }
                Err(self.ended_early())
            }
            Started::Embeddings(handles) => {
                let mut out = Vec::with_capacity(handles.len());
                let mut handles = handles.into_iter();
                while let Some(mut h) = handles.next() {
                    let outcome = loop {
                        if self.slot.cancel.is_cancelled() {
                            h.cancel();
                            handles.by_ref().for_each(|h| h.cancel());
                        }
                        if let Some(o) = h.wait_timeout(Duration::from_millis(20)) {
                            break o;
                        }
                    };
                    out.push(outcome.map_err(|e| embed_error(&self.model, e))?);
                    self.slot.done_units.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Response::Embeddings(gathered(out)))
            }
            Started::Cached(response) => Ok(response),
            Started::Image(h) => {
                let image = h.wait().map_err(|e| image_error(&self.model, e))?;
                self.slot.done_units.store(1, Ordering::Relaxed);
                Ok(Response::Image(image))
            }
            #[cfg(feature = "diffusion")]
            Started::Images(h) => h
                .wait()
                .map(Response::Images)
                .map_err(|e| diffusion_error(&self.model, e)),
        }
    }

    fn ended_early(&self) -> EngineError {
        if self.slot.cancel.is_cancelled() {
            EngineError::Cancelled
        } else {
            EngineError::Failed {
                model: self.model.clone(),
                reason: "the generation ended without a finish reason".into(),
            }
        }
    }

    /// The generation's text as it is produced (blocking iterator or
    /// `futures_core::Stream`). The request's end is reported when the
    /// stream ends; dropping it cancels the generation. A request that is
    /// not a generation, or that fails before starting, gives one `Err`
    /// item and ends.
    pub fn into_stream(mut self) -> TokenStream {
        let slot = Arc::clone(&self.slot);
        let reporter = Arc::clone(&self.reporter);
        // The stream reports instead of the handle.
        self.finished = true;
        TokenStream {
            id: self.id,
            model: std::mem::take(&mut self.model),
            slot,
            reporter,
            submitted: self.submitted,
            stream: None,
            _model: None,
            done: false,
            remember: self.remember.map(|key| (Collect::default(), key)),
        }
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response>> {
        loop {
            match &mut self.poll {
                None => {
                    let (started, model) = match self.slot.poll_take(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(r) => r?,
                    };
                    self.held = model;
                    self.poll = Some(match started {
                        Started::Cached(response) => return Poll::Ready(Ok(response)),
                        Started::Stream(s) => Polling::Stream(Collect::default(), s),
                        Started::Embeddings(h) => Polling::Embeddings(vec![None; h.len()], h),
                        Started::Image(h) => Polling::Image(h),
                        #[cfg(feature = "diffusion")]
                        Started::Images(h) => Polling::Images(h),
                    });
                }
                Some(Polling::Stream(collect, stream)) => {
                    let item = match futures_core::Stream::poll_next(Pin::new(stream), cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(item) => item,
                    };
                    let Some(item) = item else {
                        return Poll::Ready(Err(self.ended_early()));
                    };
                    let delta = item.map_err(|e| EngineError::from_text(&self.model, &e))?;
                    self.slot
                        .done_units
                        .fetch_add(delta.tokens.len() as u64, Ordering::Relaxed);
                    if let Some(done) = collect.push(delta) {
                        return Poll::Ready(done.map(Response::Completion));
                    }
                }
                Some(Polling::Embeddings(out, handles)) => {
                    if self.slot.cancel.is_cancelled() {
                        handles.iter().for_each(|h| h.cancel());
                    }
                    for (slot, h) in out.iter_mut().zip(handles.iter_mut()) {
                        if slot.is_some() {
                            continue;
                        }
                        match Pin::new(h).poll(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(r) => {
                                *slot = Some(r.map_err(|e| embed_error(&self.model, e))?);
                                self.slot.done_units.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    let done = out.iter_mut().filter_map(Option::take).collect();
                    return Poll::Ready(Ok(Response::Embeddings(gathered(done))));
                }
                Some(Polling::Image(h)) => {
                    return match Pin::new(h).poll(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(r) => {
                            self.slot.done_units.store(1, Ordering::Relaxed);
                            Poll::Ready(
                                r.map(Response::Image)
                                    .map_err(|e| image_error(&self.model, e)),
                            )
                        }
                    };
                }
                #[cfg(feature = "diffusion")]
                Some(Polling::Images(h)) => {
                    return match Pin::new(h).poll(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(r) => Poll::Ready(
                            r.map(Response::Images)
                                .map_err(|e| diffusion_error(&self.model, e)),
                        ),
                    };
                }
            }
        }
    }
}

impl Future for Handle {
    type Output = Result<Response>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(Err(EngineError::invalid(
                "handle",
                "the result was already taken",
            )));
        }
        match this.poll_inner(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => Poll::Ready(this.report(r)),
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if !self.finished {
            self.slot.cancel_now();
            self.finished = true;
            self.reporter.ended(
                self.id,
                &Err(EngineError::Cancelled),
                self.submitted.elapsed(),
            );
        }
    }
}

/// A generation's text as it is produced: a blocking [`Iterator`] and a
/// `futures_core::Stream` of [`TextDelta`]s; the last carries the finish
/// reason and usage. Dropping it cancels the generation.
pub struct TokenStream {
    id: RequestId,
    model: String,
    slot: Arc<Slot>,
    reporter: Arc<dyn Reporter>,
    submitted: Instant,
    stream: Option<GenerationStream>,
    _model: Option<Arc<LoadedModel>>,
    done: bool,
    /// The text so far and its result-cache key, when it is to be kept.
    remember: Option<(Collect, ResultKey)>,
}

impl std::fmt::Debug for TokenStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStream")
            .field("id", &self.id)
            .field("model", &self.model)
            .field("done", &self.done)
            .finish()
    }
}

impl TokenStream {
    /// The request's id.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Cancels the generation; the stream ends within a step.
    pub fn cancel(&self) {
        self.slot.cancel_now();
    }

    /// Reads the rest into one [`Completion`].
    ///
    /// # Errors
    /// As [`Handle::wait`].
    pub fn collect_completion(self) -> Result<Completion> {
        let mut collect = Collect::default();
        for item in self {
            if let Some(done) = collect.push(item?) {
                return done;
            }
        }
        Err(EngineError::Cancelled)
    }

    fn end(&mut self, outcome: Result<()>) {
        if !self.done {
            self.done = true;
            self.stream = None;
            // An ended stream no longer holds its model in memory.
            self._model = None;
            self.reporter
                .ended(self.id, &outcome, self.submitted.elapsed());
        }
    }

    fn accept(
        &mut self,
        started: Result<(Started, Option<Arc<LoadedModel>>)>,
    ) -> Option<Result<TextDelta>> {
        match started {
            Ok((Started::Stream(s), model)) => {
                self.stream = Some(s);
                self._model = model;
                None
            }
            Ok((Started::Cached(Response::Completion(c)), _)) => {
                // The whole answer as one delta.
                self.end(Ok(()));
                Some(Ok(TextDelta {
                    text: c.text,
                    tokens: c.tokens,
                    finish: Some(Finished {
                        reason: c.finish_reason,
                        usage: c.usage,
                    }),
                }))
            }
            Ok((other, _)) => {
                other.cancel();
                let e = EngineError::invalid("task", "only generation requests stream");
                self.end(Err(e.clone()));
                Some(Err(e))
            }
            Err(e) => {
                self.end(Err(e.clone()));
                Some(Err(e))
            }
        }
    }

    fn item(
        &mut self,
        item: Option<std::result::Result<TextDelta, TextError>>,
    ) -> Option<Result<TextDelta>> {
        match item {
            None => {
                let e = if self.slot.cancel.is_cancelled() {
                    EngineError::Cancelled
                } else {
                    EngineError::Failed {
                        model: self.model.clone(),
                        reason: "the generation ended without a finish reason".into(),
                    }
                };
                self.end(Err(e));
                None
            }
            Some(Err(e)) => {
                let e = EngineError::from_text(&self.model, &e);
                self.end(Err(e.clone()));
                Some(Err(e))
            }
            Some(Ok(delta)) => {
                self.slot
                    .done_units
                    .fetch_add(delta.tokens.len() as u64, Ordering::Relaxed);
                if let Some((collect, key)) = &mut self.remember
                    && let Some(Ok(completion)) = collect.push(delta.clone())
                {
                    self.reporter
                        .remember(*key, &Response::Completion(completion));
                }
                if let Some(f) = delta.finish {
                    let outcome = if f.reason == FinishReason::Cancelled {
                        Err(EngineError::Cancelled)
                    } else {
                        Ok(())
                    };
                    self.end(outcome);
                }
                Some(Ok(delta))
            }
        }
    }
}

impl Iterator for TokenStream {
    type Item = Result<TextDelta>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.stream.is_none() {
            let started = self.slot.take_blocking();
            if let Some(early) = self.accept(started) {
                return Some(early);
            }
        }
        let item = self.stream.as_mut()?.next();
        self.item(item)
    }
}

impl futures_core::Stream for TokenStream {
    type Item = Result<TextDelta>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.stream.is_none() {
            match this.slot.poll_take(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(started) => {
                    if let Some(early) = this.accept(started) {
                        return Poll::Ready(Some(early));
                    }
                }
            }
        }
        let Some(stream) = this.stream.as_mut() else {
            return Poll::Ready(None);
        };
        match futures_core::Stream::poll_next(Pin::new(stream), cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(item) => Poll::Ready(this.item(item)),
        }
    }
}

impl Drop for TokenStream {
    fn drop(&mut self) {
        if !self.done {
            self.slot.cancel_now();
            self.end(Err(EngineError::Cancelled));
        }
    }
}
