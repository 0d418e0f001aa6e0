//! Metric names, all in one place, and the Prometheus exporter. Documented in
//! `docs/metrics.md`.

use std::net::SocketAddr;
use std::time::Instant;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::PrometheusBuilder;

pub const SPILL_CHUNKS: &str = "spillway_spill_chunks_total";
pub const SPILL_BLOCKS: &str = "spillway_spill_blocks_total";
pub const UPLOAD_BYTES: &str = "spillway_upload_bytes_total";
pub const UPLOAD_FAILURES: &str = "spillway_upload_failures_total";
pub const GC_CHUNKS_COMPACTED: &str = "spillway_gc_chunks_compacted_total";
pub const GC_CHUNKS_DELETED: &str = "spillway_gc_chunks_deleted_total";
pub const MANIFESTS_WRITTEN: &str = "spillway_manifests_written_total";
pub const CHUNKS_REPAIRED: &str = "spillway_chunks_repaired_total";
pub const CHUNKS_UNREPAIRABLE: &str = "spillway_chunks_unrepairable_total";
pub const CACHE_HITS: &str = "spillway_cache_hits_total";
pub const CACHE_MISSES: &str = "spillway_cache_misses_total";
pub const BACKEND_ERRORS: &str = "spillway_backend_errors_total";
pub const BACKEND_RETRIES: &str = "spillway_backend_retries_total";
pub const WAL_FULL_WAITS: &str = "spillway_wal_full_waits_total";
/// NBD requests served, by `op` (read, write, flush, trim, write_zeroes, block_status).
pub const NBD_REQUESTS: &str = "spillway_nbd_requests_total";
/// NBD requests that failed, by `op`.
pub const NBD_ERRORS: &str = "spillway_nbd_errors_total";
/// Bytes moved by NBD requests, by `op` (read, write; trim and write_zeroes count their range).
pub const NBD_BYTES: &str = "spillway_nbd_bytes_total";
/// Time from the device call to its completion, in seconds, by `op`.
pub const NBD_SECONDS: &str = "spillway_nbd_request_seconds";

/// Serve the Prometheus text format at `http://ADDR/metrics` from now on. Counters
/// recorded before this call are not kept, so call it before the volumes open.
pub fn install_prometheus(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(NBD_SECONDS.to_owned()),
            &[0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0],
        )
        .map_err(|e| anyhow::anyhow!("metrics buckets: {e}"))?
        .install()
        .map_err(|e| anyhow::anyhow!("serving metrics on {addr}: {e}"))?;
    Ok(())
}

/// The metrics of one NBD operation, registered once (not per request).
pub struct OpMetrics {
    requests: Counter,
    errors: Counter,
    bytes: Counter,
    seconds: Histogram,
}

impl OpMetrics {
    pub fn new(op: &'static str) -> Self {
        Self {
            requests: metrics::counter!(NBD_REQUESTS, "op" => op),
            errors: metrics::counter!(NBD_ERRORS, "op" => op),
            bytes: metrics::counter!(NBD_BYTES, "op" => op),
            seconds: metrics::histogram!(NBD_SECONDS, "op" => op),
        }
    }

    /// Count one request of `bytes` that started at `started` and ended `ok` or not.
    pub fn record(&self, started: Instant, bytes: u64, ok: bool) {
        self.requests.increment(1);
        self.bytes.increment(bytes);
        if !ok {
            self.errors.increment(1);
        }
        self.seconds.record(started.elapsed().as_secs_f64());
    }
}
