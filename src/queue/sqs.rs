//! (the SQS queue: being written)
