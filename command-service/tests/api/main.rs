//! Integration tests of command-service against real PostgreSQL and RabbitMQ.
//! One binary for the whole crate (faster to build); tests whose names contain `outage` stop a
//! shared service and run alone (see `.config/nextest.toml`).

mod bad_input;
mod binary;
mod broker_deadlines;
mod commands;
mod cors;
mod demo;
mod dev_services;
mod erase;
mod feed;
mod generated_input;
mod helpers;
mod idempotency;
mod openapi;
mod outage;
mod publishing;
mod readme;
mod server;
mod startup;
mod store_limits;
mod supervision;
mod write_tokens;
