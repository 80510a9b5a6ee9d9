//! Progress of uploads: a bus on which every replica hears that an upload changed, and the
//! figures (percentage, rate, ETA) clients are shown.

mod bus;
mod figures;

pub use bus::ProgressBus;
pub use figures::{Figures, figures};
