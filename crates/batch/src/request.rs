//! What a caller submits: an input plus how urgent, how big and how late it may be.

use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use switchyard_core::{Deadline, Priority, RequestId};

/// Which requests may share a batch: the same model and the same shape class.
///
/// The handler computes it from each input ([`BatchHandler::key`]); requests
/// with different keys wait in different sub-queues and never meet in a batch.
/// Cloning is cheap (the model name is shared).
///
/// [`BatchHandler::key`]: crate::BatchHandler::key
///
/// ```
/// use switchyard_batch::BatchKey;
/// let a = BatchKey::new("minilm", 128);
/// assert_eq!(a, BatchKey::new("minilm", 128));
/// assert_ne!(a, BatchKey::new("minilm", 256));
/// assert_eq!(a.to_string(), "minilm/128");
/// assert_eq!(BatchKey::default(), BatchKey::new("", 0));
/// assert_ne!(BatchKey::default(), BatchKey::new("x", 0));
/// ```
#[derive(Clone)]
pub struct BatchKey {
    /// `None` for the empty name, so the default key clones without touching
    /// a shared reference count.
    model: Option<Arc<str>>,
    class: u64,
    /// FNV-1a of the model name and class, computed once: keys are hashed on
    /// every submit, so hashing must cost one word.
    digest: u64,
}

impl BatchKey {
    /// A key for `model` and a handler-chosen shape class (a padded length,
    /// an image size, a step count folded into a number...).
    pub fn new(model: impl Into<Arc<str>>, class: u64) -> Self {
        let model: Arc<str> = model.into();
        let mut digest = 0xcbf2_9ce4_8422_2325u64;
        for byte in model.bytes().chain(class.to_le_bytes()) {
            digest = (digest ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        Self {
            model: (!model.is_empty()).then_some(model),
            class,
            digest,
        }
    }

    /// The model part.
    pub fn model(&self) -> &str {
        self.model.as_deref().unwrap_or("")
    }

    /// The shape-class part.
    pub fn class(&self) -> u64 {
        self.class
    }
}

impl Default for BatchKey {
    /// One key for everything: every request may batch with every other.
    /// (Making it neither allocates nor touches a shared count.)
    fn default() -> Self {
        static DEFAULT: OnceLock<u64> = OnceLock::new();
        let digest = *DEFAULT.get_or_init(|| BatchKey::new("", 0).digest);
        Self {
            model: None,
            class: 0,
            digest,
        }
    }
}

impl PartialEq for BatchKey {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
            && self.class == other.class
            && match (&self.model, &other.model) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
                _ => false,
            }
    }
}

impl Eq for BatchKey {}

impl PartialOrd for BatchKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for BatchKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.model(), self.class).cmp(&(other.model(), other.class))
    }
}

impl Hash for BatchKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.digest);
    }
}

/// A hasher for maps keyed by [`BatchKey`] (and small tuples of it): keys
/// arrive pre-hashed, so it only mixes words.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// A map keyed by [`BatchKey`] with the cheap hasher.
pub(crate) type KeyMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<KeyHasher>>;

impl fmt::Debug for BatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BatchKey({self})")
    }
}

impl fmt::Display for BatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.model(), self.class)
    }
}

/// One unit of work for a [`Batcher`](crate::Batcher): the input and how to
/// schedule it.
///
/// ```
/// use std::time::Duration;
/// use switchyard_batch::Request;
/// use switchyard_core::Priority;
///
/// let request = Request::new("hello")
///     .with_priority(Priority::High)
///     .with_timeout(Duration::from_secs(2))
///     .with_cost(5);
/// assert_eq!(request.priority(), Priority::High);
/// assert_eq!(request.input(), &"hello");
/// ```
#[derive(Debug, Clone)]
pub struct Request<I> {
    pub(crate) input: I,
    pub(crate) id: Option<RequestId>,
    pub(crate) priority: Priority,
    pub(crate) deadline: Option<Deadline>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) cost: Option<u64>,
    pub(crate) coalesce: Option<u64>,
}

impl<I> Request<I> {
    /// A Normal-priority request with no deadline; its cost comes from the handler.
    pub fn new(input: I) -> Self {
        Self {
            input,
            id: None,
            priority: Priority::Normal,
            deadline: None,
            timeout: None,
            cost: None,
            coalesce: None,
        }
    }

    /// Use this id instead of a fresh one (ids from outside, e.g. an HTTP
    /// request id). Ids should be unique among live requests.
    pub fn with_id(mut self, id: RequestId) -> Self {
        self.id = Some(id);
        self
    }

    /// Set the priority.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Fail with [`TimedOut`](crate::BatchError::TimedOut) unless it starts
    /// running before `deadline`.
    pub fn with_deadline(mut self, deadline: Deadline) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Like [`with_deadline`](Self::with_deadline), measured from submission
    /// on the batcher's clock.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Override the handler's cost for this input (tokens, pixels...).
    pub fn with_cost(mut self, cost: u64) -> Self {
        self.cost = Some(cost);
        self
    }

    /// Let identical requests share one run: requests with the same key and
    /// the same hash that are queued at the same time run once and all get
    /// the result. Only meaningful for deterministic handlers, and only when
    /// the batcher was built with coalescing on.
    pub fn with_coalescing(mut self, hash: u64) -> Self {
        self.coalesce = Some(hash);
        self
    }

    /// The input.
    pub fn input(&self) -> &I {
        &self.input
    }

    /// Take the input back.
    pub fn into_input(self) -> I {
        self.input
    }

    /// The priority.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// The id given with [`with_id`](Self::with_id), if any.
    pub fn id(&self) -> Option<RequestId> {
        self.id
    }
}

impl<I> From<I> for Request<I> {
    fn from(input: I) -> Self {
        Request::new(input)
    }
}
