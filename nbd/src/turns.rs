//! The transmission phase on OS threads that take turns at the socket, the way nbdkit
//! serves a connection.
//!
//! Each of a connection's threads in turn holds the socket's read side. It reads the next
//! request, waiting for it, and every further one whose header the receive buffer already
//! holds, up to a batch, then runs them and writes their replies. A request that has to
//! wait (a FLUSH, a strict-mode write) goes to the connection's reply thread instead, which
//! polls it whenever its waker fires and writes its reply as soon as it is done.
//!
//! When the thread lets go of the read side depends on the load:
//! - Requests arriving back to back (the wait for one was under [`IDLE_WAIT`]): it keeps
//!   its turn and reads on after replying, as a single reader would: no hand-over between
//!   threads per request, and replies in batches.
//! - A client idle between requests (queue depth 1), or a large payload: it lets go before
//!   it runs what it read, so the next thread is already waiting in `recv` while this one
//!   replies. The kernel then keeps the exchange on the client's CPU: on a 2-vCPU guest a
//!   4 KiB write at queue depth 1 took 6 us at the median, against 50 us when one thread
//!   (or one tokio task) read every request and was woken on the other CPU each time
//!   (`bench/README.md`). For large payloads the next one is received while this one is
//!   copied.
//!
//! After a turn that read a large payload, the next header is read alone, not by filling
//! the receive buffer, so that the payload behind it is not copied twice
//! ([`Conn::wait_for_request`]).
//!
//! A thread that finds nothing to read polls the socket for a short while before it sleeps
//! in `recv` ([`crate::busy_poll`]), so a client at a steady pace rarely has to wake it.
//!
//! Payload in flight is bounded per connection by a semaphore counted in bytes: a thread
//! that finds it spent waits, holding the read side, so a flooding client waits on TCP. It
//! never waits while holding requests it has read, whose replies may be what frees it.

use std::future::Future;
use std::io::{BufRead, BufReader, Chain, Cursor, IoSlice, Read, Write};
use std::net::Shutdown;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tracing::{debug, warn};

use crate::busy_poll::PolledStream;
use crate::consts::REQUEST_HEADER_LEN;
use crate::device::BlockDevice;
use crate::errno::RequestError;
use crate::handshake::Negotiated;
use crate::pool::BufferPool;
use crate::receive::receive_into_blocking;
use crate::request::{decode_header, validate, Command, CommandKind, Limits, RequestHeader};
use crate::server::{ConnError, Server};
use crate::socket::Stream;
use crate::work::{self, Frame, Job, WriteData, LARGE_PAYLOAD, MAX_BATCH, READ_BUFFER, REQUEST_OVERHEAD};

/// Once the readers have stopped, how long unsent replies may take to go out: shorter when
/// the server is shutting down, so a client that stops reading cannot hold it up.
const CLOSE_GRACE: Duration = Duration::from_secs(60);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A wait for the next request this long or longer means the client is idle between
/// requests (low queue depth), or the thread was woken slowly: it hands the read side to
/// the next one before it runs what it read. Measured on the development VM (2 vCPUs,
/// relaxed, 5 s each; 4 KiB writes at depth 1 / reads at depth 32, IOPS): 8 us 55k/191k,
/// 20 us 61k/192k, 60 us 69k/212k, 200 us 29k/204k, 1 ms 19k/208k. Above the ~50 us a
/// wake-up on an idle vCPU costs there, a thread alone keeps reading at depth 1 and pays
/// it on every request.
const IDLE_WAIT: Duration = Duration::from_micros(60);

/// The read side: the bytes negotiation had already buffered, then the socket.
type Input = BufReader<Chain<Cursor<Vec<u8>>, PolledStream>>;
/// A request header's bytes.
type Header = [u8; REQUEST_HEADER_LEN];

/// A request read in a turn, to run once the turn is over.
struct Taken {
    /// A payload of [`LARGE_PAYLOAD`] or more.
    large: bool,
    job: Job,
    cookie: u64,
    permit: OwnedSemaphorePermit,
}

struct Conn<D> {
    device: Arc<D>,
    pool: Arc<BufferPool>,
    limits: Limits,
    budget: Arc<Semaphore>,
    rt: Handle,
    input: Mutex<Input>,
    output: Mutex<Stream>,
    /// Replies waiting for the thread that holds `output`.
    queued: Mutex<Vec<Frame>>,
    /// Kept to shut the socket down.
    socket: Stream,
    /// No more requests are read: the client left or sent DISC, the server is stopping,
    /// or the connection failed.
    closing: AtomicBool,
    /// A reply could not be written; later replies are dropped.
    dead: AtomicBool,
    /// The first error that ends the connection.
    error: Mutex<Option<ConnError>>,
    /// Threads still taking turns; the last one out notifies `readers_done`.
    readers: AtomicUsize,
    readers_done: Notify,
    /// Requests that wait, for the reply thread.
    waiting: Arc<Waiting>,
}

/// Serve a negotiated connection on `threads` threads; `held` is what negotiation's reader
/// had already buffered past the last option.
pub(crate) async fn run<D: BlockDevice>(
    server: Arc<Server<D>>,
    neg: Negotiated,
    held: Vec<u8>,
    stream: Stream,
    threads: usize,
) -> Result<(), ConnError> {
    let export = &server.exports()[neg.export];
    let limits = server.limits(&neg);
    debug!(export = %export.name, ?limits, threads, "transmission");
    let conn = Arc::new(Conn {
        device: Arc::clone(&export.device),
        pool: Arc::clone(server.pool()),
        limits,
        budget: Arc::new(Semaphore::new(server.config().inflight_bytes)),
        rt: Handle::current(),
        input: Mutex::new(BufReader::with_capacity(
            READ_BUFFER,
            Cursor::new(held).chain(PolledStream::new(stream.try_clone()?, server.config().busy_poll)),
        )),
        output: Mutex::new(stream.try_clone()?),
        queued: Mutex::new(Vec::new()),
        socket: stream,
        closing: AtomicBool::new(false),
        dead: AtomicBool::new(false),
        error: Mutex::new(None),
        readers: AtomicUsize::new(threads),
        readers_done: Notify::new(),
        waiting: Arc::default(),
    });

    let (done_tx, mut done_rx) = oneshot::channel::<()>();
    let replier = Arc::clone(&conn);
    std::thread::Builder::new().name("nbd-reply".into()).spawn(move || {
        let _ending = Ending(&replier);
        // Requests that wait use tokio's timers and I/O from this thread.
        let _rt = replier.rt.enter();
        finish_waiting(&replier);
        let _ = done_tx.send(());
    })?;
    for _ in 0..threads {
        let c = Arc::clone(&conn);
        if let Err(e) = std::thread::Builder::new().name("nbd-conn".into()).spawn(move || take_turns(&c)) {
            // The threads already started serve the connection; with none, it closes.
            warn!(error = %e, "starting a connection thread");
            conn.reader_left();
        }
    }

    let mut stop = server.shutdown_signal();
    tokio::select! {
        _ = conn.readers_done.notified() => {}
        _ = stop.wait_for(|s| *s) => {
            conn.closing.store(true, Ordering::Release);
            conn.socket.shutdown(Shutdown::Read);
        }
    }
    // Requests already read finish and their replies are written before the close, unless
    // the client will not take them.
    let grace = if *stop.borrow() { SHUTDOWN_GRACE } else { CLOSE_GRACE };
    let timed_out = tokio::time::timeout(grace, &mut done_rx).await.is_err();
    if timed_out {
        conn.socket.shutdown(Shutdown::Both);
        let _ = done_rx.await;
    }
    // The reply thread ends last, unless it panicked: then the threads still reading, woken
    // by the socket's shutdown, are waited for.
    if conn.readers.load(Ordering::Acquire) > 0 {
        conn.readers_done.notified().await;
    }
    let error = conn.error.lock().take();
    match error {
        // The shutdown that ended the wait makes the blocked write fail too.
        _ if timed_out => Err(ConnError::Protocol("client stopped reading replies; connection dropped")),
        // A server stop cut a payload short: that is the stop, not a broken connection.
        Some(ConnError::Io(e)) if *stop.borrow() => {
            debug!(error = %e, "connection stopped mid-request");
            Ok(())
        }
        Some(e) => {
            warn!(error = %e, "closing connection");
            Err(e)
        }
        None => Ok(()),
    }
}

/// One thread's life: read in turn, run what it read, reply, until the connection closes.
fn take_turns<D: BlockDevice>(conn: &Conn<D>) {
    let _rt = conn.rt.enter();
    // Counted out however the thread ends, a panicking device included, so the connection
    // still closes.
    let _leaving = Leaving(conn);
    let _ending = Ending(conn);
    let mut taken: Vec<Taken> = Vec::with_capacity(MAX_BATCH);
    let mut frames: Vec<Frame> = Vec::with_capacity(MAX_BATCH);
    'turns: while !conn.closing.load(Ordering::Acquire) {
        let mut input = conn.input.lock();
        loop {
            if conn.closing.load(Ordering::Acquire) {
                break 'turns;
            }
            let (waited, first) = match conn.wait_for_request(&mut input) {
                Ok(w) => w,
                Err(e) => {
                    conn.fail(e.into());
                    break 'turns;
                }
            };
            match conn.read_turn(&mut input, first, &mut taken, &mut frames) {
                Ok(true) => {}
                Ok(false) => conn.closing.store(true, Ordering::Release),
                Err(e) => conn.fail(e),
            }
            let large = taken.iter().any(|t| t.large);
            input.get_mut().get_mut().1.set_bulk(large);
            // While requests come faster than IDLE_WAIT apart, the turn is kept: one thread
            // reading, running and replying in batches costs less than handing the socket
            // over. Large payloads are let go, so the next one is received while this one
            // is copied.
            let busy = waited < IDLE_WAIT && !large;
            if !busy {
                drop(input);
                conn.run(&mut taken, &mut frames, None);
                continue 'turns;
            }
            // The turn is kept only while the replies go out without waiting: a client that
            // is slow to read them must not stop the reading of its requests.
            match conn.run(&mut taken, &mut frames, Some(input)) {
                Some(kept) => input = kept,
                None => continue 'turns,
            }
        }
    }
}

struct Leaving<'a, D>(&'a Conn<D>);

impl<D> Drop for Leaving<'_, D> {
    fn drop(&mut self) {
        self.0.reader_left();
    }
}

/// Ends the connection if a thread of it panics: the requests it held will never be
/// answered, so the client must not wait for them.
struct Ending<'a, D>(&'a Conn<D>);

impl<D> Drop for Ending<'_, D> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail(ConnError::Protocol("a connection thread panicked"));
            self.0.socket.shutdown(Shutdown::Both);
        }
    }
}

/// A request that has to wait in the device (a FLUSH, a strict-mode write), run to
/// completion on the connection's reply thread.
type Pending = Pin<Box<dyn Future<Output = Frame> + Send>>;

/// The reply thread's inbox, shared with the connection threads and the wakers.
#[derive(Default)]
struct Waiting {
    inbox: Mutex<Inbox>,
    /// The reply thread, once it runs.
    thread: OnceLock<Thread>,
}

#[derive(Default)]
struct Inbox {
    /// Requests handed over by the connection threads, not polled by the reply thread yet.
    new: Vec<Pending>,
    /// Slots of requests whose waker fired.
    woken: Vec<usize>,
    /// Replies of the requests that ran as tokio tasks, and how many of those still run.
    done: Vec<Frame>,
    spawned: usize,
    /// Every connection thread has stopped: no request comes any more.
    closed: bool,
}

impl Waiting {
    fn push(&self, f: impl FnOnce(&mut Inbox)) {
        f(&mut self.inbox.lock());
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// Wakes the reply thread to poll the request in `slot` again.
struct SlotWaker {
    slot: usize,
    waiting: Arc<Waiting>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.waiting.push(|i| i.woken.push(self.slot));
    }
}

/// The connection's reply thread: polls the requests that had to wait whenever their
/// wakers fire, and writes the replies of those that are done at once, in one batch, with
/// those of the reads that ran as tokio tasks, until the connection threads have stopped
/// and every request has its reply. The waker runs on the thread that completes the wait
/// (the WAL writer publishing a sync, say), so a reply takes one thread wake-up to go out,
/// not two (a tokio task, then this thread). A request that panics here loses its reply,
/// so it ends the connection; the others still finish, giving back their budget.
fn finish_waiting<D>(conn: &Conn<D>) {
    let waiting = &conn.waiting;
    // Anything pushed before this is found in the inbox below.
    let _ = waiting.thread.set(std::thread::current());
    let mut slots: Vec<Option<(Pending, Waker)>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut frames: Vec<Frame> = Vec::with_capacity(MAX_BATCH);
    // Swapped with the inbox's each round, so neither side allocates again.
    let (mut new, mut woken, mut done) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        let running = {
            let mut i = waiting.inbox.lock();
            std::mem::swap(&mut i.new, &mut new);
            std::mem::swap(&mut i.woken, &mut woken);
            std::mem::swap(&mut i.done, &mut done);
            !i.closed || i.spawned > 0
        };
        if new.is_empty() && woken.is_empty() && done.is_empty() {
            if !running && free.len() == slots.len() {
                return;
            }
            // An unpark since the inbox was emptied makes this return at once.
            std::thread::park();
            continue;
        }
        frames.append(&mut done);
        // A new request is polled like a woken one.
        for work in new.drain(..) {
            let slot = free.pop().unwrap_or_else(|| {
                slots.push(None);
                slots.len() - 1
            });
            let waker = Waker::from(Arc::new(SlotWaker { slot, waiting: Arc::clone(waiting) }));
            slots[slot] = Some((work, waker));
            woken.push(slot);
        }
        for slot in woken.drain(..) {
            // A slot done already (a late or repeated wake-up) is skipped; one reused since
            // is polled once for nothing.
            let Some((work, waker)) = slots.get_mut(slot).and_then(Option::as_mut) else { continue };
            let cx = &mut Context::from_waker(waker);
            match std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
                Ok(Poll::Pending) => continue,
                Ok(Poll::Ready(frame)) => frames.push(frame),
                Err(_) => {
                    conn.fail(ConnError::Protocol("a request panicked"));
                    conn.socket.shutdown(Shutdown::Both);
                }
            }
            slots[slot] = None;
            free.push(slot);
        }
        if !frames.is_empty() {
            conn.reply(&mut frames, None);
        }
    }
}

/// What a request costs of the budget: its payload, if it is a READ or WRITE that will run,
/// and the fixed overhead.
fn need(checked: &Result<Command, RequestError>) -> u32 {
    REQUEST_OVERHEAD + checked.as_ref().map_or(0, Command::payload)
}

impl<D: BlockDevice> Conn<D> {
    /// Wait until the socket has bytes for the next request, or the stream ends; how long
    /// the wait was, and the next request's header if it was read on its own.
    ///
    /// After requests with large payloads the header is read alone, straight from the
    /// socket: filling the buffer would take up to [`READ_BUFFER`] of the payload behind it,
    /// which would then be copied a second time, from the buffer into the device's memory.
    /// Otherwise the buffer is filled, so that a run of small requests costs one read.
    fn wait_for_request(&self, input: &mut Input) -> std::io::Result<(Duration, Option<Header>)> {
        if !input.buffer().is_empty() {
            return Ok((Duration::ZERO, None));
        }
        let start = Instant::now();
        if input.get_ref().get_ref().1.bulk() {
            let mut hdr = [0u8; REQUEST_HEADER_LEN];
            return match input.get_mut().read_exact(&mut hdr) {
                Ok(()) => Ok((start.elapsed(), Some(hdr))),
                // The stream ended: `read_turn` finds that out from the empty buffer.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok((start.elapsed(), None)),
                Err(e) => Err(e),
            };
        }
        loop {
            match input.fill_buf() {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
                Ok(_) => return Ok((start.elapsed(), None)),
            }
        }
    }

    /// Run the requests of a turn and send the replies of those that are done. With the
    /// read side held, it is given back unless sending would have had to wait.
    fn run<'a>(
        &'a self,
        taken: &mut Vec<Taken>,
        frames: &mut Vec<Frame>,
        input: Option<MutexGuard<'a, Input>>,
    ) -> Option<MutexGuard<'a, Input>> {
        for t in taken.drain(..) {
            let structured = self.limits.structured;
            let (device, pool) = (Arc::clone(&self.device), Arc::clone(&self.pool));
            // A read that waits (for the backend) has CPU work to do after the wait, such
            // as decompressing a chunk frame: that runs on tokio's workers, not on the one
            // reply thread of the connection.
            let heavy = matches!(t.job, Job::Read { .. } | Job::Cache { .. });
            let mut work = Box::pin(work::run(device, pool, t.job, t.cookie, structured, t.permit));
            // A request that must wait is polled again, by the reply thread or a tokio task,
            // so nothing registered with the no-op waker is missed.
            match work.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(frame) => frames.push(frame),
                Poll::Pending if heavy => {
                    let waiting = Arc::clone(&self.waiting);
                    waiting.push(|i| i.spawned += 1);
                    self.rt.spawn(async move {
                        let frame = work.await;
                        waiting.push(|i| {
                            i.done.push(frame);
                            i.spawned -= 1;
                        });
                    });
                }
                Poll::Pending => self.waiting.push(|i| i.new.push(work)),
            }
        }
        if frames.is_empty() {
            return input;
        }
        self.reply(frames, input)
    }

    /// Read requests while it is this thread's turn: the next one, waiting for it and its
    /// budget, then every further one whose header is already buffered and whose budget is
    /// free, up to a batch. It never waits for budget while holding requests: their replies
    /// may be what frees it. `Ok(false)` once the client is done.
    fn read_turn(
        &self,
        input: &mut Input,
        first: Option<Header>,
        taken: &mut Vec<Taken>,
        frames: &mut Vec<Frame>,
    ) -> Result<bool, ConnError> {
        let mut hdr = [0u8; REQUEST_HEADER_LEN];
        match first {
            Some(h) => hdr = h,
            None => match input.read_exact(&mut hdr) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
                Err(e) => return Err(e.into()),
            },
        }
        let mut h = decode_header(&hdr)?;
        let mut checked = validate(&h, &self.limits);
        let mut permit = self.acquire(need(&checked))?;
        loop {
            if !self.take(input, &h, checked, permit, taken, frames)? {
                return Ok(false);
            }
            if taken.len() + frames.len() >= MAX_BATCH {
                return Ok(true);
            }
            let Some(next) = input.buffer().get(..REQUEST_HEADER_LEN) else {
                return Ok(true);
            };
            hdr.copy_from_slice(next);
            h = decode_header(&hdr)?;
            checked = validate(&h, &self.limits);
            match Arc::clone(&self.budget).try_acquire_many_owned(need(&checked)) {
                Ok(p) => permit = p,
                // Left in the buffer for the next turn, which may wait for it.
                Err(_) => return Ok(true),
            }
            input.consume(REQUEST_HEADER_LEN);
        }
    }

    /// Take one request whose header was read: receive its payload and queue its job, or
    /// queue the error reply of a refused one. `Ok(false)` for DISC.
    fn take(
        &self,
        input: &mut Input,
        h: &RequestHeader,
        checked: Result<Command, RequestError>,
        permit: OwnedSemaphorePermit,
        taken: &mut Vec<Taken>,
        frames: &mut Vec<Frame>,
    ) -> Result<bool, ConnError> {
        let cmd = match checked {
            Ok(cmd) => cmd,
            Err(e) => {
                debug!(cookie = h.cookie, error = %e, "request refused");
                if h.kind == CommandKind::Write {
                    // The payload follows whatever we think of it; skip it without buffering.
                    let n = std::io::copy(&mut input.by_ref().take(u64::from(h.len)), &mut std::io::sink())?;
                    if n < u64::from(h.len) {
                        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                    }
                }
                let mut frame = Frame::error(h.cookie, self.limits.structured, e.errno(), &e.to_string());
                frame.permit = Some(permit);
                frames.push(frame);
                return Ok(true);
            }
        };
        let large = cmd.payload() >= LARGE_PAYLOAD;
        let job = match cmd {
            // A payload larger than the buffer is read straight into its own: the device's
            // memory if it lends some, else a pooled buffer.
            Command::Write { offset, len, fua } => match self.device.write_buffer(offset, len) {
                Some(mut buf) => {
                    receive_into_blocking(input, buf.slices_mut())?;
                    Job::Write { offset, data: WriteData::Device(buf), fua }
                }
                None => {
                    let mut data = self.pool.get(len as usize);
                    input.read_exact(&mut data)?;
                    Job::Write { offset, data: WriteData::Pooled(data), fua }
                }
            },
            other => match Job::without_payload(other) {
                Some(job) => job,
                None => return Ok(false),
            },
        };
        taken.push(Taken { large, job, cookie: h.cookie, permit });
        Ok(true)
    }

    /// `n` bytes of budget, waiting for replies to free them if need be.
    fn acquire(&self, n: u32) -> Result<OwnedSemaphorePermit, ConnError> {
        let budget = Arc::clone(&self.budget);
        match budget.try_acquire_many_owned(n) {
            Ok(p) => Ok(p),
            Err(TryAcquireError::NoPermits) => {
                let budget = Arc::clone(&self.budget);
                self.rt.block_on(budget.acquire_many_owned(n)).map_err(|_| ConnError::Protocol("budget closed"))
            }
            Err(TryAcquireError::Closed) => Err(ConnError::Protocol("budget closed")),
        }
    }
}

impl<D> Conn<D> {
    /// Send `frames` (taking them): queue them, and write everything queued unless another
    /// thread is writing, which then writes them too before it lets go. Under load replies
    /// go out in batches; alone, a thread writes its own reply at once.
    ///
    /// A thread holding the read side (`input`) sends without waiting; if the socket is
    /// full it lets go of the read side, so requests go on being read, and then waits.
    fn reply<'a>(
        &'a self,
        frames: &mut Vec<Frame>,
        mut input: Option<MutexGuard<'a, Input>>,
    ) -> Option<MutexGuard<'a, Input>> {
        self.queued.lock().append(frames);
        while let Some(mut out) = self.output.try_lock() {
            let batch = std::mem::take(&mut *self.queued.lock());
            if batch.is_empty() {
                break;
            }
            if !self.dead.load(Ordering::Acquire) {
                self.write(&mut out, &batch, &mut input);
            }
            drop(out);
            // Replies queued while this thread wrote, by a thread that found it busy.
            if self.queued.lock().is_empty() {
                break;
            }
        }
        input
    }

    fn write(&self, out: &mut Stream, batch: &[Frame], input: &mut Option<MutexGuard<'_, Input>>) {
        let mut slices = work::slices(batch);
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let sent = match input {
                Some(_) => out.send_now(rest),
                None => out.write_vectored(rest),
            };
            match sent {
                Ok(0) => return self.died(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => *input = None,
                Err(e) => return self.died(e),
            }
        }
    }

    /// A reply could not be written: the connection is over.
    fn died(&self, e: std::io::Error) {
        self.dead.store(true, Ordering::Release);
        self.fail(e.into());
        // Wake a thread waiting for a request that will never be answered.
        self.socket.shutdown(Shutdown::Both);
    }

    fn fail(&self, e: ConnError) {
        self.closing.store(true, Ordering::Release);
        self.error.lock().get_or_insert(e);
    }

    fn reader_left(&self) {
        if self.readers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.waiting.push(|i| i.closed = true);
            self.readers_done.notify_one();
        }
    }
}

#[cfg(test)]
mod tests;
