//! One in-progress load that every concurrent `get` of its key waits on.

use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::Result;

#[derive(Debug)]
pub(crate) struct Flight<V> {
    result: Mutex<Option<Result<Arc<V>>>>,
    done: Condvar,
}

impl<V> Flight<V> {
    pub(crate) fn new() -> Self {
        Self {
            result: Mutex::new(None),
            done: Condvar::new(),
        }
    }

    pub(crate) fn finish(&self, result: Result<Arc<V>>) {
        *self.result.lock() = Some(result);
        self.done.notify_all();
    }

    pub(crate) fn wait(&self) -> Result<Arc<V>> {
        let mut result = self.result.lock();
        loop {
            if let Some(r) = &*result {
                return r.clone();
            }
            self.done.wait(&mut result);
        }
    }
}
