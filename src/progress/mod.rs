//! Progress of uploads: a bus on which every replica hears that an upload changed, the hub
//! that turns those signals into one read per watched upload, and the figures (percentage,
//! rate, ETA) clients are shown.

mod bus;
mod figures;
mod hub;

pub use bus::{CHANNEL, Change, ProgressBus, ProgressListener};
pub use figures::{Figures, figures};
pub use hub::{Pace, ProgressHub, RECENT_ERRORS, Snapshot};
