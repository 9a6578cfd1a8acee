//! The connections of one store. A server that advertises
//! `NBD_FLAG_CAN_MULTI_CONN` gets up to [`MAX_CONNECTIONS`]; any other
//! server gets the one connection the store was opened with. Each
//! connection carries many requests at once, so a request never waits
//! for a connection: it takes the least busy one.
//!
//! Extra connections are opened lazily, when a request finds every open
//! one busy, and in the background: the request goes out on a busy
//! connection meanwhile, so a server that accepts but never answers (one
//! at its client limit) delays nothing. A connection that fails to open,
//! or sees the export differently, stops the growing.
//!
//! A broken connection is dropped and not replaced: the requests that saw
//! the failure reported it. Once none is left, every request fails, unless
//! the node asks for `reconnect-delay`: then the store replaces the lost
//! connections ([`Pool::reconnect`]) and runs the failed requests again.

use crate::conn::Conn;
use crate::error::{NbdError, Result};
use crate::handshake::Export;
use crate::wire::tx_flags;
use std::ops::Deref;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Most connections one store opens to a multi-conn server.
pub const MAX_CONNECTIONS: usize = 4;
/// Time between two attempts to connect, as qemu waits between them.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Runs `attempt` until it succeeds, fails in a way `retry` does not
/// accept, or `deadline` passes, waiting [`RETRY_INTERVAL`] between tries
/// (`open-timeout`, `reconnect-delay`); returns the last outcome.
pub fn retry_until<T>(
    deadline: Instant,
    retry: impl Fn(&NbdError) -> bool,
    mut attempt: impl FnMut() -> Result<T>,
) -> Result<T> {
    loop {
        match attempt() {
            Err(e) if retry(&e) && Instant::now() < deadline => {
                let left = deadline.saturating_duration_since(Instant::now());
                std::thread::sleep(left.min(RETRY_INTERVAL));
            }
            done => return done,
        }
    }
}

/// Opens one more connection to the same export.
pub type Connector = Box<dyn Fn() -> Result<Conn> + Send + Sync>;

/// A store's connections.
pub struct Pool {
    shared: Arc<Shared>,
}

/// Flushes a pool's connections from a thread that does not own the
/// pool; once the pool is dropped there is nothing left to flush.
#[derive(Clone)]
pub struct Flusher(Arc<Shared>);

impl Flusher {
    /// Flushes one connection that has written since its last flush, if
    /// one has: on a multi-conn server that one flush reaches every
    /// connection's completed writes.
    pub fn flush_one(&self) -> Result<()> {
        let lease = {
            let mut state = self.0.lock();
            state.prune();
            let Some(entry) = state.conns.iter_mut().find(|e| e.conn.is_dirty()) else {
                return Ok(());
            };
            entry.users += 1;
            Lease {
                pool: &self.0,
                conn: Arc::clone(&entry.conn),
            }
        };
        lease.flush()
    }
}

struct Shared {
    state: Mutex<State>,
    /// Signalled whenever a connection opens, fails to or goes away.
    changed: Condvar,
    connector: Connector,
    limit: usize,
    /// What the first connection negotiated; later ones must agree.
    first: Export,
}

struct State {
    conns: Vec<Entry>,
    /// Connections being opened.
    opening: usize,
    /// False once opening one failed or a connection broke.
    growable: bool,
    /// Set when the pool is dropped: a connection that finishes opening
    /// afterwards is closed at once.
    closed: bool,
    /// A thread is replacing the broken connections ([`Pool::reconnect`]).
    reconnecting: bool,
}

struct Entry {
    conn: Arc<Conn>,
    /// Leases out on it.
    users: usize,
}

impl State {
    /// Forgets broken connections (their last user closes them).
    fn prune(&mut self) {
        let before = self.conns.len();
        self.conns.retain(|entry| !entry.conn.is_broken());
        if self.conns.len() != before {
            self.growable = false;
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is consistent at every unlock, so a panic elsewhere
        // while it was held left nothing half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens one more connection and adds it to the pool.
    fn grow(&self) {
        let opened = (self.connector)().and_then(|conn| {
            if self.agrees(conn.export()) {
                Ok(conn)
            } else {
                drop(conn);
                Err(NbdError::Protocol(
                    "a new connection saw the export differently".into(),
                ))
            }
        });
        let mut state = self.lock();
        state.opening -= 1;
        match opened {
            Ok(conn) if !state.closed => state.conns.push(Entry {
                conn: Arc::new(conn),
                users: 0,
            }),
            Ok(conn) => {
                drop(state);
                drop(conn);
                return;
            }
            Err(_) => state.growable = false,
        }
        drop(state);
        self.changed.notify_all();
    }

    fn agrees(&self, export: &Export) -> bool {
        let first = &self.first;
        export.size == first.size
            && export.flags == first.flags
            && export.structured == first.structured
            && export.allocation.is_some() == first.allocation.is_some()
            && export.block == first.block
    }

    /// [`Pool::flush`].
    fn flush(&self) -> Result<()> {
        let leases: Vec<Lease<'_>> = {
            let mut state = self.lock();
            state.prune();
            let dirty = state.conns.iter().any(|e| e.conn.is_dirty());
            let mut leases = Vec::new();
            for entry in state.conns.iter_mut() {
                if (dirty && entry.conn.is_dirty()) || (!dirty && leases.is_empty()) {
                    entry.users += 1;
                    leases.push(Lease {
                        pool: self,
                        conn: Arc::clone(&entry.conn),
                    });
                }
            }
            leases
        };
        if leases.is_empty() {
            return Err(NbdError::Closed);
        }
        leases.iter().try_for_each(|lease| lease.flush())
    }

    /// Ends a lease on `conn`.
    fn put_back(&self, conn: &Arc<Conn>) {
        let mut state = self.lock();
        if let Some(entry) = state.conns.iter_mut().find(|e| Arc::ptr_eq(&e.conn, conn)) {
            entry.users -= 1;
        }
        state.prune();
    }
}

impl Pool {
    /// A pool starting with `first`, growing with `connector` if the
    /// server allows several connections.
    pub fn new(first: Conn, connector: Connector) -> Pool {
        let export = *first.export();
        let limit = if export.has(tx_flags::CAN_MULTI_CONN) {
            MAX_CONNECTIONS
        } else {
            1
        };
        Pool {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    conns: vec![Entry {
                        conn: Arc::new(first),
                        users: 0,
                    }],
                    opening: 0,
                    growable: true,
                    closed: false,
                    reconnecting: false,
                }),
                changed: Condvar::new(),
                connector,
                limit,
                first: export,
            }),
        }
    }

    /// How many connections the pool may open.
    pub fn limit(&self) -> usize {
        self.shared.limit
    }

    /// The least busy connection for a request; starts opening another
    /// if every one is busy and the server allows more.
    pub fn get(&self) -> Result<Lease<'_>> {
        let shared = &*self.shared;
        let mut state = shared.lock();
        loop {
            state.prune();
            let best = (0..state.conns.len()).min_by_key(|&i| state.conns[i].users);
            let busy = best.is_none_or(|i| state.conns[i].users > 0);
            let open = state.conns.len() + state.opening;
            if busy && open < shared.limit && state.growable && !state.closed {
                state.opening += 1;
                let grower = Arc::clone(&self.shared);
                let spawned = std::thread::Builder::new()
                    .name("qimg-nbd-connect".into())
                    .spawn(move || grower.grow());
                if spawned.is_err() {
                    state.opening -= 1;
                    state.growable = false;
                }
            }
            if let Some(i) = best {
                let entry = &mut state.conns[i];
                entry.users += 1;
                return Ok(Lease {
                    pool: shared,
                    conn: Arc::clone(&entry.conn),
                });
            }
            if state.opening == 0 {
                return Err(NbdError::Closed);
            }
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Flushes every connection that has written since its last flush
    /// (each after the writes issued on it before), or one connection if
    /// none has.
    pub fn flush(&self) -> Result<()> {
        self.shared.flush()
    }

    /// A handle that flushes this pool from another thread.
    pub fn flusher(&self) -> Flusher {
        Flusher(Arc::clone(&self.shared))
    }

    /// Once every connection broke: opens a new one, trying once a second
    /// until `deadline`, unless another thread does it meanwhile
    /// (`reconnect-delay`). Fails with the last attempt's error.
    pub fn reconnect(&self, deadline: Instant) -> Result<()> {
        let shared = &*self.shared;
        let mut state = shared.lock();
        loop {
            state.prune();
            if !state.conns.is_empty() {
                return Ok(());
            }
            if state.closed {
                return Err(NbdError::Closed);
            }
            if !state.reconnecting {
                break;
            }
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.reconnecting = true;
        drop(state);
        let opened = retry_until(deadline, |_| true, || (shared.connector)()).and_then(|conn| {
            if shared.agrees(conn.export()) {
                Ok(conn)
            } else {
                Err(NbdError::Protocol(
                    "a new connection saw the export differently".into(),
                ))
            }
        });
        let mut state = shared.lock();
        state.reconnecting = false;
        let result = opened.map(|conn| {
            state.conns.push(Entry {
                conn: Arc::new(conn),
                users: 0,
            })
        });
        drop(state);
        shared.changed.notify_all();
        result
    }

    /// Connections open now (broken ones that still have users included).
    pub fn open_connections(&self) -> usize {
        self.shared.lock().conns.len()
    }

    /// Waits until no connection is being opened.
    pub fn settle(&self) {
        let mut state = self.shared.lock();
        while state.opening > 0 {
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Leases borrow the pool: none is out, so the connections close
        // (NBD_CMD_DISC) as they drop here.
        let conns: Vec<Entry> = {
            let mut state = self.shared.lock();
            state.closed = true;
            state.conns.drain(..).collect()
        };
        drop(conns);
    }
}

/// A connection lent to one request (others may share it); returned on
/// drop.
pub struct Lease<'a> {
    pool: &'a Shared,
    conn: Arc<Conn>,
}

impl Deref for Lease<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.pool.put_back(&self.conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::BlockSizes;
    use crate::socket::{Link, Stream};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn export(flags: u16) -> Export {
        Export {
            size: 1 << 20,
            flags: tx_flags::HAS_FLAGS | flags,
            structured: true,
            allocation: Some(1),
            block: BlockSizes::default(),
        }
    }

    /// A connection whose server end is returned (drop it to hang up).
    fn conn(flags: u16) -> (Conn, UnixStream) {
        let (client, server) = UnixStream::pair().unwrap();
        let link = Link::new(Stream::Unix(client), Duration::from_secs(5)).unwrap();
        (Conn::new(link, export(flags)), server)
    }

    /// A connector that counts its calls and hands out connections (or
    /// fails, if `fail`); the server ends are kept open in `ends`.
    fn connector(flags: u16, fail: bool, calls: Arc<AtomicUsize>) -> Connector {
        let ends = Mutex::new(Vec::new());
        Box::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            if fail {
                return Err(NbdError::Closed);
            }
            let (c, end) = conn(flags);
            ends.lock().unwrap().push(end);
            Ok(c)
        })
    }

    #[test]
    fn one_connection_without_multi_conn() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (first, _end) = conn(0);
        let pool = Pool::new(first, connector(0, false, calls.clone()));
        assert_eq!(pool.limit(), 1);
        // Requests share the one connection rather than wait for it.
        let a = pool.get().unwrap();
        let b = pool.get().unwrap();
        assert!(std::ptr::eq(&*a, &*b));
        drop((a, b));
        pool.settle();
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(pool.open_connections(), 1);
    }

    #[test]
    fn multi_conn_grows_when_busy_and_only_then() {
        let calls = Arc::new(AtomicUsize::new(0));
        let flags = tx_flags::CAN_MULTI_CONN;
        let (first, _end) = conn(flags);
        let pool = Pool::new(first, connector(flags, false, calls.clone()));
        assert_eq!(pool.limit(), MAX_CONNECTIONS);
        // One user at a time: the one connection is enough.
        for _ in 0..10 {
            drop(pool.get().unwrap());
        }
        pool.settle();
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        // All busy: more are opened, up to the limit, and then used.
        let leases: Vec<_> = (0..2 * MAX_CONNECTIONS)
            .map(|_| pool.get().unwrap())
            .collect();
        pool.settle();
        assert_eq!(calls.load(Ordering::SeqCst), MAX_CONNECTIONS - 1);
        assert_eq!(pool.open_connections(), MAX_CONNECTIONS);
        drop(leases);
        let again: Vec<_> = (0..MAX_CONNECTIONS).map(|_| pool.get().unwrap()).collect();
        for (i, a) in again.iter().enumerate() {
            for b in &again[i + 1..] {
                assert!(!std::ptr::eq(&**a, &**b), "the least busy one is taken");
            }
        }
        pool.settle();
        assert_eq!(calls.load(Ordering::SeqCst), MAX_CONNECTIONS - 1);
    }

    /// Takes two connections at once, twice, from a multi-conn pool whose
    /// new connections `connector(new_flags, fail, ..)` makes: returns how
    /// many it tried to open and how many it holds then.
    fn two_rounds_of_two(new_flags: u16, fail: bool) -> (usize, usize) {
        let calls = Arc::new(AtomicUsize::new(0));
        let (first, _end) = conn(tx_flags::CAN_MULTI_CONN);
        let pool = Pool::new(first, connector(new_flags, fail, calls.clone()));
        let a = pool.get().unwrap();
        let b = pool.get().unwrap();
        pool.settle();
        drop((a, b));
        let _c = pool.get().unwrap();
        let _d = pool.get().unwrap();
        pool.settle();
        (calls.load(Ordering::SeqCst), pool.open_connections())
    }

    #[test]
    fn a_failed_open_stops_growing_but_not_serving() {
        assert_eq!(two_rounds_of_two(tx_flags::CAN_MULTI_CONN, true), (1, 1));
    }

    #[test]
    fn a_server_that_answers_differently_is_not_used() {
        // The new connections miss the multi-conn flag.
        assert_eq!(two_rounds_of_two(0, false), (1, 1));
    }

    #[test]
    fn when_the_last_connection_breaks_requests_fail_at_once() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (first, end) = conn(tx_flags::SEND_FLUSH);
        let pool = Pool::new(first, connector(0, false, calls.clone()));
        drop(end);
        let lease = pool.get().unwrap();
        assert!(lease.flush().is_err());
        assert!(lease.is_broken());
        // Broken: no longer handed out, though a lease still holds it.
        assert!(matches!(pool.get().map(|_| ()), Err(NbdError::Closed)));
        drop(lease);
        assert!(matches!(pool.get().map(|_| ()), Err(NbdError::Closed)));
        assert!(matches!(pool.flush(), Err(NbdError::Closed)));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }
}
