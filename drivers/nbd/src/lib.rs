//! qimg's NBD protocol driver: `nbd://`, `nbd+unix://` (and qemu's legacy
//! `nbd:` names) as stores, spoken in fixed newstyle with structured
//! replies and `base:allocation` block status, in TLS with `tls-creds`.
//!
//! Modules, from the wire up: [`wire`] (constants and messages),
//! [`socket`] (connecting, timeouts, TLS records), [`tls`] (credentials
//! and certificate checks), [`handshake`], [`reply`] (reply
//! headers), [`pending`] (one request's reply), [`inflight`] (many
//! requests in flight on one connection, replies matched by cookie),
//! [`conn`] (one connection's requests), [`split`] (requests within the
//! server's limits), [`pool`] (several connections to a multi-conn
//! server), [`behind`] (flushes in the background as writes go on),
//! [`extents`] (cached block status), [`store`]
//! (the `StoreImpl`); [`uri`] and [`options`] turn names and options into
//! a server address and print the node's name as qemu does.

#![warn(missing_docs)]

pub mod behind;
pub mod conn;
pub mod error;
pub mod extents;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod handshake;
pub mod inflight;
pub mod options;
pub mod pending;
pub mod pool;
pub mod reply;
pub mod socket;
pub mod split;
pub mod store;
#[cfg(test)]
mod testing;
pub mod tls;
pub mod uri;
pub mod wire;

use qimg_driver_api::{proto_caps, DriverError, ProtocolImpl, StoreImpl};
use serde_json::{Map, Value};

pub use error::NbdError;
pub use options::Options;
pub use store::NbdStore;

/// The `nbd` protocol driver.
pub struct NbdProtocol;

impl ProtocolImpl for NbdProtocol {
    fn name(&self) -> &str {
        "nbd"
    }

    fn description(&self) -> &str {
        "Network Block Device client (nbd://, nbd+unix://)"
    }

    fn capabilities(&self) -> u64 {
        proto_caps::WRITE | proto_caps::BLOCK_STATUS | proto_caps::MULTI_CONN
    }

    fn schemes(&self) -> Vec<String> {
        ["nbd", "nbd+tcp", "nbd+unix"].map(String::from).to_vec()
    }

    fn parse_filename(&self, filename: &str) -> Result<Map<String, Value>, DriverError> {
        Ok(uri::parse_filename(filename)?)
    }

    fn canonical_name(&self, options: &Map<String, Value>) -> Result<String, DriverError> {
        Ok(Options::from_map(options)?.canonical_name())
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
        let options = Options::from_map(options)?;
        let tls = match &options.tls_creds {
            None => None,
            Some(id) => {
                let creds = secrets.get(id).ok_or_else(|| {
                    NbdError::InvalidArgument(format!("No TLS credentials with id '{id}'"))
                })?;
                let creds = tls::Credentials::from_json(id, creds)?;
                Some(tls::client(
                    &creds,
                    &options.server,
                    options.tls_hostname.as_deref(),
                )?)
            }
        };
        Ok(Box::new(NbdStore::open(&options, flags, tls)?))
    }
}

qimg_driver_api::export_plugins!(formats: [], protocols: [NbdProtocol]);
