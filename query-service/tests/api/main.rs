//! Integration tests of query-service against real RabbitMQ, MongoDB-wire server and, for the
//! end-to-end tests, command-service on real PostgreSQL. One binary for the crate; tests whose
//! names contain `outage` stop or kill something and run alone (`.config/nextest.toml`).

mod consumer;
mod convergence;
mod dead_letters;
mod deploy;
mod end_to_end;
mod erasure;
mod feed_tokens;
mod helpers;
mod lag;
mod observability;
mod openapi;
mod outage;
mod page;
mod projection;
mod reads;
mod rebuild;
mod replay;
mod replicas;
mod shutdown;
mod stream;
mod traces;
mod verify;
