//! One integration-test binary: it compiles once and its tests run in parallel, each against a server
//! and a database of its own.

mod common;

mod admin;
mod auth;
mod browser;
mod chat;
mod cli;
mod completions;
mod content;
mod daemon;
mod docs;
mod faults;
mod limits;
mod load;
mod man;
mod messages;
mod metrics;
mod openapi;
mod packaging;
mod rest;
mod sessions;
mod socket;
mod store;
mod systemd;
