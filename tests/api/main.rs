//! Integration tests: the real server on port 0, driven over HTTP like a client would.
//! One test binary, so the app is compiled and linked once.

mod helpers;
mod moto;

mod admin;
mod api_contract;
mod auth;
mod browser;
mod cancel;
mod carrier;
mod carrier_accounts;
mod carrier_sim;
mod chunk_identity;
mod cli;
mod cli_multipart;
mod console;
mod error_report;
mod fair_sqs;
mod finalize;
mod http_conformance;
mod limits;
mod lock_order;
mod migration_04;
mod multipart;
mod operability;
mod pipeline;
mod prepare;
mod processes;
mod queue_db;
mod queue_sqs;
mod results;
mod retry;
mod schema;
mod settlement;
mod storage_local;
mod storage_s3;
mod subscriptions;
mod tenancy;
mod traces;
mod webhook;
mod websocket_lifecycle;
mod websocket_limits;
