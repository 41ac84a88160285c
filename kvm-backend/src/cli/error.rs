//! The one error type of the `ftvm` commands, with its exit status.

use ft::node::Divergence;

/// Why an `ftvm` command failed. The message is printed after `ftvm: `.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The KVM device cannot be opened: every command that runs a VM needs it.
    #[error("{path}: {reason} (KVM is required)")]
    KvmUnavailable { path: String, reason: String },
    /// The guest could not be built or failed while running.
    #[error("guest {guest}: {reason}")]
    Guest { guest: String, reason: String },
    /// Replay found the guest doing something other than what the log says.
    #[error("{0}")]
    Diverged(Divergence),
    /// The log file is missing, unreadable, corrupt, truncated, or not a recording of this guest.
    #[error("log {path}: {what}")]
    Log { path: String, what: String },
    /// A file other than the log could not be read or written.
    #[error("{what}: {reason}")]
    Io { what: String, reason: String },
    /// The command line asks for something impossible.
    #[error("{0}")]
    Usage(String),
    /// The guest did not finish within `--timeout-ms` (what was recorded is still valid).
    #[error("guest {guest}: no result after {timeout_ms} ms")]
    Timeout { guest: String, timeout_ms: u64 },
    /// `ftvm demo` or `report-failover` found lost requests, divergent outputs or a split brain.
    #[error("{0}")]
    CheckFailed(String),
    /// The protocol core did something the driver does not expect of a pair whose backup is a file.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Exit status of a divergence, distinct from other failures so that scripts can tell them apart.
pub const EXIT_DIVERGED: u8 = 3;
/// Exit status of a run that hit `--timeout-ms`.
pub const EXIT_TIMEOUT: u8 = 4;

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Diverged(_) => EXIT_DIVERGED,
            CliError::Timeout { .. } => EXIT_TIMEOUT,
            _ => 1,
        }
    }

    pub fn io(what: impl Into<String>, error: &std::io::Error) -> CliError {
        CliError::Io { what: what.into(), reason: io_reason(error) }
    }
}

/// An IO error's description without the "(os error N)" suffix that std appends.
pub fn io_reason(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}
