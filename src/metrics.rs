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
/// Bytes of READ replies sent from the volume's own memory without a copy into a buffer, by
/// `from`: arena (blocks in memory) or wal (a mapping of a WAL segment).
pub const READ_LENT_BYTES: &str = "spillway_read_lent_bytes_total";
/// NBD requests served, by `op` (read, write, flush, trim, write_zeroes, block_status).
pub const NBD_REQUESTS: &str = "spillway_nbd_requests_total";
/// NBD requests that failed, by `op`.
pub const NBD_ERRORS: &str = "spillway_nbd_errors_total";
/// Bytes moved by NBD requests, by `op` (read, write; trim and write_zeroes count their range).
pub const NBD_BYTES: &str = "spillway_nbd_bytes_total";
/// Time from the device call to its completion, in seconds, by `op`.
pub const NBD_SECONDS: &str = "spillway_nbd_request_seconds";
/// Bytes of records (padding included) the WAL writer wrote for one batch (group commit).
pub const WAL_BATCH_BYTES: &str = "spillway_wal_batch_bytes";
/// Queued items (writes, zeroes, sync barriers) the WAL writer took as one batch.
pub const WAL_BATCH_ITEMS: &str = "spillway_wal_batch_items";
/// Raw bytes of block data logged in WAL data records (before any compression).
pub const WAL_DATA_BYTES: &str = "spillway_wal_data_bytes_total";
/// Payload bytes stored in the WAL for those data records (LZ4 or raw; headers and padding
/// not counted). With `wal_compress = "lz4"`, stored / data is the WAL's compression ratio.
pub const WAL_STORED_BYTES: &str = "spillway_wal_stored_bytes_total";
/// Time one WAL fdatasync took, in seconds.
pub const WAL_SYNC_SECONDS: &str = "spillway_wal_sync_seconds";
/// Writes (one `pwrite` each) the WAL writer made to its segment files.
pub const WAL_WRITES: &str = "spillway_wal_writes_total";
/// Bytes the WAL writer wrote to its segment files: records, headers and padding, so
/// that over `spillway_nbd_bytes_total{op="write"}` it is the log's write amplification.
pub const WAL_WRITTEN_BYTES: &str = "spillway_wal_written_bytes_total";
/// Written data held in memory and not yet written to the WAL (bounded by `--max-dirty`),
/// across all exports.
pub const DIRTY_BYTES: &str = "spillway_dirty_bytes";
/// NBD connections open now (TCP and Unix), handshake included.
pub const CONNECTIONS_OPEN: &str = "spillway_connections_open";
/// NBD connections accepted since start (TCP and Unix).
pub const CONNECTIONS_ACCEPTED: &str = "spillway_connections_accepted_total";

const LATENCY_BUCKETS: &[f64] =
    &[0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
const SYNC_BUCKETS: &[f64] = &[0.000_1, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0];
/// 4 KiB to 32 MiB, by powers of two.
const BATCH_BYTE_BUCKETS: &[f64] = &[
    4096.0, 8192.0, 16384.0, 32768.0, 65536.0, 131072.0, 262144.0, 524288.0, 1048576.0, 2097152.0, 4194304.0,
    8388608.0, 16777216.0, 33554432.0,
];
const BATCH_ITEM_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// Serve the Prometheus text format at `http://ADDR/metrics` from now on. Counters
/// recorded before this call are not kept, so call it before the volumes open.
pub fn install_prometheus(addr: SocketAddr) -> anyhow::Result<()> {
    let mut builder = PrometheusBuilder::new().with_http_listener(addr);
    for (name, buckets) in [
        (NBD_SECONDS, LATENCY_BUCKETS),
        (WAL_SYNC_SECONDS, SYNC_BUCKETS),
        (WAL_BATCH_BYTES, BATCH_BYTE_BUCKETS),
        (WAL_BATCH_ITEMS, BATCH_ITEM_BUCKETS),
    ] {
        builder = builder
            .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Full(name.to_owned()), buckets)
            .map_err(|e| anyhow::anyhow!("metrics buckets: {e}"))?;
    }
    builder.install().map_err(|e| anyhow::anyhow!("serving metrics on {addr}: {e}"))?;
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
