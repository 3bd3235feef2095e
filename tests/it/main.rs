//! End-to-end tests: the real `conveyor` binary against real NATS JetStream and Postgres.
//! Each test has its own namespace and database, so they run in parallel.

mod bad_input;
mod crash;
mod harness;
mod jobs;
mod live;
mod log_tools;
mod operations;
mod replay;
mod webhooks;
