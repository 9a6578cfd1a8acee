//! The driver's errors, worded as curl words them (QEMU's curl driver shows
//! curl's messages), and their translation into [`DriverError`]s.

use crate::options::OptionError;
use crate::proxy::ProxyError;
use crate::response::ResponseError;
use crate::tls::TlsError;
use crate::url::UrlError;
use qimg_driver_api::DriverError;
use std::io;
use thiserror::Error;

/// Redirects followed before giving up, curl's default.
pub const MAX_REDIRECTS: u32 = 30;

/// Anything that goes wrong talking to the server.
#[derive(Debug, Error)]
pub enum HttpError {
    /// A URL (or a redirect's `Location`) that does not parse.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The host name does not resolve.
    #[error("Could not resolve host: {0}")]
    Resolve(String),
    /// No address of the host accepted a connection.
    #[error("Failed to connect to {host} port {port} after {ms} ms: {reason}")]
    Connect {
        /// The host as the URL names it.
        host: String,
        /// The port.
        port: u16,
        /// Milliseconds spent trying.
        ms: u128,
        /// curl's reason.
        reason: &'static str,
    },
    /// A request took longer than its deadline.
    #[error("Operation timed out after {ms} milliseconds with {bytes} bytes received")]
    Timeout {
        /// Milliseconds since the request started.
        ms: u128,
        /// Bytes received since then.
        bytes: u64,
    },
    /// Sending the request failed.
    #[error("Send failure: {}", qimg_driver_api::error::io_message(.0))]
    Send(io::Error),
    /// The response is malformed, cut short or unreadable.
    #[error(transparent)]
    Response(#[from] ResponseError),
    /// TLS failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// An error status (4xx, 5xx, or an unexpected one).
    #[error("The requested URL returned error: {0}")]
    Status(u16),
    /// The server does not serve byte ranges.
    #[error("Server does not support 'range' (byte ranges).")]
    NoRanges,
    /// The server's answer to `HEAD` has no `Content-Length`.
    #[error("Server didn't report file size.")]
    NoSize,
    /// A redirect loop or chain longer than [`MAX_REDIRECTS`].
    #[error("Maximum ({MAX_REDIRECTS}) redirects followed")]
    Redirects,
    /// The server answered a range request with other bytes than asked.
    #[error("{0}")]
    Range(String),
    /// The environment names a proxy this driver cannot use.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

impl HttpError {
    /// True if the failure shows a kept-alive connection that the server
    /// had closed before the request: sending it again on a new
    /// connection is safe.
    pub fn is_stale(&self) -> bool {
        match self {
            HttpError::Response(e) => e.is_stale(),
            HttpError::Send(e) => matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }

    /// The error of a failed open, in QEMU's words (`CURL: Error opening
    /// file: ...`).
    pub fn open_error(&self) -> DriverError {
        let message = format!("CURL: Error opening file: {self}");
        match self {
            HttpError::Url(_) => DriverError::invalid_argument(message),
            HttpError::NoRanges => DriverError::unsupported(message),
            HttpError::Status(404 | 410) => DriverError::from_errno(libc_errno::ENOENT, message),
            HttpError::Status(401 | 403) => DriverError::from_errno(libc_errno::EACCES, message),
            _ => DriverError::from_errno(libc_errno::EIO, message),
        }
    }

    /// The error of a failed read: QEMU reports `Input/output error`, and
    /// prints curl's reason beforehand.
    pub fn read_error(&self) -> DriverError {
        eprintln!("{}: curl: {self}", program());
        DriverError::from_errno(libc_errno::EIO, "Input/output error")
    }
}

/// The errors of bad options.
impl From<OptionError> for DriverError {
    fn from(e: OptionError) -> Self {
        DriverError::invalid_argument(e.to_string())
    }
}

/// The running program's name, as error messages start with it.
fn program() -> String {
    std::env::args_os()
        .next()
        .and_then(|arg0| {
            std::path::Path::new(&arg0)
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "qimg".into())
}

/// The few errno values the driver reports (Linux numbering, as
/// [`DriverError::from_errno`] expects).
pub mod libc_errno {
    /// No such file or directory.
    pub const ENOENT: i32 = 2;
    /// Input/output error.
    pub const EIO: i32 = 5;
    /// Operation not permitted.
    pub const EPERM: i32 = 1;
    /// Permission denied.
    pub const EACCES: i32 = 13;
    /// Read-only file system.
    pub const EROFS: i32 = 30;
}

#[cfg(test)]
mod tests {
    use super::*;
    use qimg_driver_api::ErrorKind;

    #[test]
    fn open_messages() {
        assert_eq!(
            HttpError::NoRanges.open_error().message.as_str(),
            "CURL: Error opening file: Server does not support 'range' (byte ranges)."
        );
        let not_found = HttpError::Status(404).open_error();
        assert_eq!(
            not_found.message.as_str(),
            "CURL: Error opening file: The requested URL returned error: 404"
        );
        assert_eq!(not_found.kind, ErrorKind::NOT_FOUND);
        let refused = HttpError::Connect {
            host: "127.0.0.1".into(),
            port: 1,
            ms: 0,
            reason: "Couldn't connect to server",
        };
        assert_eq!(
            refused.open_error().message.as_str(),
            "CURL: Error opening file: Failed to connect to 127.0.0.1 port 1 after 0 ms: \
             Couldn't connect to server"
        );
        assert_eq!(
            HttpError::NoSize.open_error().message.as_str(),
            "CURL: Error opening file: Server didn't report file size."
        );
        assert_eq!(
            HttpError::Redirects.to_string(),
            "Maximum (30) redirects followed"
        );
    }

    #[test]
    fn read_errors_are_eio() {
        let error = HttpError::Response(ResponseError::Truncated(10)).read_error();
        assert_eq!(error.errno, 5);
        assert_eq!(error.message.as_str(), "Input/output error");
    }

    #[test]
    fn staleness() {
        assert!(HttpError::Response(ResponseError::Empty).is_stale());
        assert!(HttpError::Send(io::ErrorKind::BrokenPipe.into()).is_stale());
        assert!(!HttpError::Response(ResponseError::Truncated(1)).is_stale());
        assert!(!HttpError::Status(500).is_stale());
    }
}
