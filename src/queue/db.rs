//! (the job-table queue: being written)
