//! teachlyd: the real-time 1:1 chat backend of Teachly. The binary (`src/main.rs`) only parses the
//! command line and maps errors to exit codes; everything else lives here so tests can drive it.

pub(crate) mod admin;
pub(crate) mod app;
pub(crate) mod auth;
pub(crate) mod chat;
pub mod cli;
pub mod commands;
pub mod config;
pub mod domain;
pub mod http;
pub mod hub;
pub(crate) mod live;
pub mod metrics;
pub mod rate;
pub mod server;
pub mod store;
pub mod telemetry;
pub(crate) mod ws;
