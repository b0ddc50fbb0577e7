//! A loader for the cache's behaviour tests: counts loads, weighs models as
//! told, can be slow, fail or panic on chosen keys, and can hold a
//! reservation against a budget monitor so the "device" memory really goes
//! down when the last handle is dropped.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use switchyard_cache::{LoadError, Loaded, Loader};
use switchyard_core::DeviceId;
use switchyard_vram::{BudgetMonitor, Reservation};

/// A "model": its name and the memory it holds.
#[derive(Debug)]
pub struct Model {
    pub name: String,
    pub reservation: Option<Reservation>,
}

#[derive(Debug, Default)]
pub struct TestLoader {
    pub loads: AtomicUsize,
    pub bytes: HashMap<String, u64>,
    pub costs: HashMap<String, f64>,
    pub delay: Duration,
    pub fail_times: Mutex<HashMap<String, usize>>,
    pub panic_on: Vec<String>,
    pub budget: Option<Arc<BudgetMonitor>>,
}

impl TestLoader {
    pub fn weighing(pairs: &[(&str, u64)]) -> Self {
        Self {
            bytes: pairs.iter().map(|(k, b)| ((*k).to_owned(), *b)).collect(),
            ..Self::default()
        }
    }

    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }
}

impl Loader<String, Model> for TestLoader {
    fn load(&self, key: &String, device: DeviceId) -> Result<Loaded<Model>, LoadError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        if self.panic_on.contains(key) {
            panic!("loader bug on {key}");
        }
        if let Some(left) = self.fail_times.lock().get_mut(key)
            && *left > 0
        {
            *left -= 1;
            return Err(format!("{key}: file is corrupt").into());
        }
        let bytes = self.bytes.get(key).copied().unwrap_or(1);
        let reservation = match &self.budget {
            Some(b) => Some(b.reserve(device, bytes)?),
            None => None,
        };
        Ok(Loaded {
            value: Model {
                name: key.clone(),
                reservation,
            },
            bytes,
        })
    }

    fn estimate_bytes(&self, key: &String, _: DeviceId) -> Option<u64> {
        self.bytes.get(key).copied()
    }

    fn cost(&self, key: &String) -> Option<f64> {
        self.costs.get(key).copied()
    }
}

pub fn k(s: &str) -> String {
    s.to_owned()
}
