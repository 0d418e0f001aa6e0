//! A cache of decompressed chunk frames, bounded in bytes. Eviction is CLOCK: each frame
//! has a reference bit set on a hit; the hand clears bits and evicts the first frame found
//! without one.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use super::index::Loc;

type Key = (u64, u32);

struct Inner {
    map: HashMap<Key, (Arc<Vec<u8>>, bool)>,
    ring: VecDeque<Key>,
    bytes: usize,
}

pub struct FrameCache {
    inner: Mutex<Inner>,
    cap: usize,
}

impl FrameCache {
    pub fn new(cap_bytes: usize) -> Self {
        Self { inner: Mutex::new(Inner { map: HashMap::new(), ring: VecDeque::new(), bytes: 0 }), cap: cap_bytes }
    }

    pub fn get(&self, loc: Loc) -> Option<Arc<Vec<u8>>> {
        let mut g = self.inner.lock();
        let e = g.map.get_mut(&(loc.chunk, loc.frame))?;
        e.1 = true;
        Some(Arc::clone(&e.0))
    }

    pub fn contains(&self, chunk: u64, frame: u32) -> bool {
        self.inner.lock().map.contains_key(&(chunk, frame))
    }

    pub fn insert(&self, chunk: u64, frame: u32, data: Arc<Vec<u8>>) {
        if self.cap == 0 || data.len() > self.cap {
            return;
        }
        let mut g = self.inner.lock();
        let key = (chunk, frame);
        if g.map.contains_key(&key) {
            return;
        }
        while g.bytes + data.len() > self.cap {
            let Some(k) = g.ring.pop_front() else { break };
            let referenced = g.map.get_mut(&k).map(|e| std::mem::replace(&mut e.1, false));
            match referenced {
                Some(true) => g.ring.push_back(k),
                Some(false) => {
                    if let Some((d, _)) = g.map.remove(&k) {
                        g.bytes -= d.len();
                    }
                }
                None => {}
            }
        }
        g.bytes += data.len();
        g.map.insert(key, (data, false));
        g.ring.push_back(key);
    }

    /// Forget every frame of a chunk (it was deleted).
    pub fn drop_chunk(&self, chunk: u64) {
        let mut g = self.inner.lock();
        let keys: Vec<Key> = g.map.keys().filter(|k| k.0 == chunk).copied().collect();
        for k in keys {
            if let Some((d, _)) = g.map.remove(&k) {
                g.bytes -= d.len();
            }
        }
        g.ring.retain(|k| k.0 != chunk);
    }

    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_clock() {
        let c = FrameCache::new(3 * 100);
        let loc = |f| Loc { chunk: 1, frame: f, idx: 0 };
        for f in 0..3 {
            c.insert(1, f, Arc::new(vec![f as u8; 100]));
        }
        assert!(c.get(loc(0)).is_some(), "hit sets the reference bit");
        c.insert(1, 3, Arc::new(vec![3; 100]));
        assert!(c.get(loc(0)).is_some(), "a referenced frame survives");
        assert!(c.get(loc(1)).is_none(), "the first unreferenced frame went");
        assert_eq!(c.bytes(), 300);
        c.drop_chunk(1);
        assert_eq!(c.bytes(), 0);
    }
}
