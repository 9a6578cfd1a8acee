//! The host's error type and how it reaches the user: one line prefixed with the
//! program name, as qemu-img prints it, and qemu-img's exit status.

use crate::cli::program;
use qimg_driver_api::DriverError;

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// A plain failure: `prog: MESSAGE`, exit status 1.
    #[error("{0}")]
    Failed(String),
    /// A usage error: `prog: MESSAGE` then `Try 'prog CMD --help' for more info`.
    #[error("{message}")]
    Usage {
        /// The text.
        message: String,
        /// Subcommand for the hint (empty for the top level).
        command: String,
        /// Whether the message is prefixed with `prog CMD:` (getopt's errors) rather than `prog:`.
        getopt: bool,
    },
    /// Already reported; exit with this status.
    #[error("exit {0}")]
    Exit(i32),
}

/// Result of a command: the process exit status.
pub type CmdResult = Result<i32, CmdError>;

impl CmdError {
    /// A usage error of subcommand `command`.
    pub fn usage(command: &str, message: impl Into<String>) -> Self {
        CmdError::Usage {
            message: message.into(),
            command: command.to_string(),
            getopt: false,
        }
    }

    /// Prints the error as qemu-img does and returns the exit status.
    pub fn report(self) -> i32 {
        match self {
            CmdError::Failed(message) => {
                errln!("{}: {}", program(), message);
                1
            }
            CmdError::Usage {
                message,
                command,
                getopt,
            } => {
                let who = if command.is_empty() {
                    program()
                } else {
                    format!("{} {}", program(), command)
                };
                if getopt {
                    errln!("{who}: {message}");
                } else {
                    errln!("{}: {}", program(), message);
                }
                errln!("Try '{who} --help' for more info");
                1
            }
            CmdError::Exit(code) => code,
        }
    }
}

impl From<DriverError> for CmdError {
    fn from(e: DriverError) -> Self {
        CmdError::Failed(e.message.to_string())
    }
}

/// Shorthand for a [`CmdError::Failed`].
pub fn fail(message: impl Into<String>) -> CmdError {
    CmdError::Failed(message.into())
}
