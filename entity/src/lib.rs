//! sea-orm entities of fleetload: the tables the API, the dispatcher and the workers share.
//!
//! Enumerations are stored as short text so a row reads the same in `psql`, `sqlite3` and logs.

pub mod action;
pub mod batch_result;
pub mod carrier_account;
pub mod carrier_status;
pub mod device;
pub mod job;
pub mod multipart_upload;
pub mod tenant;
pub mod upload;
pub mod upload_chunk;
pub mod workflow;

pub mod prelude {
    pub use super::action::Entity as Action;
    pub use super::batch_result::Entity as BatchResult;
    pub use super::carrier_account::Entity as CarrierAccount;
    pub use super::device::Entity as Device;
    pub use super::job::Entity as Job;
    pub use super::multipart_upload::Entity as MultipartUpload;
    pub use super::tenant::Entity as Tenant;
    pub use super::upload::Entity as Upload;
    pub use super::upload_chunk::Entity as UploadChunk;
    pub use super::workflow::Entity as Workflow;
}
