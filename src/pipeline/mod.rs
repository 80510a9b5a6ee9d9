//! The processing pipeline: reads an upload's CSV from storage, decides each row's outcome and
//! applies it.

pub mod csv_file;
