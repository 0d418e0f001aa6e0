//! The unified block store: the sharded index of block states and the arena that holds
//! block data not yet in the WAL.

pub mod arena;
pub mod cache;
pub mod hash;
pub mod index;
pub mod lend;
pub mod receive;
