//! End-to-end tests: the real `conveyor` binary against real NATS JetStream and Postgres.
//! Each test has its own namespace and database, so they run in parallel.

mod auth;
mod bad_input;
mod batch;
mod cleanup;
mod cli_output;
mod crash;
mod first_hour;
mod fuzz;
mod harness;
mod jobs;
mod limits;
mod live;
mod log_tools;
mod operations;
mod ordered;
mod outages;
mod readme;
mod rebuild_reads;
mod replay;
mod secrets;
mod services;
mod shutdown;
mod slots;
mod tracing;
mod webhook_targets;
mod webhooks;
