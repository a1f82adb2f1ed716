//! Quotas on what is active at once across every app of a dormouse, as
//! KraftCloud counts them: *active instances* (service instances starting or
//! running, component instances handling a request) and *active memory* (the
//! memory sizes of those instances). Instances in standby count for neither.
//! The wasm host admits a component instance, the supervisor a service
//! instance, each holding a [`QuotaPermit`] for as long as the instance is
//! active.
//!
//! Invariants: usage never exceeds a limit (a permit is counted before the
//! check and taken back if the check fails); every permit gives its share
//! back when dropped, and wakes whoever waits for room; without limits,
//! admission only counts (two atomic additions).

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaLimits {
    /// Instances active at once.
    pub active_instances: Option<u64>,
    /// Bytes of memory size active at once.
    pub active_memory: Option<u64>,
}

/// What is active now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub active_instances: u64,
    pub active_memory: u64,
}

/// Which quota refused an instance.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaExceeded {
    #[error("the active instances quota is reached ({limit} of {limit} active)")]
    ActiveInstances { limit: u64 },
    #[error("the active memory quota is reached ({used} MiB of {limit} MiB active; this instance needs {size} MiB)", used = used >> 20, limit = limit >> 20, size = size >> 20)]
    ActiveMemory { used: u64, limit: u64, size: u64 },
    #[error("its memory size of {size} MiB is larger than the whole active memory quota of {limit} MiB", size = size >> 20, limit = limit >> 20)]
    LargerThanQuota { limit: u64, size: u64 },
}

/// The platform's quotas and their usage.
#[derive(Debug)]
pub struct Quotas {
    limits: QuotaLimits,
    active_instances: AtomicU64,
    active_memory: AtomicU64,
    /// Admissions waiting for room: permits dropped notify only if some wait.
    waiting: AtomicUsize,
    freed: Notify,
    /// With limits, one admission is counted and checked at a time: two
    /// counted at once could each make the other fail its check, both be
    /// refused, and leave room nobody took.
    admitting: std::sync::Mutex<()>,
}

/// One active instance's share of the quotas, given back on drop.
#[derive(Debug)]
pub struct QuotaPermit {
    quotas: Arc<Quotas>,
    memory: u64,
}

impl Drop for QuotaPermit {
    fn drop(&mut self) {
        self.quotas.active_instances.fetch_sub(1, Ordering::AcqRel);
        self.quotas.active_memory.fetch_sub(self.memory, Ordering::AcqRel);
        if self.quotas.waiting.load(Ordering::Acquire) > 0 {
            self.quotas.freed.notify_waiters();
        }
    }
}

impl Quotas {
    pub fn new(limits: QuotaLimits) -> Arc<Quotas> {
        Arc::new(Quotas {
            limits,
            active_instances: AtomicU64::new(0),
            active_memory: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
            admitting: std::sync::Mutex::new(()),
        })
    }

    pub fn limits(&self) -> QuotaLimits {
        self.limits
    }

    pub fn usage(&self) -> Usage {
        Usage {
            active_instances: self.active_instances.load(Ordering::Acquire),
            active_memory: self.active_memory.load(Ordering::Acquire),
        }
    }

    /// Whether an instance of `memory` bytes could ever be admitted: its size
    /// is within the active memory quota.
    pub fn fits(&self, memory: u64) -> Result<(), QuotaExceeded> {
        match self.limits.active_memory {
            Some(limit) if memory > limit => Err(QuotaExceeded::LargerThanQuota { limit, size: memory }),
            _ => Ok(()),
        }
    }

    /// Admits an instance of `memory` bytes now, or says which quota is full.
    pub fn try_admit(self: &Arc<Self>, memory: u64) -> Result<QuotaPermit, QuotaExceeded> {
        let _one_at_a_time =
            (self.limits != QuotaLimits::default()).then(|| self.admitting.lock().expect("not poisoned"));
        let instances = self.active_instances.fetch_add(1, Ordering::AcqRel) + 1;
        let used = self.active_memory.fetch_add(memory, Ordering::AcqRel) + memory;
        // Counted first, so two admissions racing for the last room cannot
        // both pass; the one that loses takes its count back.
        let refused = match self.limits {
            QuotaLimits { active_instances: Some(limit), .. } if instances > limit => {
                Some(QuotaExceeded::ActiveInstances { limit })
            }
            QuotaLimits { active_memory: Some(limit), .. } if used > limit => {
                Some(QuotaExceeded::ActiveMemory { used: used - memory, limit, size: memory })
            }
            _ => None,
        };
        match refused {
            None => Ok(QuotaPermit { quotas: self.clone(), memory }),
            Some(exceeded) => {
                // Taken back quietly: this count was never room anyone had,
                // and waking the waiters for it would have them spin.
                self.active_instances.fetch_sub(1, Ordering::AcqRel);
                self.active_memory.fetch_sub(memory, Ordering::AcqRel);
                Err(exceeded)
            }
        }
    }

    /// Admits an instance of `memory` bytes, waiting for room until
    /// `deadline`; past it, says which quota was full. Cancel-safe.
    pub async fn admit(
        self: &Arc<Self>,
        memory: u64,
        deadline: tokio::time::Instant,
    ) -> Result<QuotaPermit, QuotaExceeded> {
        self.fits(memory)?;
        // The common case: room at once, no waiting list.
        if let Ok(permit) = self.try_admit(memory) {
            return Ok(permit);
        }
        let _waiting = Waiting::enter(self);
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let refused = match self.try_admit(memory) {
                Ok(permit) => return Ok(permit),
                Err(exceeded) => exceeded,
            };
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(refused);
            }
        }
    }

    /// Registers interest in freed room without waiting for it (the
    /// supervisor waits on its own signals): a guard to hold meanwhile, and
    /// the notification to await.
    pub fn watch(self: &Arc<Self>) -> (WaitingGuard, &Notify) {
        (WaitingGuard(Waiting::enter(self)), &self.freed)
    }
}

/// One admission waiting for room, counted so that dropped permits know to
/// notify.
struct Waiting(Arc<Quotas>);

impl Waiting {
    fn enter(quotas: &Arc<Quotas>) -> Waiting {
        quotas.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting(quotas.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Held while waiting on [`Quotas::watch`]'s notification.
pub struct WaitingGuard(#[allow(dead_code)] Waiting);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn limits_hold_and_permits_give_back() {
        let quotas = Quotas::new(QuotaLimits { active_instances: Some(2), active_memory: Some(300 * MIB) });
        let a = quotas.try_admit(128 * MIB).unwrap();
        let b = quotas.try_admit(128 * MIB).unwrap();
        assert_eq!(quotas.try_admit(1).unwrap_err(), QuotaExceeded::ActiveInstances { limit: 2 });
        drop(b);
        let refused = quotas.try_admit(256 * MIB).unwrap_err();
        assert_eq!(refused, QuotaExceeded::ActiveMemory { used: 128 * MIB, limit: 300 * MIB, size: 256 * MIB });
        assert!(refused.to_string().contains("active memory quota"), "{refused}");
        assert_eq!(quotas.usage(), Usage { active_instances: 1, active_memory: 128 * MIB }, "refusals take nothing");
        drop(a);
        assert_eq!(quotas.usage(), Usage::default());
    }

    #[test]
    fn without_limits_admission_only_counts() {
        let quotas = Quotas::new(QuotaLimits::default());
        let permits: Vec<_> = (0..1000).map(|_| quotas.try_admit(MIB).unwrap()).collect();
        assert_eq!(quotas.usage().active_memory, 1000 * MIB);
        drop(permits);
        assert_eq!(quotas.usage(), Usage::default());
    }

    #[test]
    fn an_instance_larger_than_the_quota_never_fits() {
        let quotas = Quotas::new(QuotaLimits { active_instances: None, active_memory: Some(64 * MIB) });
        assert!(quotas.fits(128 * MIB).is_err());
        assert!(quotas.fits(64 * MIB).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_admission_gets_the_room_a_permit_gives_back() {
        let quotas = Quotas::new(QuotaLimits { active_instances: Some(1), active_memory: None });
        let held = quotas.try_admit(0).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let waiter = tokio::spawn({
            let quotas = quotas.clone();
            async move { quotas.admit(0, deadline).await.map(drop) }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(()));

        let _held = quotas.try_admit(0).unwrap();
        let refused = quotas.admit(0, tokio::time::Instant::now() + Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(refused, QuotaExceeded::ActiveInstances { limit: 1 });
        assert_eq!(quotas.waiting.load(Ordering::Acquire), 0, "a wait that ended leaves no mark");
    }
}
