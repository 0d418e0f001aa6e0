//! Durability modes: when a write's reply may go out, and when the WAL syncs.
//! The promises are written down in `docs/durability.md`.

use std::time::Duration;

/// How much a reply promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// A WRITE is replied to once its WAL record is synced (group commit). Nothing acknowledged is lost.
    Strict,
    /// WRITEs are replied to at once; the WAL syncs at least every `sync_interval` or
    /// `sync_bytes`. FLUSH and FUA wait for a sync.
    Batched,
    /// WRITEs are replied to at once; the WAL syncs only on FLUSH, FUA, segment roll and shutdown.
    Relaxed,
    /// Everything is replied to at once, FLUSH and FUA included. UNSAFE: for scratch volumes.
    Async,
}

impl Durability {
    pub fn name(self) -> &'static str {
        match self {
            Durability::Strict => "strict",
            Durability::Batched => "batched",
            Durability::Relaxed => "relaxed",
            Durability::Async => "async",
        }
    }
}

/// When the writer syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncPolicy {
    pub durability: Durability,
    /// Batched mode: longest time written data stays unsynced.
    pub interval: Duration,
    /// Batched mode: most bytes written but unsynced.
    pub bytes: u64,
}

impl SyncPolicy {
    /// Sync now, after a batch? `forced` when the batch held a FLUSH or FUA write.
    pub fn sync_after_batch(&self, forced: bool, unsynced_bytes: u64, unsynced_for: Duration) -> bool {
        if unsynced_bytes == 0 {
            // Everything written is already synced; a FLUSH costs nothing.
            return false;
        }
        match self.durability {
            Durability::Strict => true,
            Durability::Batched => forced || unsynced_bytes >= self.bytes || unsynced_for >= self.interval,
            Durability::Relaxed => forced,
            Durability::Async => false,
        }
    }

    /// Batched mode's deadline for data that is written but not synced.
    pub fn deadline(&self) -> Option<Duration> {
        (self.durability == Durability::Batched).then_some(self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_table() {
        let p = |d| SyncPolicy { durability: d, interval: Duration::from_millis(10), bytes: 100 };
        let ms = Duration::from_millis;
        assert!(p(Durability::Strict).sync_after_batch(false, 1, ms(0)));
        assert!(!p(Durability::Batched).sync_after_batch(false, 99, ms(9)));
        assert!(p(Durability::Batched).sync_after_batch(false, 100, ms(0)));
        assert!(p(Durability::Batched).sync_after_batch(false, 1, ms(10)));
        assert!(p(Durability::Batched).sync_after_batch(true, 1, ms(0)));
        assert!(!p(Durability::Batched).sync_after_batch(true, 0, ms(0)), "nothing unsynced");
        assert!(!p(Durability::Relaxed).sync_after_batch(false, 1 << 30, ms(100_000)));
        assert!(p(Durability::Relaxed).sync_after_batch(true, 1, ms(0)));
        assert!(!p(Durability::Async).sync_after_batch(true, 1 << 30, ms(100_000)));
        assert!(!p(Durability::Strict).sync_after_batch(false, 0, ms(0)), "nothing to sync");
    }
}
