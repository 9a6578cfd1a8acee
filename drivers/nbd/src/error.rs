//! The driver's errors, and how each reaches the host as a [`DriverError`]
//! in qemu-img's words.

use crate::socket::TlsReadError;
use qimg_driver_api::error::io_message;
use qimg_driver_api::{DriverError, ErrorKind};
use std::io;

/// Everything that can go wrong in this driver.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// A filename or option qemu would refuse; the text is qemu's.
    #[error("{0}")]
    InvalidArgument(String),
    /// Something this build cannot do (TLS, vsock servers...).
    #[error("{0}")]
    Unsupported(String),
    /// The server's name or port did not resolve.
    #[error("address resolution failed for {target}: {reason}")]
    Resolve {
        /// `host:port` as given.
        target: String,
        /// `gai_strerror`'s text.
        reason: String,
    },
    /// No connection could be made.
    #[error("Failed to connect to '{target}': {}", io_message(source))]
    Connect {
        /// `host:port` or the socket path, as given.
        target: String,
        /// The last attempt's error.
        source: io::Error,
    },
    /// Reading from the server failed during the handshake.
    #[error("Failed to read {what}: {}", read_cause(source))]
    HandshakeRead {
        /// What was being read (`option reply`).
        what: &'static str,
        /// Why it failed.
        source: io::Error,
    },
    /// Writing to the server failed during the handshake.
    #[error(
        "Failed to send {what}: Unable to write to socket: {}",
        io_message(source)
    )]
    HandshakeWrite {
        /// What was being sent (`option request header`).
        what: &'static str,
        /// Why it failed.
        source: io::Error,
    },
    /// The server refused an option; the text is qemu's (with the
    /// server's own message on a second line).
    #[error("{message}")]
    Refused {
        /// The whole message.
        message: String,
        /// The errno that fits the refusal best.
        errno: i32,
    },
    /// The export is read-only and the store was opened for writing.
    #[error("Could not open image: Permission denied")]
    ReadOnly,
    /// The server broke the protocol; the connection is unusable.
    #[error("NBD protocol error: {0}")]
    Protocol(String),
    /// The connection failed while transmitting; it is unusable.
    #[error("NBD connection failed: {0}")]
    Transport(#[source] io::Error),
    /// Every connection to the server has failed.
    #[error("NBD connection closed")]
    Closed,
    /// The server answered a request with an error.
    #[error("NBD server error: {}", io_message(&io::Error::from_raw_os_error(*errno)))]
    Server {
        /// The error as this system's errno.
        errno: i32,
    },
    /// A request outside the export.
    #[error("request beyond the end of the export")]
    OutOfRange,
    /// A length change NBD cannot make.
    #[error("Cannot grow NBD nodes")]
    CannotGrow,
    /// A preallocation mode NBD cannot honour, by qemu's name.
    #[error("Unsupported preallocation mode '{0}'")]
    Prealloc(&'static str),
    /// The TLS handshake failed, or TLS credentials are unusable; the
    /// text is the whole message.
    #[error("{0}")]
    Tls(String),
}

impl NbdError {
    /// True if the connection the error happened on can no longer be
    /// trusted: the stream may be mid-message.
    pub fn breaks_connection(&self) -> bool {
        match self {
            NbdError::Protocol(_) | NbdError::Transport(_) | NbdError::Closed => true,
            // "If the client receives an ESHUTDOWN error it MUST initiate
            // a soft disconnect."
            NbdError::Server { errno } => *errno == libc::ESHUTDOWN,
            _ => false,
        }
    }
}

impl NbdError {
    /// A copy of the failure that broke a connection, for each of the
    /// other requests it fails (same text, same errno).
    pub fn duplicate(&self) -> NbdError {
        match self {
            NbdError::Protocol(text) => NbdError::Protocol(text.clone()),
            NbdError::Transport(e) => NbdError::Transport(match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            }),
            NbdError::Server { errno } => NbdError::Server { errno: *errno },
            _ => NbdError::Closed,
        }
    }
}

/// qemu's words for a failed read during the handshake.
fn read_cause(e: &io::Error) -> String {
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsReadError>())
    {
        return tls.to_string();
    }
    if e.kind() == io::ErrorKind::UnexpectedEof {
        "Unexpected end-of-file before all data were read".to_string()
    } else {
        format!("Unable to read from socket: {}", io_message(e))
    }
}

/// The errno of an I/O error, `EIO` when it has none.
fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// An error with `errno` worded as `strerror` words it.
fn strerror(errno: i32) -> DriverError {
    DriverError::from_errno(errno, io_message(&io::Error::from_raw_os_error(errno)))
}

impl From<NbdError> for DriverError {
    fn from(e: NbdError) -> Self {
        let text = e.to_string();
        match e {
            NbdError::InvalidArgument(_) => DriverError::invalid_argument(text),
            NbdError::Unsupported(_) | NbdError::CannotGrow | NbdError::Prealloc(_) => {
                DriverError::unsupported(text)
            }
            NbdError::Resolve { .. } => DriverError::new(ErrorKind::IO, text),
            NbdError::Connect { ref source, .. } => DriverError::from_errno(errno_of(source), text),
            NbdError::HandshakeRead { .. } | NbdError::HandshakeWrite { .. } => {
                DriverError::from_errno(libc::EIO, text)
            }
            NbdError::Refused { errno, .. } => DriverError::from_errno(errno, text),
            NbdError::Tls(_) => DriverError::from_errno(libc::EIO, text),
            NbdError::ReadOnly => DriverError::from_errno(libc::EACCES, text),
            // qemu-img reports a lost or misbehaving server as the failed
            // request's EIO ("error while reading at byte N: Input/output
            // error"); the detail stays in this error's Display.
            NbdError::Protocol(_) | NbdError::Transport(_) | NbdError::Closed => {
                strerror(libc::EIO)
            }
            NbdError::Server { errno } => strerror(errno),
            NbdError::OutOfRange => strerror(libc::ENOSPC),
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = NbdError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_errors_keep_errno_and_qemu_words() {
        let e = NbdError::Connect {
            target: "127.0.0.1:10899".into(),
            source: io::Error::from_raw_os_error(libc::ECONNREFUSED),
        };
        let d = DriverError::from(e);
        assert_eq!(
            d.message.as_str(),
            "Failed to connect to '127.0.0.1:10899': Connection refused"
        );
        assert_eq!(d.errno, libc::ECONNREFUSED);
        let e = NbdError::Connect {
            target: "/tmp/x.sock".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        let d = DriverError::from(e);
        assert_eq!(d.kind, ErrorKind::NOT_FOUND);
    }

    #[test]
    fn transmission_failures_are_eio() {
        let d = DriverError::from(NbdError::Transport(io::ErrorKind::UnexpectedEof.into()));
        assert_eq!(d.message.as_str(), "Input/output error");
        assert_eq!(d.errno, libc::EIO);
        let d = DriverError::from(NbdError::Server { errno: libc::EPERM });
        assert_eq!(d.message.as_str(), "Operation not permitted");
        assert_eq!(d.kind, ErrorKind::PERMISSION);
    }

    #[test]
    fn handshake_eof_is_worded_as_qemu_words_it() {
        let e = NbdError::HandshakeRead {
            what: "option reply",
            source: io::ErrorKind::UnexpectedEof.into(),
        };
        assert_eq!(
            e.to_string(),
            "Failed to read option reply: Unexpected end-of-file before all data were read"
        );
    }

    #[test]
    fn read_only_is_permission_denied() {
        let d = DriverError::from(NbdError::ReadOnly);
        assert_eq!(
            d.message.as_str(),
            "Could not open image: Permission denied"
        );
        assert_eq!(d.kind, ErrorKind::PERMISSION);
    }
}
