//! qimg's HTTP(S) protocol driver: read-only `http://` and `https://` stores,
//! the counterpart of QEMU's curl block driver (same option names, same
//! messages), read with byte-range requests over a few keep-alive
//! connections.

#![warn(missing_docs)]

pub mod cache;
pub mod conn;
pub mod error;
pub mod options;
pub mod pool;
pub mod proxy;
pub mod request;
pub mod response;
pub mod store;
pub mod tls;
pub mod url;

use error::libc_errno;
use options::Options;
use qimg_driver_api::{proto_caps, proto_open, DriverError, ProtocolImpl, StoreImpl};
use serde_json::{Map, Value};
use store::HttpStore;
use url::Scheme;

/// The `http` or the `https` protocol driver.
#[derive(Clone, Copy, Debug)]
pub struct HttpProtocol {
    scheme: Scheme,
}

impl HttpProtocol {
    /// The `http` driver.
    pub fn http() -> HttpProtocol {
        HttpProtocol {
            scheme: Scheme::Http,
        }
    }

    /// The `https` driver.
    pub fn https() -> HttpProtocol {
        HttpProtocol {
            scheme: Scheme::Https,
        }
    }

    /// Opens the store `options` describe, read-only.
    pub fn open_store(
        &self,
        options: &Map<String, Value>,
        secrets: &Map<String, Value>,
    ) -> Result<HttpStore, DriverError> {
        let options = Options::parse(self.scheme.name(), options, secrets)?;
        HttpStore::open(&options).map_err(|e| e.open_error())
    }
}

impl ProtocolImpl for HttpProtocol {
    fn name(&self) -> &str {
        self.scheme.name()
    }

    fn description(&self) -> &str {
        match self.scheme {
            Scheme::Http => "HTTP, read-only, with byte ranges",
            Scheme::Https => "HTTPS, read-only, with byte ranges",
        }
    }

    fn capabilities(&self) -> u64 {
        proto_caps::MULTI_CONN
    }

    fn schemes(&self) -> Vec<String> {
        vec![self.scheme.name().to_string()]
    }

    fn parse_filename(&self, filename: &str) -> Result<Map<String, Value>, DriverError> {
        let mut map = Map::new();
        map.insert("url".into(), Value::from(filename));
        Ok(map)
    }

    fn canonical_name(&self, options: &Map<String, Value>) -> Result<String, DriverError> {
        Ok(options::canonical_name(self.scheme.name(), options)?)
    }

    fn open(
        &self,
        options: &Map<String, Value>,
        flags: u32,
    ) -> Result<Box<dyn StoreImpl>, DriverError> {
        self.open_with_secrets(options, flags, &Map::new())
    }

    fn open_with_secrets(
        &self,
        options: &Map<String, Value>,
        flags: u32,
        secrets: &Map<String, Value>,
    ) -> Result<Box<dyn StoreImpl>, DriverError> {
        if flags & proto_open::WRITE != 0 {
            return Err(DriverError::from_errno(
                libc_errno::EROFS,
                "curl driver does not support writes",
            ));
        }
        Ok(Box::new(self.open_store(options, secrets)?))
    }
}

qimg_driver_api::export_plugins!(
    formats: [],
    protocols: [HttpProtocol::http(), HttpProtocol::https()]
);
