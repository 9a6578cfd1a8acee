//! A pool of keep-alive connections to one URL, so that parallel readers
//! get parallel requests, and the retry of a request that met a connection
//! the server had closed meanwhile.

use crate::conn::Conn;
use crate::error::HttpError;
use crate::options::ProxyLogin;
use crate::request::Extra;
use crate::url::Url;
use rustls::ClientConfig;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The most connections a store opens at once.
pub const MAX_CONNECTIONS: usize = 4;

/// Where requests go and how.
#[derive(Clone)]
pub struct Target {
    /// The URL after redirects.
    pub url: Url,
    /// Cookie and credentials.
    pub extra: Extra,
    /// TLS configuration, for https.
    pub tls: Option<Arc<ClientConfig>>,
    /// How long a request may take.
    pub timeout: Option<Duration>,
    /// The proxy login the options give.
    pub proxy_login: ProxyLogin,
}

/// Connections to one [`Target`]: idle ones, and how many exist.
pub struct Pool {
    target: Target,
    /// The resource's length.
    size: u64,
    state: Mutex<State>,
    freed: Condvar,
}

struct State {
    idle: Vec<Conn>,
    open: usize,
}

/// A connection slot taken from the pool, given back on drop: the
/// connection goes back to the idle list if it can carry another request.
struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    /// The connection had carried a request before.
    reused: bool,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        match self.conn.take() {
            Some(conn) if conn.reusable() => state.idle.push(conn),
            _ => state.open -= 1,
        }
        drop(state);
        self.pool.freed.notify_one();
    }
}

impl Pool {
    /// A pool for `target`, a resource of `size` bytes, starting with
    /// `first` (the connection that probed it) if it can be reused.
    pub fn new(target: Target, size: u64, first: Option<Conn>) -> Pool {
        let idle: Vec<Conn> = first.into_iter().filter(Conn::reusable).collect();
        Pool {
            target,
            size,
            state: Mutex::new(State {
                open: idle.len(),
                idle,
            }),
            freed: Condvar::new(),
        }
    }

    /// The state; a panic elsewhere cannot leave it inconsistent.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An idle connection, a new one if fewer than [`MAX_CONNECTIONS`]
    /// exist, or else the next one freed.
    fn acquire(&self) -> Result<Lease<'_>, HttpError> {
        let mut state = self.lock();
        loop {
            if let Some(conn) = state.idle.pop() {
                return Ok(Lease {
                    pool: self,
                    conn: Some(conn),
                    reused: true,
                });
            }
            if state.open < MAX_CONNECTIONS {
                state.open += 1;
                drop(state);
                let mut lease = Lease {
                    pool: self,
                    conn: None,
                    reused: false,
                };
                lease.conn = Some(self.connect()?);
                return Ok(lease);
            }
            state = self.freed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn connect(&self) -> Result<Conn, HttpError> {
        let target = &self.target;
        Conn::connect(
            &target.url,
            target.tls.as_ref(),
            target.timeout,
            &target.proxy_login,
        )
    }

    /// Reads `buf.len()` (non-zero) bytes at `offset` with one request,
    /// sent again on a new connection if a kept-alive one turns out
    /// closed.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), HttpError> {
        let mut lease = self.acquire()?;
        let target = &self.target;
        loop {
            let Some(conn) = lease.conn.as_mut() else {
                return Err(HttpError::Range("no connection".into()));
            };
            match conn.get_range(&target.url, &target.extra, offset, buf, self.size) {
                Err(e) if lease.reused && e.is_stale() => {
                    lease.reused = false;
                    lease.conn = None;
                    lease.conn = Some(self.connect()?);
                }
                result => return result,
            }
        }
    }

    /// Connections open now (idle or busy).
    #[cfg(test)]
    pub fn open_connections(&self) -> usize {
        self.lock().open
    }
}
