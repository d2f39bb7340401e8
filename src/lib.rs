//! mana-core-auth: the central authentication and credit service, as an event-sourced
//! CQRS backend. See `docs/ARCHITECTURE.md` for a tour of the code.

pub mod api;
pub mod app;
pub mod audit;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod credits;
pub mod db;
pub mod domain;
pub mod events;
pub mod feed;
pub mod jobs;
pub mod mail;
pub mod projections;
pub mod security;
pub mod server;
pub mod telemetry;

pub use app::{AppState, Application};
pub use config::Config;
