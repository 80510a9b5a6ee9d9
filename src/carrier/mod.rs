//! Talking to carriers' line-status APIs (issue 14): the accounts and the sealing of their
//! client secrets at rest, the HTTP client, the tokens and rate limit every worker process
//! shares through the database, and the audit trail of calls. Knows nothing of how uploads
//! are processed; `pipeline::carrier_calls` drives it.

pub mod accounts;
pub mod audit;
pub mod client;
pub mod rate;
pub mod sealed;
pub mod session;

pub use accounts::{CarrierCredentials, credentials};
pub use sealed::{SealError, SecretBox};
