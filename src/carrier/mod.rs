//! Talking to carriers' line-status APIs (issue 14): the accounts the workers call them
//! with, and the sealing of those accounts' client secrets at rest.

pub mod accounts;
pub mod sealed;

pub use accounts::{CarrierCredentials, credentials};
pub use sealed::{SealError, SecretBox};
