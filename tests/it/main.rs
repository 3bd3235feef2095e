//! End-to-end tests: the real `conveyor` binary against real NATS JetStream and Postgres.
//! Each test has its own namespace and database, so they run in parallel.

mod auth;
mod bad_input;
mod batch;
mod crash;
mod fuzz;
mod harness;
mod jobs;
mod limits;
mod live;
mod log_tools;
mod operations;
mod ordered;
mod outages;
mod replay;
mod services;
mod shutdown;
mod tracing;
mod webhooks;
