//! The timing loop the timing examples share (`#[path]`-included: not an example itself).

use std::time::{Duration, Instant};

/// The shortest of `reps` runs of `f` (at least one), and the last run's value.
pub fn best<T>(reps: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed());
        last = Some(v);
    }
    (best, last.expect("at least one rep"))
}
