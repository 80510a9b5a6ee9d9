//! The processing pipeline: the dispatcher reads an uploaded file into chunk jobs, workers
//! decide each row's outcome with pure rules and apply it in one transaction per chunk;
//! rows of a carrier action then go through the carrier (`carrier_calls`).

pub mod carrier_calls;
pub mod chunk_rows;
mod chunk_txn;
pub mod csv_file;
pub mod dispatcher;
pub mod fanout_window;
pub mod rules;
pub mod runner;
pub mod sweeper;
mod terminate;
pub mod worker;

pub use runner::{Pipeline, PipelineSettings, Reclaim, Settlement, Step};
pub use terminate::{terminate, terminate_in};
