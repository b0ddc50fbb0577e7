//! Pressure levels, their thresholds, and how much may still be allocated.

use std::fmt;

use crate::{MemorySnapshot, Result, VramError};

/// How pressed a device's memory is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum PressureLevel {
    /// Below the moderate threshold.
    #[default]
    Low,
    /// At or above the moderate threshold (50 % by default).
    Moderate,
    /// At or above the high threshold (75 %): caches should evict.
    High,
    /// At or above the critical threshold (90 %): refuse new loads.
    Critical,
}

impl fmt::Display for PressureLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Low => "low",
            Self::Moderate => "moderate",
            Self::High => "high",
            Self::Critical => "critical",
        })
    }
}

/// Where the levels start, as shares of the device in use.
///
/// A level is entered as soon as use reaches its threshold, and left only
/// once use falls `hysteresis` below it, so a reading that wobbles around
/// a threshold does not flap between levels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Start of [`PressureLevel::Moderate`].
    pub moderate: f64,
    /// Start of [`PressureLevel::High`].
    pub high: f64,
    /// Start of [`PressureLevel::Critical`].
    pub critical: f64,
    /// How far below a threshold use must fall to leave its level.
    pub hysteresis: f64,
    /// The share of the device that [`headroom`] lets work fill (the
    /// seeds' "80 % VRAM threshold" for batch sizing).
    pub headroom_limit: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            moderate: 0.50,
            high: 0.75,
            critical: 0.90,
            hysteresis: 0.05,
            headroom_limit: 0.80,
        }
    }
}

impl Thresholds {
    /// Check `0 <= moderate <= high <= critical <= 1`, a hysteresis in
    /// `0..moderate` and a headroom limit in `0..=1`.
    pub fn validate(&self) -> Result<()> {
        let ordered = 0.0 <= self.moderate
            && self.moderate <= self.high
            && self.high <= self.critical
            && self.critical <= 1.0;
        if !ordered {
            return Err(VramError::InvalidConfig {
                field: "thresholds",
                reason: format!(
                    "need 0 <= moderate ({}) <= high ({}) <= critical ({}) <= 1",
                    self.moderate, self.high, self.critical
                ),
            });
        }
        if !(0.0..=self.moderate).contains(&self.hysteresis) {
            return Err(VramError::InvalidConfig {
                field: "hysteresis",
                reason: format!("{} is not in 0..=moderate", self.hysteresis),
            });
        }
        if !(0.0..=1.0).contains(&self.headroom_limit) {
            return Err(VramError::InvalidConfig {
                field: "headroom_limit",
                reason: format!("{} is not in 0..=1", self.headroom_limit),
            });
        }
        Ok(())
    }

    fn start(&self, level: PressureLevel) -> f64 {
        match level {
            PressureLevel::Low => 0.0,
            PressureLevel::Moderate => self.moderate,
            PressureLevel::High => self.high,
            PressureLevel::Critical => self.critical,
        }
    }

    /// The level for `fraction` in use with no history.
    pub fn level_of(&self, fraction: f64) -> PressureLevel {
        self.level_with_offset(fraction, 0.0)
    }

    fn level_with_offset(&self, fraction: f64, offset: f64) -> PressureLevel {
        [
            PressureLevel::Critical,
            PressureLevel::High,
            PressureLevel::Moderate,
        ]
        .into_iter()
        .find(|&l| fraction >= self.start(l) - offset)
        .unwrap_or(PressureLevel::Low)
    }

    /// The level for `fraction` in use when the level was `current`: rise at
    /// once, fall only `hysteresis` below a threshold.
    pub fn next_level(&self, current: PressureLevel, fraction: f64) -> PressureLevel {
        let raw = self.level_of(fraction);
        if raw >= current {
            return raw;
        }
        raw.max(current.min(self.level_with_offset(fraction, self.hysteresis)))
    }
}

/// Bytes that work may still take on the device of `snapshot` before use
/// reaches `thresholds.headroom_limit` (never more than is free).
pub fn headroom(snapshot: &MemorySnapshot, thresholds: &Thresholds) -> u64 {
    let limit = (snapshot.total as f64 * thresholds.headroom_limit) as u64;
    limit.saturating_sub(snapshot.used).min(snapshot.free)
}

/// How many items of `per_item_bytes` fit in `headroom`, within `1..=max`
/// (one always runs: a batch of one is how work proceeds at all).
pub fn batch_size_for(headroom: u64, per_item_bytes: u64, max: usize) -> usize {
    let max = max.max(1);
    if per_item_bytes == 0 {
        return max;
    }
    usize::try_from(headroom / per_item_bytes)
        .unwrap_or(usize::MAX)
        .clamp(1, max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_core::DeviceId;

    #[test]
    fn levels_rise_at_once_and_fall_with_hysteresis() {
        let t = Thresholds::default();
        use PressureLevel::*;
        assert_eq!(t.level_of(0.49), Low);
        assert_eq!(t.level_of(0.50), Moderate);
        assert_eq!(t.level_of(0.75), High);
        assert_eq!(t.level_of(0.95), Critical);
        // Down from High: 0.72 is within the band, 0.69 leaves it.
        assert_eq!(t.next_level(High, 0.72), High);
        assert_eq!(t.next_level(High, 0.69), Moderate);
        // A big drop goes straight to where it lands.
        assert_eq!(t.next_level(Critical, 0.10), Low);
        // From Critical to just below it stays; further falls to High.
        assert_eq!(t.next_level(Critical, 0.86), Critical);
        assert_eq!(t.next_level(Critical, 0.84), High);
        // Rising ignores hysteresis.
        assert_eq!(t.next_level(Low, 0.91), Critical);
    }

    #[test]
    fn wobbling_around_a_threshold_does_not_flap() {
        let t = Thresholds::default();
        let mut level = PressureLevel::Low;
        let mut changes = 0;
        for i in 0..100 {
            let fraction = if i % 2 == 0 { 0.76 } else { 0.73 };
            let next = t.next_level(level, fraction);
            changes += usize::from(next != level);
            level = next;
        }
        assert_eq!(changes, 1);
        assert_eq!(level, PressureLevel::High);
    }

    #[test]
    fn bad_thresholds_are_refused() {
        assert!(Thresholds::default().validate().is_ok());
        let bad = Thresholds {
            high: 0.4,
            ..Thresholds::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(VramError::InvalidConfig { .. })
        ));
        let bad = Thresholds {
            hysteresis: 0.6,
            ..Thresholds::default()
        };
        assert!(bad.validate().is_err());
        let bad = Thresholds {
            headroom_limit: 1.5,
            ..Thresholds::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn headroom_and_batch_sizes() {
        let t = Thresholds::default();
        let s = MemorySnapshot::new(DeviceId::Cuda(0), 1000, 500);
        assert_eq!(headroom(&s, &t), 300);
        let full = MemorySnapshot::new(DeviceId::Cuda(0), 1000, 900);
        assert_eq!(headroom(&full, &t), 0);
        assert_eq!(batch_size_for(300, 100, 8), 3);
        assert_eq!(batch_size_for(0, 100, 8), 1);
        assert_eq!(batch_size_for(10_000, 100, 8), 8);
        assert_eq!(batch_size_for(10, 0, 8), 8);
        assert_eq!(batch_size_for(10, 1, 0), 1);
    }
}
