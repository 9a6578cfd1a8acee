//! An open HTTP(S) resource: found with `HEAD` (following redirects), read
//! with byte-range `GET`s through a connection pool and a readahead cache.

use crate::cache::Cache;
use crate::conn::Conn;
use crate::error::{libc_errno, HttpError, MAX_REDIRECTS};
use crate::options::Options;
use crate::pool::{Pool, Target};
use crate::request::Extra;
use crate::tls;
use crate::url::{Scheme, Url};
use qimg_driver_api::{DriverError, Prealloc, StoreImpl, StoreRun};
use rustls::ClientConfig;
use std::sync::Arc;

/// The largest block a small read fetches into the cache, whatever
/// `readahead` says (larger reads go straight to the caller).
const MAX_READAHEAD: u64 = 8 << 20;
/// The most bytes one request asks for; larger reads are split.
const MAX_REQUEST: usize = 16 << 20;

/// A read-only store over HTTP(S).
pub struct HttpStore {
    /// The URL as given.
    name: String,
    size: u64,
    /// Bytes a small read fetches at least (0: no readahead).
    readahead: u64,
    pool: Pool,
    cache: Cache,
}

impl HttpStore {
    /// Opens the resource `options` name: `HEAD` requests, following up
    /// to [`MAX_REDIRECTS`] redirects, until one answers with the size
    /// and byte-range support.
    pub fn open(options: &Options) -> Result<HttpStore, HttpError> {
        let mut url = options.url.clone();
        let mut conn: Option<Conn> = None;
        let mut redirects = 0;
        loop {
            let tls = tls_config(&url, options.sslverify)?;
            let mut current = match conn.take() {
                Some(c) if c.serves(&url) => c,
                _ => Conn::connect(&url, tls.as_ref(), options.timeout, &options.proxy_login)?,
            };
            let extra = extra_for(options, &url);
            let head = current.head(&url, &extra)?;
            let location = head.get("location").filter(|_| is_redirect(head.status));
            if let Some(location) = location {
                if redirects == MAX_REDIRECTS {
                    return Err(HttpError::Redirects);
                }
                redirects += 1;
                url = url.resolve(location)?;
                conn = Some(current);
                continue;
            }
            if head.status >= 400 {
                return Err(HttpError::Status(head.status));
            }
            let size = head.content_length()?.ok_or(HttpError::NoSize)?;
            if !head.accepts_ranges() {
                return Err(HttpError::NoRanges);
            }
            let target = Target {
                url,
                extra,
                tls,
                timeout: options.timeout,
                proxy_login: options.proxy_login.clone(),
            };
            return Ok(HttpStore {
                name: options.url_text.clone(),
                size,
                readahead: options.readahead.min(MAX_READAHEAD),
                pool: Pool::new(target, size, Some(current)),
                cache: Cache::default(),
            });
        }
    }

    /// Reads `buf.len()` bytes at `offset`, all inside the resource.
    fn fetch(&self, offset: u64, buf: &mut [u8]) -> Result<(), HttpError> {
        let len = buf.len() as u64;
        if len >= self.readahead {
            let mut at = offset;
            for piece in buf.chunks_mut(MAX_REQUEST) {
                self.pool.read(at, piece)?;
                at += piece.len() as u64;
            }
            return Ok(());
        }
        if self.cache.lookup(offset, buf) {
            return Ok(());
        }
        let block = self.readahead.min(self.size - offset) as usize;
        let mut data = self.cache.buffer(block);
        self.pool.read(offset, &mut data)?;
        buf.copy_from_slice(&data[..buf.len()]);
        self.cache.insert(offset, data);
        Ok(())
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn open_connections(&self) -> usize {
        self.pool.open_connections()
    }
}

/// True for the statuses a `Location` is followed for.
fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// The TLS configuration for `url`, if it is https.
fn tls_config(url: &Url, verify: bool) -> Result<Option<Arc<ClientConfig>>, HttpError> {
    match url.scheme {
        Scheme::Http => Ok(None),
        Scheme::Https => Ok(Some(tls::config(verify)?)),
    }
}

/// The headers for requests to `url`: the cookie always (as curl sends
/// it), credentials from `url` itself or, on the origin of the URL given,
/// the options' ones.
fn extra_for(options: &Options, url: &Url) -> Extra {
    let credentials = match &url.credentials {
        Some(credentials) => Some(credentials.clone()),
        None if url.same_origin(&options.url) => options.credentials.clone(),
        None => None,
    };
    Extra {
        cookie: options.cookie.clone(),
        credentials,
    }
}

/// The error of any change to a read-only store (QEMU's for a write to a
/// read-only node).
fn read_only() -> DriverError {
    DriverError::from_errno(libc_errno::EPERM, "Block node is read-only")
}

impl StoreImpl for HttpStore {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, DriverError> {
        if offset >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let len = (self.size - offset).min(buf.len() as u64) as usize;
        self.fetch(offset, &mut buf[..len])
            .map_err(|e| e.read_error())?;
        Ok(len)
    }

    fn write_at(&self, _offset: u64, _buf: &[u8]) -> Result<(), DriverError> {
        Err(read_only())
    }

    fn len(&self) -> Result<u64, DriverError> {
        Ok(self.size)
    }

    fn set_len(&self, _len: u64, _prealloc: Prealloc) -> Result<(), DriverError> {
        Err(read_only())
    }

    fn flush(&self) -> Result<(), DriverError> {
        Ok(())
    }

    fn write_zeroes(&self, _offset: u64, _len: u64, _punch: bool) -> Result<(), DriverError> {
        Err(read_only())
    }

    fn run_at(&self, offset: u64, max: u64) -> Result<StoreRun, DriverError> {
        Ok(StoreRun {
            data: true,
            length: max.min(self.size.saturating_sub(offset)),
        })
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}
