//! [`BudgetMonitor`]: an accounting monitor for a configured budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use switchyard_core::DeviceId;

use crate::{MemoryMonitor, MemorySnapshot, Result, VramError};

#[derive(Debug)]
struct Account {
    device: DeviceId,
    budget: u64,
    reserved: AtomicU64,
}

/// "Use at most 6 GiB": a budget per device, and the bytes the engine has
/// reserved against it. It reads no hardware, so it works on every machine
/// and gives tests exact numbers.
///
/// ```
/// use switchyard_core::DeviceId;
/// use switchyard_vram::{BudgetMonitor, MemoryMonitor, VramError};
///
/// let budget = BudgetMonitor::new().with_budget(DeviceId::Cpu, 6 << 30);
/// let weights = budget.reserve(DeviceId::Cpu, 4 << 30)?;
/// assert_eq!(budget.snapshot(DeviceId::Cpu)?.free, 2 << 30);
/// assert!(matches!(budget.reserve(DeviceId::Cpu, 3 << 30), Err(VramError::OverBudget { .. })));
/// drop(weights); // released
/// assert_eq!(budget.snapshot(DeviceId::Cpu)?.used, 0);
/// # Ok::<(), VramError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct BudgetMonitor {
    accounts: Vec<Arc<Account>>,
}

/// Bytes reserved against a [`BudgetMonitor`]; released when dropped.
#[derive(Debug)]
#[must_use = "dropping a reservation releases it at once"]
pub struct Reservation {
    account: Arc<Account>,
    bytes: u64,
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The device they are held on.
    pub fn device(&self) -> DeviceId {
        self.account.device
    }

    /// Grow or shrink to `bytes`; on refusal the reservation is unchanged.
    pub fn resize(&mut self, bytes: u64) -> Result<()> {
        if bytes > self.bytes {
            take(&self.account, bytes - self.bytes)?;
        } else {
            self.account
                .reserved
                .fetch_sub(self.bytes - bytes, Ordering::AcqRel);
        }
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.account
            .reserved
            .fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

fn take(account: &Account, bytes: u64) -> Result<()> {
    account
        .reserved
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
            held.checked_add(bytes).filter(|&n| n <= account.budget)
        })
        .map(|_| ())
        .map_err(|held| VramError::OverBudget {
            device: account.device,
            requested: bytes,
            available: account.budget.saturating_sub(held),
        })
}

impl BudgetMonitor {
    /// A monitor with no devices.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) `device` with a budget of `bytes`.
    pub fn with_budget(mut self, device: DeviceId, bytes: u64) -> Self {
        self.accounts.retain(|a| a.device != device);
        self.accounts.push(Arc::new(Account {
            device,
            budget: bytes,
            reserved: AtomicU64::new(0),
        }));
        self
    }

    fn account(&self, device: DeviceId) -> Result<&Arc<Account>> {
        self.accounts
            .iter()
            .find(|a| a.device == device)
            .ok_or_else(|| VramError::NoDevice {
                device,
                reason: "no budget was set for it".to_owned(),
            })
    }

    /// Reserve `bytes` on `device`, or fail with
    /// [`VramError::OverBudget`] saying how much is left.
    pub fn reserve(&self, device: DeviceId, bytes: u64) -> Result<Reservation> {
        let account = self.account(device)?;
        take(account, bytes)?;
        Ok(Reservation {
            account: Arc::clone(account),
            bytes,
        })
    }

    /// Bytes reserved on `device` now (0 for an unknown device).
    pub fn reserved(&self, device: DeviceId) -> u64 {
        self.account(device)
            .map_or(0, |a| a.reserved.load(Ordering::Acquire))
    }
}

impl MemoryMonitor for BudgetMonitor {
    fn devices(&self) -> Vec<DeviceId> {
        self.accounts.iter().map(|a| a.device).collect()
    }

    fn snapshot(&self, device: DeviceId) -> Result<MemorySnapshot> {
        let account = self.account(device)?;
        let used = account.reserved.load(Ordering::Acquire);
        let mut snapshot = MemorySnapshot::new(device, account.budget, used);
        snapshot.process_used = Some(used);
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_add_up_resize_and_release() {
        let m = BudgetMonitor::new()
            .with_budget(DeviceId::Cpu, 100)
            .with_budget(DeviceId::Cuda(0), 50);
        let mut a = m.reserve(DeviceId::Cpu, 60).unwrap();
        let b = m.reserve(DeviceId::Cpu, 40).unwrap();
        assert_eq!(m.reserved(DeviceId::Cpu), 100);
        match m.reserve(DeviceId::Cpu, 1) {
            Err(VramError::OverBudget {
                requested: 1,
                available: 0,
                ..
            }) => {}
            other => panic!("expected OverBudget, got {other:?}"),
        }
        assert!(a.resize(61).is_err());
        assert_eq!(a.bytes(), 60);
        a.resize(10).unwrap();
        assert_eq!(m.reserved(DeviceId::Cpu), 50);
        drop(b);
        assert_eq!(m.snapshot(DeviceId::Cpu).unwrap().free, 90);
        assert_eq!(m.reserved(DeviceId::Cuda(0)), 0);
        assert_eq!(a.device(), DeviceId::Cpu);
        assert!(matches!(
            m.reserve(DeviceId::Cuda(1), 1),
            Err(VramError::NoDevice { .. })
        ));
        assert_eq!(m.devices(), [DeviceId::Cpu, DeviceId::Cuda(0)]);
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_budget() {
        let m = BudgetMonitor::new().with_budget(DeviceId::Cpu, 1000);
        let granted: u64 = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let mut held = Vec::new();
                        for _ in 0..100 {
                            if let Ok(r) = m.reserve(DeviceId::Cpu, 7) {
                                held.push(r);
                            }
                        }
                        let n = held.iter().map(Reservation::bytes).sum::<u64>();
                        std::mem::forget(held);
                        n
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert!(granted <= 1000);
        assert_eq!(granted, m.reserved(DeviceId::Cpu));
        assert!(granted > 1000 - 7);
    }
}
