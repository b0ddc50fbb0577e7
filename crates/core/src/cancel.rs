//! Cooperative cancellation.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The error a job returns when it stops because its token was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, thiserror::Error)]
#[error("the operation was cancelled")]
pub struct Cancelled;

/// A flag that long-running work checks between steps.
///
/// Cloning gives another handle to the same flag. A [child
/// token](CancellationToken::child_token) is cancelled when its parent is, but
/// cancelling a child leaves the parent running: a request's token can be the
/// child of its engine's shutdown token. Checking is one atomic load per
/// ancestor, cheap enough for every denoising step or decoded token.
///
/// ```
/// use switchyard_core::{CancellationToken, Cancelled};
///
/// fn long_job(token: &CancellationToken) -> Result<u32, Cancelled> {
///     let mut steps = 0;
///     for _ in 0..1000 {
///         token.check()?;
///         steps += 1;
///     }
///     Ok(steps)
/// }
///
/// let token = CancellationToken::new();
/// assert_eq!(long_job(&token), Ok(1000));
/// token.cancel();
/// assert_eq!(long_job(&token), Err(Cancelled));
/// ```
#[derive(Clone, Default)]
pub struct CancellationToken {
    inner: Arc<Node>,
}

#[derive(Default)]
struct Node {
    cancelled: AtomicBool,
    parent: Option<Arc<Node>>,
}

impl CancellationToken {
    /// A fresh, uncancelled token with no parent.
    pub fn new() -> Self {
        Self::default()
    }

    /// A token cancelled when `self` is (or when it is cancelled itself).
    pub fn child_token(&self) -> Self {
        Self {
            inner: Arc::new(Node {
                cancelled: AtomicBool::new(false),
                parent: Some(self.inner.clone()),
            }),
        }
    }

    /// Cancel this token and, through them, all its children. Idempotent.
    pub fn cancel(&self) {
        self.inner.cancelled.store(true, Ordering::Release);
    }

    /// Whether this token or any ancestor has been cancelled.
    pub fn is_cancelled(&self) -> bool {
        let mut node = Some(&self.inner);
        while let Some(n) = node {
            if n.cancelled.load(Ordering::Acquire) {
                return true;
            }
            node = n.parent.as_ref();
        }
        false
    }

    /// `Err(Cancelled)` once cancelled, for use with `?` between steps.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }
}

impl fmt::Debug for CancellationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancellationToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_reaches_clones_and_children_but_not_parents() {
        let root = CancellationToken::new();
        let clone = root.clone();
        let child = root.child_token();
        let grandchild = child.child_token();
        let sibling = root.child_token();

        child.cancel();
        assert!(child.is_cancelled());
        assert!(grandchild.is_cancelled());
        assert!(!root.is_cancelled());
        assert!(!sibling.is_cancelled());

        root.cancel();
        assert!(clone.is_cancelled());
        assert!(sibling.is_cancelled());
        assert_eq!(sibling.check(), Err(Cancelled));
        root.cancel();
        assert!(root.is_cancelled());
    }

    #[test]
    fn cancel_is_seen_across_threads() {
        let token = CancellationToken::new();
        let worker = {
            let token = token.child_token();
            std::thread::spawn(move || {
                let mut spins = 0u64;
                while token.check().is_ok() {
                    spins += 1;
                    std::thread::yield_now();
                }
                spins
            })
        };
        token.cancel();
        worker.join().unwrap();
        assert!(format!("{token:?}").contains("true"));
    }
}
