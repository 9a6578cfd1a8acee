//! The connections of one store. A server that advertises
//! `NBD_FLAG_CAN_MULTI_CONN` gets up to [`MAX_CONNECTIONS`]; any other
//! server gets the one connection the store was opened with.
//!
//! Extra connections are opened lazily, when a request finds every open
//! one busy, and in the background: the request waits for whichever
//! connection comes free first, so a server that accepts but never
//! answers (one at its client limit) delays nothing. A connection that
//! fails to open, or sees the export differently, stops the growing.
//!
//! A broken connection is dropped and not replaced: the requests that saw
//! the failure reported it, and the store does not silently reconnect
//! behind them. Once none is left, every request fails.

use crate::conn::Conn;
use crate::error::{NbdError, Result};
use crate::handshake::Export;
use crate::wire::tx_flags;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

/// Most connections one store opens to a multi-conn server.
pub const MAX_CONNECTIONS: usize = 4;

/// Opens one more connection to the same export.
pub type Connector = Box<dyn Fn() -> Result<Conn> + Send + Sync>;

/// A store's connections.
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled whenever a connection comes free, opens or goes away.
    changed: Condvar,
    connector: Connector,
    limit: usize,
    /// What the first connection negotiated; later ones must agree.
    first: Export,
}

struct State {
    idle: Vec<Conn>,
    /// Connections lent out, idle or being opened.
    open: usize,
    /// False once opening one failed or a connection broke.
    growable: bool,
    /// Set when the pool is dropped: a connection that finishes opening
    /// afterwards is closed at once.
    closed: bool,
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
                conn.disconnect();
                Err(NbdError::Protocol(
                    "a new connection saw the export differently".into(),
                ))
            }
        });
        let mut state = self.lock();
        match opened {
            Ok(conn) if !state.closed => state.idle.push(conn),
            Ok(conn) => {
                state.open -= 1;
                drop(state);
                conn.disconnect();
                return;
            }
            Err(_) => {
                state.open -= 1;
                state.growable = false;
            }
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

    fn put_back(&self, conn: Conn) {
        let mut state = self.lock();
        if conn.is_broken() || state.closed {
            state.open -= 1;
            state.growable = false;
            drop(state);
            conn.disconnect();
        } else {
            state.idle.push(conn);
            drop(state);
        }
        self.changed.notify_all();
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
                    idle: vec![first],
                    open: 1,
                    growable: true,
                    closed: false,
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

    /// A connection for one request; waits while all are busy.
    pub fn get(&self) -> Result<Lease<'_>> {
        let shared = &*self.shared;
        let mut state = shared.lock();
        loop {
            if let Some(conn) = state.idle.pop() {
                return Ok(Lease {
                    pool: shared,
                    conn: Some(conn),
                });
            }
            if state.open == 0 {
                return Err(NbdError::Closed);
            }
            if state.open < shared.limit && state.growable {
                state.open += 1;
                let grower = Arc::clone(&self.shared);
                let spawned = std::thread::Builder::new()
                    .name("qimg-nbd-connect".into())
                    .spawn(move || grower.grow());
                if spawned.is_err() {
                    state.open -= 1;
                    state.growable = false;
                }
            }
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle: Vec<Conn> = {
            let mut state = self.shared.lock();
            state.closed = true;
            state.open -= state.idle.len();
            state.idle.drain(..).collect()
        };
        for conn in idle {
            conn.disconnect();
        }
    }
}

/// A connection lent to one request; it goes back to the pool on drop.
pub struct Lease<'a> {
    pool: &'a Shared,
    conn: Option<Conn>,
}

impl Deref for Lease<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
            .as_ref()
            .expect("a lease holds its connection until dropped")
    }
}

impl DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.put_back(conn);
        }
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
        std::thread::scope(|scope| {
            let lease = pool.get().unwrap();
            let waiter = scope.spawn(|| pool.get().map(|_| ()));
            std::thread::sleep(Duration::from_millis(100));
            assert!(!waiter.is_finished());
            drop(lease);
            waiter.join().unwrap().unwrap();
        });
        assert_eq!(calls.load(Ordering::SeqCst), 0);
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
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        // All busy: more are opened, up to the limit.
        let leases: Vec<_> = (0..MAX_CONNECTIONS).map(|_| pool.get().unwrap()).collect();
        assert_eq!(calls.load(Ordering::SeqCst), MAX_CONNECTIONS - 1);
        drop(leases);
        let again: Vec<_> = (0..MAX_CONNECTIONS).map(|_| pool.get().unwrap()).collect();
        assert_eq!(calls.load(Ordering::SeqCst), MAX_CONNECTIONS - 1);
        drop(again);
    }

    #[test]
    fn a_failed_open_stops_growing_but_not_serving() {
        let calls = Arc::new(AtomicUsize::new(0));
        let flags = tx_flags::CAN_MULTI_CONN;
        let (first, _end) = conn(flags);
        let pool = Pool::new(first, connector(flags, true, calls.clone()));
        std::thread::scope(|scope| {
            let lease = pool.get().unwrap();
            let waiter = scope.spawn(|| pool.get().map(|_| ()));
            std::thread::sleep(Duration::from_millis(100));
            drop(lease);
            waiter.join().unwrap().unwrap();
        });
        let _a = pool.get().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_server_that_answers_differently_is_not_used() {
        let calls = Arc::new(AtomicUsize::new(0));
        let flags = tx_flags::CAN_MULTI_CONN;
        let (first, _end) = conn(flags);
        // The new connections miss the multi-conn flag.
        let pool = Pool::new(first, connector(0, false, calls.clone()));
        std::thread::scope(|scope| {
            let lease = pool.get().unwrap();
            let waiter = scope.spawn(|| pool.get().map(|_| ()));
            std::thread::sleep(Duration::from_millis(100));
            drop(lease);
            waiter.join().unwrap().unwrap();
        });
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn when_the_last_connection_breaks_requests_fail_at_once() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (first, end) = conn(tx_flags::SEND_FLUSH);
        let pool = Pool::new(first, connector(0, false, calls.clone()));
        drop(end);
        std::thread::scope(|scope| {
            let mut lease = pool.get().unwrap();
            let waiter = scope.spawn(|| pool.get().map(|_| ()));
            std::thread::sleep(Duration::from_millis(100));
            assert!(lease.flush().is_err());
            drop(lease);
            assert!(matches!(waiter.join().unwrap(), Err(NbdError::Closed)));
        });
        assert!(matches!(pool.get().map(|_| ()), Err(NbdError::Closed)));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }
}
