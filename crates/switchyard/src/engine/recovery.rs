//! Crash recovery: requests written to the [`Journal`] as they are
//! accepted, and the unfinished ones run again (or reported) after a
//! restart.
//!
//! A request is finished, for the journal, when its answer or error has
//! reached its [`Handle`] (or the handle was dropped). Generation, embedding
//! and text-to-image requests are stored whole and can run again;
//! image-processing, image-to-image and inpainting requests carry pictures,
//! which are not journaled, and come back as [`RecoveredOutcome::Failed`]
//! with [`EngineError::Interrupted`].

use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchyard_core::{Priority, RequestId};
use switchyard_text::{ChatMessage, Prompt};

use super::{Engine, EngineError, GenerationOptions, Handle, Request, Result, Task};
use crate::journal::{Journal, Outcome, PendingRequest, unix_ms_now};

/// What an engine built with a journal does with the requests a crash left
/// unfinished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RecoveryPolicy {
    /// Queue them again, with their ids, priorities and what is left of
    /// their timeouts; those that cannot run again are reported failed.
    #[default]
    Requeue,
    /// Report them all failed with [`EngineError::Interrupted`].
    ReportFailed,
}

/// A request a previous run accepted and did not finish.
#[derive(Debug)]
pub struct Recovered {
    /// Its id (the same as before the restart).
    pub id: RequestId,
    /// Its model.
    pub model: String,
    /// Its task's name (`generation`, `embedding`, ...).
    pub task: String,
    /// When it was first accepted, in milliseconds since the Unix epoch.
    pub accepted_unix_ms: u64,
    /// What became of it.
    pub outcome: RecoveredOutcome,
}

/// What became of a recovered request.
#[derive(Debug)]
pub enum RecoveredOutcome {
    /// Queued again; the handle follows it like any other.
    Requeued(Handle),
    /// Not run again, and why.
    Failed(EngineError),
}

/// A request as the journal stores it.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    model: String,
    task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    priority: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    /// What to run again; `None` when the task cannot be stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replay: Option<StoredTask>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum StoredTask {
    Generate {
        prompt: StoredPrompt,
        options: StoredGeneration,
    },
    Embed {
        inputs: Vec<String>,
    },
    #[cfg(feature = "diffusion")]
    TextToImage {
        prompt: String,
        options: images::StoredImage,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum StoredPrompt {
    Text(String),
    Tokens(Vec<u32>),
    /// (role, content) pairs.
    Chat(Vec<(String, String)>),
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct StoredGeneration {
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    repetition_penalty: Option<f32>,
    seed: Option<u64>,
    stop: Option<Vec<String>>,
    ignore_eos: bool,
}

impl StoredGeneration {
    fn of(o: &GenerationOptions) -> Self {
        Self {
            max_tokens: o.max_tokens,
            temperature: o.temperature,
            top_p: o.top_p,
            top_k: o.top_k,
            repetition_penalty: o.repetition_penalty,
            seed: o.seed,
            stop: o.stop.clone(),
            ignore_eos: o.ignore_eos,
        }
    }

    fn options(self) -> GenerationOptions {
        GenerationOptions {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            stop: self.stop,
            ignore_eos: self.ignore_eos,
        }
    }
}

#[cfg(feature = "diffusion")]
mod images {
    use serde::{Deserialize, Serialize};
    use switchyard_diffusion::SchedulerKind;

    use crate::engine::ImageOptions;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    pub(super) struct StoredImage {
        negative_prompt: Option<String>,
        width: Option<usize>,
        height: Option<usize>,
        steps: Option<usize>,
        guidance_scale: Option<f64>,
        strength: Option<f64>,
        seed: Option<u64>,
        images: Option<usize>,
        scheduler: Option<String>,
    }

    const SCHEDULERS: [(SchedulerKind, &str); 5] = [
        (SchedulerKind::Ddim, "ddim"),
        (SchedulerKind::Euler, "euler"),
        (SchedulerKind::EulerAncestral, "euler-ancestral"),
        (SchedulerKind::DpmPp2m, "dpm++2m"),
        (SchedulerKind::DpmPp2mKarras, "dpm++2m-karras"),
    ];

    impl StoredImage {
        /// `None` when the sampler has no stored name.
        pub(super) fn of(o: &ImageOptions) -> Option<Self> {
            let scheduler = match o.scheduler {
                None => None,
                Some(kind) => Some(SCHEDULERS.iter().find(|(k, _)| *k == kind)?.1.to_owned()),
            };
            Some(Self {
                negative_prompt: o.negative_prompt.clone(),
                width: o.width,
                height: o.height,
                steps: o.steps,
                guidance_scale: o.guidance_scale,
                strength: o.strength,
                seed: o.seed,
                images: o.images,
                scheduler,
            })
        }

        pub(super) fn options(self) -> Result<ImageOptions, String> {
            let scheduler = match self.scheduler {
                None => None,
                Some(name) => Some(
                    SCHEDULERS
                        .iter()
                        .find(|(_, n)| *n == name)
                        .ok_or_else(|| format!("unknown sampler `{name}`"))?
                        .0,
                ),
            };
            Ok(ImageOptions {
                negative_prompt: self.negative_prompt,
                width: self.width,
                height: self.height,
                steps: self.steps,
                guidance_scale: self.guidance_scale,
                strength: self.strength,
                seed: self.seed,
                images: self.images,
                scheduler,
            })
        }
    }
}

/// `request` as the journal stores it.
pub(super) fn to_payload(request: &Request) -> Vec<u8> {
    let replay = match &request.task {
        Task::Generate { prompt, options } => Some(StoredTask::Generate {
            prompt: match prompt {
                Prompt::Text(t) => StoredPrompt::Text(t.clone()),
                Prompt::Tokens(t) => StoredPrompt::Tokens(t.clone()),
                Prompt::Chat(m) => StoredPrompt::Chat(
                    m.iter()
                        .map(|m| (m.role.clone(), m.content.clone()))
                        .collect(),
                ),
            },
            options: StoredGeneration::of(options),
        }),
        Task::Embed { inputs } => Some(StoredTask::Embed {
            inputs: inputs.clone(),
        }),
        Task::ProcessImage { .. } => None,
        #[cfg(feature = "diffusion")]
        Task::Image {
            prompt,
            input: super::ImageInput::Noise,
            options,
        } => images::StoredImage::of(options).map(|options| StoredTask::TextToImage {
            prompt: prompt.clone(),
            options,
        }),
        #[cfg(feature = "diffusion")]
        Task::Image { .. } => None,
    };
    let stored = Stored {
        model: request.model.clone(),
        task: request.task.name().to_owned(),
        priority: request.priority.map(|p| p.as_str().to_owned()),
        timeout_ms: request
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        replay,
    };
    // Plain data (strings, numbers, lists): serialising cannot fail.
    serde_json::to_vec(&stored).unwrap_or_default()
}

/// The request again, or why it cannot run again (with what is known of
/// its model and task).
fn from_payload(p: &PendingRequest, now_ms: u64) -> (String, String, Result<Request>) {
    let stored: Stored = match serde_json::from_slice(&p.payload) {
        Ok(s) => s,
        Err(e) => {
            let e = EngineError::Interrupted {
                reason: format!("its journal record cannot be read: {e}"),
            };
            return (String::new(), String::new(), Err(e));
        }
    };
    let (model, task) = (stored.model.clone(), stored.task.clone());
    (model, task, rebuild(stored, p.accepted_unix_ms, now_ms))
}

fn rebuild(stored: Stored, accepted_ms: u64, now_ms: u64) -> Result<Request> {
    let interrupted = |reason: String| EngineError::Interrupted { reason };
    let task = match stored.replay {
        None => {
            return Err(interrupted(format!(
                "{} requests carry images, which are not journaled",
                stored.task
            )));
        }
        Some(StoredTask::Generate { prompt, options }) => Task::Generate {
            prompt: match prompt {
                StoredPrompt::Text(t) => Prompt::Text(t),
                StoredPrompt::Tokens(t) => Prompt::Tokens(t),
                StoredPrompt::Chat(m) => Prompt::Chat(
                    m.into_iter()
                        .map(|(role, content)| ChatMessage { role, content })
                        .collect(),
                ),
            },
            options: options.options(),
        },
        Some(StoredTask::Embed { inputs }) => Task::Embed { inputs },
        #[cfg(feature = "diffusion")]
        Some(StoredTask::TextToImage { prompt, options }) => Task::Image {
            prompt,
            input: super::ImageInput::Noise,
            options: options.options().map_err(interrupted)?,
        },
    };
    let mut request = Request::new(stored.model, task);
    if let Some(p) = stored.priority {
        let p: Priority = p.parse().map_err(|e| interrupted(format!("{e}")))?;
        request = request.with_priority(p);
    }
    if let Some(ms) = stored.timeout_ms {
        let waited = now_ms.saturating_sub(accepted_ms);
        match ms.checked_sub(waited).filter(|&left| left > 0) {
            Some(left) => request = request.with_timeout(Duration::from_millis(left)),
            None => return Err(EngineError::TimedOut),
        }
    }
    Ok(request)
}

/// The request a journal record holds, as an engine would queue it again
/// now: its timeout shortened by the time since it was accepted.
///
/// # Errors
/// [`EngineError::Interrupted`] when the record cannot be read or its task
/// was not stored whole (requests with pictures);
/// [`EngineError::TimedOut`] when its timeout has passed.
pub fn journaled_request(pending: &PendingRequest) -> Result<Request> {
    from_payload(pending, unix_ms_now()).2
}

/// The journal outcome of a request's end.
pub(super) fn outcome_of(result: &Result<()>) -> Outcome {
    match result {
        Ok(()) => Outcome::Succeeded,
        Err(EngineError::Cancelled) => Outcome::Cancelled,
        Err(_) => Outcome::Failed,
    }
}

impl Engine {
    /// Runs again or reports what `journal` holds unfinished.
    pub(super) fn recover(&self, journal: &Journal, policy: RecoveryPolicy) -> Vec<Recovered> {
        let summary = journal.summary();
        if let Some(torn) = summary.torn_tail {
            tracing::warn!(
                offset = torn.offset,
                bytes = torn.bytes,
                "crash journal: dropped a record cut short by the crash"
            );
        }
        let pending = journal.pending();
        if !pending.is_empty() {
            tracing::info!(
                unfinished = pending.len(),
                ?policy,
                "crash journal: recovering"
            );
        }
        let now = unix_ms_now();
        pending
            .iter()
            .map(|p| {
                let (model, task, request) = from_payload(p, now);
                let outcome = match (policy, request) {
                    (RecoveryPolicy::Requeue, Ok(request)) => {
                        match self.submit_recovered(request.with_id(p.id)) {
                            Ok(handle) => RecoveredOutcome::Requeued(handle),
                            Err(e) => RecoveredOutcome::Failed(e),
                        }
                    }
                    (RecoveryPolicy::ReportFailed, Ok(_)) => {
                        RecoveredOutcome::Failed(EngineError::Interrupted {
                            reason: "the engine was started to report, not rerun, such requests"
                                .into(),
                        })
                    }
                    (_, Err(e)) => RecoveredOutcome::Failed(e),
                };
                if matches!(outcome, RecoveredOutcome::Failed(_))
                    && let Err(e) = journal.finish(p.id, Outcome::Failed)
                {
                    tracing::warn!(error = %e, "crash journal: cannot record an end");
                }
                Recovered {
                    id: p.id,
                    model,
                    task,
                    accepted_unix_ms: p.accepted_unix_ms,
                    outcome,
                }
            })
            .collect()
    }

    /// The requests a previous run left unfinished, as this engine found
    /// them in its journal at start: queued again (with a handle) or
    /// failed (with why). Each is handed out once; later calls give the
    /// rest (none). Empty without a journal.
    pub fn recovered(&self) -> Vec<Recovered> {
        std::mem::take(&mut *self.recovered.lock())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pending(request: &Request, accepted_unix_ms: u64) -> PendingRequest {
        PendingRequest {
            id: RequestId::from_u64(1),
            accepted_unix_ms,
            payload: to_payload(request),
        }
    }

    #[test]
    fn generation_and_embedding_requests_come_back_whole() {
        let chat = Request::chat(
            "llama",
            vec![
                ChatMessage::new("system", "terse"),
                ChatMessage::new("user", "hi"),
            ],
        )
        .with_options(GenerationOptions {
            max_tokens: Some(7),
            temperature: Some(0.7),
            top_p: Some(0.9),
            top_k: Some(40),
            repetition_penalty: Some(1.1),
            seed: Some(u64::MAX),
            stop: Some(vec!["\n".into()]),
            ignore_eos: true,
        })
        .with_priority(Priority::Urgent);
        let tokens = Request::new(
            "llama",
            Task::Generate {
                prompt: Prompt::Tokens(vec![1, 2, 3]),
                options: GenerationOptions::default(),
            },
        );
        let embed = Request::embed("bert", vec!["a".into(), "b".into()]);
        for request in [chat, tokens, embed, Request::complete("llama", "once")] {
            let (model, _, back) = from_payload(&pending(&request, 5), 5);
            assert_eq!(model, request.model);
            assert_eq!(back.unwrap(), request);
        }
    }

    #[test]
    fn timeouts_count_the_time_before_the_crash() {
        let r = Request::complete("llama", "x").with_timeout(Duration::from_millis(1_000));
        let back = from_payload(&pending(&r, 10_000), 10_400).2.unwrap();
        assert_eq!(back.timeout, Some(Duration::from_millis(600)));
        let late = from_payload(&pending(&r, 10_000), 11_000).2;
        assert_eq!(late, Err(EngineError::TimedOut));
    }

    #[test]
    fn picture_requests_and_unreadable_records_are_reported() {
        let image = switchyard_image::DynamicImage::new_rgb8(2, 2);
        let r = Request::process_image("img", image, Vec::new());
        let (model, task, back) = from_payload(&pending(&r, 0), 0);
        assert_eq!((model.as_str(), task.as_str()), ("img", "image-processing"));
        assert!(matches!(back, Err(EngineError::Interrupted { .. })));
        let mut bad = pending(&r, 0);
        bad.payload = b"{not json".to_vec();
        assert!(matches!(
            from_payload(&bad, 0).2,
            Err(EngineError::Interrupted { .. })
        ));
    }

    #[cfg(feature = "diffusion")]
    #[test]
    fn text_to_image_requests_come_back_whole() {
        let r = Request::image("sd", "a red barn").with_image_options(super::super::ImageOptions {
            steps: Some(3),
            seed: Some(11),
            scheduler: Some(switchyard_diffusion::SchedulerKind::DpmPp2mKarras),
            guidance_scale: Some(7.5),
            ..Default::default()
        });
        assert_eq!(from_payload(&pending(&r, 0), 0).2.unwrap(), r);
    }
}
