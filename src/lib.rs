//! fleetload: a GraphQL server for bulk CSV device uploads, a drop-in for the AppSync
//! `prepareBatchUpload` → upload → `finalizeBatchUpload` flow.

pub mod access;
pub mod admin;
pub mod auth;
pub mod carrier;
pub mod carrier_sim;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod csv_format;
pub mod db;
pub mod demo;
pub mod domain;
pub mod error;
pub mod graphql;
pub mod health;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod progress;
pub mod queue;
pub mod startup;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod uploads;
pub mod webhook;
pub mod websocket;
