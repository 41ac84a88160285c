//! The one error type of the `ftvm` commands, with its exit status.

use ft::node::Divergence;

/// Why an `ftvm` command failed. The message is printed after `ftvm: `.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The KVM device cannot be opened: every command that runs a VM needs it.
    #[error("{path}: {reason} (KVM is required)")]
    KvmUnavailable { path: String, reason: String },
    /// The guest could not be built (a bad image), or its machine could not be set up.
    #[error("guest {guest}: {reason}")]
    Guest { guest: String, reason: String },
    /// The guest failed while running: a triple fault, an MMIO access, an emulation failure, a failed entry or a
    /// hypervisor error. It cannot go on.
    #[error("guest {guest} failed: {reason}")]
    GuestFailed { guest: String, reason: String },
    /// The guest powered off with a non-zero status (its own verdict: a failed self-test, an exception caught by
    /// the corpus kernel, ...).
    #[error("guest {guest} powered off with status {status} ({status:#x})")]
    GuestStatus { guest: String, status: u32 },
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
    #[error("guest {guest}: timed out after {timeout_ms} ms, before it finished")]
    Timeout { guest: String, timeout_ms: u64 },
    /// `ftvm demo` or `report-failover` found lost requests, divergent outputs or a split brain.
    #[error("{0}")]
    CheckFailed(String),
    /// The protocol core did something the driver does not expect of a pair whose backup is a file.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// Exit statuses, distinct so that scripts can tell the outcomes apart (listed in `ftvm --help` and
/// docs/deployment.md). 0 is success (a power-off with status 0, or the client load answered); 2 is a command line
/// that does not parse (clap's); every other failure is 1.
pub const EXIT_FAILURE: u8 = 1;
/// A divergence: replay found the guest doing something other than what the log says.
pub const EXIT_DIVERGED: u8 = 3;
/// A run that hit `--timeout-ms`.
pub const EXIT_TIMEOUT: u8 = 4;
/// The guest powered off with a non-zero status (printed as `powered-off=N`).
pub const EXIT_GUEST_STATUS: u8 = 5;
/// The guest failed: triple fault, MMIO access, emulation failure (the reason is on stderr).
pub const EXIT_GUEST_FAILED: u8 = 6;

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Diverged(_) => EXIT_DIVERGED,
            CliError::Timeout { .. } => EXIT_TIMEOUT,
            CliError::GuestStatus { .. } => EXIT_GUEST_STATUS,
            CliError::GuestFailed { .. } => EXIT_GUEST_FAILED,
            _ => EXIT_FAILURE,
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
