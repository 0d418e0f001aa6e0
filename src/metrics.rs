//! Metric names, all in one place. Documented in `docs/metrics.md`.

pub const SPILL_CHUNKS: &str = "spillway_spill_chunks_total";
pub const SPILL_BLOCKS: &str = "spillway_spill_blocks_total";
pub const UPLOAD_BYTES: &str = "spillway_upload_bytes_total";
pub const UPLOAD_FAILURES: &str = "spillway_upload_failures_total";
pub const GC_CHUNKS_COMPACTED: &str = "spillway_gc_chunks_compacted_total";
pub const GC_CHUNKS_DELETED: &str = "spillway_gc_chunks_deleted_total";
pub const MANIFESTS_WRITTEN: &str = "spillway_manifests_written_total";
pub const CACHE_HITS: &str = "spillway_cache_hits_total";
pub const CACHE_MISSES: &str = "spillway_cache_misses_total";
pub const BACKEND_ERRORS: &str = "spillway_backend_errors_total";
pub const BACKEND_RETRIES: &str = "spillway_backend_retries_total";
pub const WAL_FULL_WAITS: &str = "spillway_wal_full_waits_total";
