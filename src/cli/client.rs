//! The commands that work through the HTTP API, as a client with a token: `jobs`, `dlq`,
//! `webhooks`.

use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;
use crate::output::{OutputArgs, View};

#[derive(Debug, Subcommand)]
pub(super) enum DlqCommand {
    /// List dead-lettered jobs, newest first.
    List {
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Page size (1 to 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show a dead-lettered job and its timeline.
    Show {
        /// Job id.
        id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Run dead-lettered jobs again with a fresh budget of attempts.
    Redrive {
        /// Job id.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every dead-lettered job (of `--kind`, if given).
        #[arg(long)]
        all: bool,
        /// With --all: only this kind.
        #[arg(long, requires = "all")]
        kind: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum WebhooksCommand {
    /// Print the tenant's webhook signing secret.
    Secret,
    /// List deliveries that exhausted their attempts (admin).
    Failed {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Queue a failed delivery again (admin).
    Redrive {
        /// Job id.
        job: String,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum KindsCommand {
    /// List the kinds the API accepts, with their payload schemas and push endpoints.
    List,
    /// Register a push kind (operator): conveyor POSTs each job to the endpoint, signed; prints
    /// the kind's signing secret.
    Push {
        /// The kind, e.g. `thumbnail.render`.
        kind: String,
        /// The URL each job is POSTed to.
        #[arg(long)]
        endpoint: String,
        /// Time limit of one POST (ms).
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
        /// A file with the JSON Schema of the kind's payload.
        #[arg(long)]
        schema: Option<std::path::PathBuf>,
    },
    /// Pause a kind: its waiting jobs stay queued and none starts; running ones finish. Your
    /// own jobs of it, or (operator) every tenant's or one tenant's.
    Pause {
        /// The kind.
        kind: String,
        #[command(flatten)]
        scope: PauseScope,
    },
    /// Resume a paused kind (the same scope it was paused with).
    Resume {
        /// The kind.
        kind: String,
        #[command(flatten)]
        scope: PauseScope,
    },
    /// List the pauses that hold your jobs (with `--all-tenants`, every pause: operator).
    Pauses {
        /// Every tenant's pauses (operator).
        #[arg(long)]
        all_tenants: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum SchedulesCommand {
    /// Create (or replace) a schedule: `conveyor schedules create nightly report.job_stats
    /// --cron '0 0 2 * * *' --timezone Europe/Paris`, or `--every 30s`.
    Create {
        /// Its name (letters, digits, `-`, `_`).
        id: String,
        /// The kind of the job each tick submits.
        kind: String,
        /// A cron expression: 5 fields, or 6 with seconds first.
        #[arg(long, required_unless_present = "every", conflicts_with = "every")]
        cron: Option<String>,
        /// The IANA time zone the cron expression is read in (default UTC).
        #[arg(long, requires = "cron")]
        timezone: Option<String>,
        /// An interval instead of a cron expression (`30s`, `1h 30m`).
        #[arg(long)]
        every: Option<String>,
        /// The job's payload as JSON.
        #[arg(long)]
        payload: Option<String>,
        /// Ticks missed by more than a minute: `skip` (default) or `once`.
        #[arg(long)]
        catch_up: Option<String>,
        /// Higher starts first (-100 to 100).
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i32>,
    },
    /// List your schedules.
    List,
    /// Show a schedule, with its next tick.
    Get {
        /// The schedule's id.
        id: String,
    },
    /// Delete a schedule.
    Delete {
        /// The schedule's id.
        id: String,
    },
    /// Pause a schedule: no tick fires until it is resumed.
    Pause {
        /// The schedule's id.
        id: String,
    },
    /// Resume a paused schedule from its next tick.
    Resume {
        /// The schedule's id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum TenantsCommand {
    /// Set a tenant's share of every kind's workers: its weight in the turns, a cap on its running
    /// jobs per kind.
    Share {
        /// The tenant.
        tenant: String,
        /// Releases per turn (1 to 100).
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// The most of its jobs of one kind running at once.
        #[arg(long)]
        max_running: Option<u32>,
    },
    /// Show a tenant's share.
    Show {
        /// The tenant.
        tenant: String,
    },
}

/// Whose jobs a pause holds.
#[derive(Debug, clap::Args)]
pub(super) struct PauseScope {
    /// Every tenant's jobs (operator).
    #[arg(long, conflicts_with = "tenant")]
    all_tenants: bool,
    /// This tenant's jobs (operator).
    #[arg(long)]
    tenant: Option<String>,
}

impl PauseScope {
    /// The route of `action` (`pause`, `resume`) on `kind` for this scope.
    fn path(&self, kind: &str, action: &str) -> String {
        match (&self.tenant, self.all_tenants) {
            (Some(t), _) => format!("/v1/admin/kinds/{kind}/{action}?tenant={t}"),
            (None, true) => format!("/v1/admin/kinds/{kind}/{action}"),
            (None, false) => format!("/v1/kinds/{kind}/{action}"),
        }
    }
}

#[derive(Debug, clap::Args)]
pub(super) struct Target {
    /// API base URL.
    #[arg(
        long,
        env = "CONVEYOR_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// Bearer token (`conveyor token` prints one).
    #[arg(
        long,
        env = "CONVEYOR_TOKEN",
        default_value = "",
        hide_default_value = true,
        hide_env_values = true,
        global = true
    )]
    token: String,
}

#[derive(Debug, Subcommand)]
pub(super) enum JobsCommand {
    /// Submit a job, or (with `--file`) many, in batches of 1,000.
    Submit {
        /// Job kind (`noop`, `sleep`, `flaky`, `fail`, `batch`, `fan_out`, `report.job_stats`, …).
        #[arg(required_unless_present = "file", conflicts_with = "file")]
        kind: Option<String>,
        /// Submit the jobs of a JSON Lines file (`-` for stdin): one `POST /v1/jobs` body per
        /// line, each with an optional `idempotency_key`.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// Payload as JSON, e.g. '{"ms": 500}'.
        #[arg(long)]
        payload: Option<String>,
        /// Attempts before dead-lettering.
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Per-attempt time limit (ms).
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Not before this time (RFC 3339).
        #[arg(long)]
        run_at: Option<String>,
        /// Completion webhook URL.
        #[arg(long)]
        webhook: Option<String>,
        /// Idempotency key: retrying with the same key never makes a second job.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Higher starts first among the waiting jobs of its kind (-100 to 100).
        #[arg(long, allow_hyphen_values = true)]
        priority: Option<i32>,
        /// Concurrency key: at most `--concurrency-limit` of your jobs with it run at once.
        #[arg(long)]
        concurrency_key: Option<String>,
        /// How many jobs with `--concurrency-key` may run at once.
        #[arg(long, requires = "concurrency_key", default_value_t = 1)]
        concurrency_limit: u32,
        /// A job that must end first (repeat for several); if one does not succeed, this one
        /// is cancelled unrun.
        #[arg(long = "depends-on", value_name = "JOB_ID")]
        depends_on: Vec<String>,
    },
    /// Show a job.
    Get {
        /// Job id.
        id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// List jobs, newest first.
    List {
        /// Only this status.
        #[arg(long)]
        status: Option<String>,
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Page size (1 to 500).
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Request cancellation of a job.
    Cancel {
        /// Job id.
        id: String,
    },
    /// List the jobs a job's handler submitted (its children, and its continuation).
    Children {
        /// Job id.
        id: String,
        /// Only this status.
        #[arg(long)]
        status: Option<String>,
        /// Page size (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Show a job's timeline of events.
    Events {
        /// Job id.
        id: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Follow a job live until it ends, printing its progress.
    Watch {
        /// Job id.
        id: String,
    },
}

pub(super) fn client(target: &Target) -> anyhow::Result<Client> {
    if target.token.is_empty() {
        anyhow::bail!("no token: set CONVEYOR_TOKEN (`conveyor token` prints one) or pass --token");
    }
    Ok(Client::new(&target.url, &target.token))
}

pub(super) async fn dlq(target: Target, command: DlqCommand) -> anyhow::Result<()> {
    let c = client(&target)?;
    let kind_q = |kind: &Option<String>| {
        kind.as_ref()
            .map(|k| format!("&kind={k}"))
            .unwrap_or_default()
    };
    match command {
        DlqCommand::List {
            kind,
            limit,
            cursor,
            output,
        } => {
            let cursor_q = cursor.map(|c| format!("&cursor={c}")).unwrap_or_default();
            let page = c
                .call(
                    Method::GET,
                    &format!(
                        "/v1/admin/dead-letters?limit={limit}{}{cursor_q}",
                        kind_q(&kind)
                    ),
                    None,
                    &[],
                )
                .await?;
            output.print(&page, View::DeadLetters)?;
        }
        DlqCommand::Show { id, output } => {
            let job = c
                .call(Method::GET, &format!("/v1/jobs/{id}"), None, &[])
                .await?;
            let events = c
                .call(Method::GET, &format!("/v1/jobs/{id}/events"), None, &[])
                .await?;
            output.print(&json!({ "job": job, "events": events }), View::DeadLetter)?;
        }
        DlqCommand::Redrive { id: Some(id), .. } => {
            let out = c
                .call(
                    Method::POST,
                    &format!("/v1/admin/dead-letters/{id}/redrive"),
                    None,
                    &[],
                )
                .await?;
            print(&out);
        }
        DlqCommand::Redrive { id: None, kind, .. } => {
            // Collect first (re-driven jobs leave the list as they are projected), then re-drive.
            let mut ids = Vec::new();
            let mut cursor = String::new();
            loop {
                let page = c
                    .call(
                        Method::GET,
                        &format!("/v1/admin/dead-letters?limit=500{}{cursor}", kind_q(&kind)),
                        None,
                        &[],
                    )
                    .await?;
                ids.extend(
                    page["items"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|j| j["id"].as_str().map(str::to_owned)),
                );
                match page["next_cursor"].as_str() {
                    Some(next) => cursor = format!("&cursor={next}"),
                    None => break,
                }
            }
            let mut redriven = 0;
            for id in &ids {
                match c
                    .call(
                        Method::POST,
                        &format!("/v1/admin/dead-letters/{id}/redrive"),
                        None,
                        &[],
                    )
                    .await
                {
                    Ok(_) => redriven += 1,
                    Err(e) => eprintln!("not re-driven {id}: {e:#}"),
                }
            }
            println!("{redriven} of {} dead-lettered jobs re-driven", ids.len());
        }
    }
    Ok(())
}

pub(super) async fn webhooks(target: Target, command: WebhooksCommand) -> anyhow::Result<()> {
    let c = client(&target)?;
    let out = match command {
        WebhooksCommand::Secret => {
            c.call(Method::GET, "/v1/webhooks/secret", None, &[])
                .await?
        }
        WebhooksCommand::Failed { output } => {
            let failed = c
                .call(Method::GET, "/v1/admin/webhooks/failed", None, &[])
                .await?;
            return Ok(output.print(&failed, View::FailedWebhooks)?);
        }
        WebhooksCommand::Redrive { job } => {
            c.call(
                Method::POST,
                &format!("/v1/admin/webhooks/failed/{job}/redrive"),
                None,
                &[],
            )
            .await?
        }
    };
    print(&out);
    Ok(())
}

pub(super) async fn kinds(target: Target, command: KindsCommand) -> anyhow::Result<()> {
    let c = client(&target)?;
    let out = match command {
        KindsCommand::List => c.call(Method::GET, "/v1/kinds", None, &[]).await?,
        KindsCommand::Push {
            kind,
            endpoint,
            timeout_ms,
            schema,
        } => {
            let schema = match schema {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let schema: serde_json::Value = serde_json::from_str(&text)
                        .with_context(|| format!("{} is not JSON", path.display()))?;
                    Some(schema)
                }
                None => None,
            };
            let body = json!({"url": endpoint, "timeout_ms": timeout_ms, "schema": schema});
            c.call(
                Method::PUT,
                &format!("/v1/admin/kinds/{kind}"),
                Some(&body),
                &[],
            )
            .await?
        }
        KindsCommand::Pause { kind, scope } => {
            c.call(Method::POST, &scope.path(&kind, "pause"), None, &[])
                .await?
        }
        KindsCommand::Resume { kind, scope } => {
            c.call(Method::POST, &scope.path(&kind, "resume"), None, &[])
                .await?
        }
        KindsCommand::Pauses { all_tenants } => {
            let path = if all_tenants {
                "/v1/admin/pauses"
            } else {
                "/v1/pauses"
            };
            c.call(Method::GET, path, None, &[]).await?
        }
    };
    print(&out);
    Ok(())
}

pub(super) async fn schedules(target: Target, command: SchedulesCommand) -> anyhow::Result<()> {
    let c = client(&target)?;
    let out = match command {
        SchedulesCommand::Create {
            id,
            kind,
            cron,
            timezone,
            every,
            payload,
            catch_up,
            priority,
        } => {
            let mut body = json!({ "id": id, "kind": kind });
            if let Some(p) = payload {
                body["payload"] = serde_json::from_str(&p)
                    .context("--payload is not valid JSON (e.g. '{\"ms\": 500}')")?;
            }
            for (name, value) in [
                ("cron", cron),
                ("timezone", timezone),
                ("every", every),
                ("catch_up", catch_up),
            ] {
                if let Some(v) = value {
                    body[name] = json!(v);
                }
            }
            if let Some(p) = priority {
                body["priority"] = json!(p);
            }
            c.call(Method::POST, "/v1/schedules", Some(&body), &[])
                .await?
        }
        SchedulesCommand::List => c.call(Method::GET, "/v1/schedules", None, &[]).await?,
        SchedulesCommand::Get { id } => {
            c.call(Method::GET, &format!("/v1/schedules/{id}"), None, &[])
                .await?
        }
        SchedulesCommand::Delete { id } => {
            c.call(Method::DELETE, &format!("/v1/schedules/{id}"), None, &[])
                .await?;
            println!("schedule {id} deleted");
            return Ok(());
        }
        SchedulesCommand::Pause { id } => {
            c.call(
                Method::POST,
                &format!("/v1/schedules/{id}/pause"),
                None,
                &[],
            )
            .await?
        }
        SchedulesCommand::Resume { id } => {
            c.call(
                Method::POST,
                &format!("/v1/schedules/{id}/resume"),
                None,
                &[],
            )
            .await?
        }
    };
    print(&out);
    Ok(())
}

pub(super) async fn tenants(target: Target, command: TenantsCommand) -> anyhow::Result<()> {
    let c = client(&target)?;
    let out = match command {
        TenantsCommand::Share {
            tenant,
            weight,
            max_running,
        } => {
            let mut body = json!({ "weight": weight });
            if let Some(m) = max_running {
                body["max_running"] = json!(m);
            }
            c.call(
                Method::PUT,
                &format!("/v1/admin/tenants/{tenant}/share"),
                Some(&body),
                &[],
            )
            .await?
        }
        TenantsCommand::Show { tenant } => {
            c.call(
                Method::GET,
                &format!("/v1/admin/tenants/{tenant}/share"),
                None,
                &[],
            )
            .await?
        }
    };
    print(&out);
    Ok(())
}

/// Follows a job until its terminal event, printing a line per event.
async fn watch(c: &Client, id: &str) -> anyhow::Result<()> {
    let mut outcome = None;
    c.follow(&format!("/v1/jobs/{id}/events"), None, None, |ev| {
        let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
        let d = &data["data"];
        let line = match ev.event.as_str() {
            "job.progressed" => {
                let (cur, total) = (d["current"].as_u64().unwrap_or(0), d["total"].as_u64());
                let bar = total.filter(|t| *t > 0).map(|t| {
                    let filled = (cur.min(t) * 20 / t) as usize;
                    format!("[{}{}] ", "#".repeat(filled), ".".repeat(20 - filled))
                });
                format!(
                    "progress {}{cur}{} {}",
                    bar.unwrap_or_default(),
                    total.map(|t| format!("/{t}")).unwrap_or_default(),
                    d["message"].as_str().unwrap_or_default()
                )
            }
            "job.started" => format!("started (attempt {})", d["attempt"]),
            "job.failed" => format!("attempt {} failed: {}", d["attempt"], d["error"]["message"]),
            "job.retry_scheduled" => format!("retry scheduled at {}", d["run_at"]),
            "job.succeeded" => format!("succeeded: {}", d["result"]),
            "job.dead_lettered" => format!("failed for good: {}", d["reason"]),
            other => other.trim_start_matches("job.").to_owned(),
        };
        println!("{} {line}", data["time"].as_str().unwrap_or_default());
        if matches!(
            ev.event.as_str(),
            "job.succeeded" | "job.dead_lettered" | "job.cancelled"
        ) {
            outcome = Some(ev.event);
        }
        true
    })
    .await?;
    match outcome.as_deref() {
        Some("job.succeeded") => Ok(()),
        Some(other) => anyhow::bail!("job {id} ended: {}", other.trim_start_matches("job.")),
        None => anyhow::bail!(
            "the event stream ended before job {id} did; run the command again to resume"
        ),
    }
}

#[derive(Debug, Subcommand)]
pub(super) enum BatchesCommand {
    /// Submit the jobs of a JSON Lines file (`-` for stdin) as one batch, in pages of 1,000,
    /// then seal it; the callback runs once every member has ended.
    Submit {
        /// One `POST /v1/jobs` body per line (no `idempotency_key`).
        #[arg(long)]
        file: std::path::PathBuf,
        /// The callback's kind (default: the built-in `batch`, whose result is the counts).
        #[arg(long)]
        callback: Option<String>,
        /// The callback's payload as JSON.
        #[arg(long, requires = "callback")]
        callback_payload: Option<String>,
    },
    /// Show a batch and its members' progress.
    Get {
        /// Batch id.
        id: String,
    },
    /// List a batch's members.
    Jobs {
        /// Batch id.
        id: String,
        /// Only this status.
        #[arg(long)]
        status: Option<String>,
        /// Page size (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Seal an open batch: no member can be added, its callback runs once all have ended.
    Seal {
        /// Batch id.
        id: String,
    },
    /// Cancel a batch: its callback, and every member not ended yet.
    Cancel {
        /// Batch id.
        id: String,
    },
}

/// Reads a JSON Lines file of jobs (`-`: stdin), skipping blank lines: each job with its line's
/// number and text.
fn read_jobs(file: &std::path::Path) -> anyhow::Result<Vec<(usize, String, Value)>> {
    use std::io::BufRead as _;
    let input: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
        ))
    };
    let mut jobs = Vec::new();
    for (n, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let job = serde_json::from_str(&line)
            .with_context(|| format!("line {}: not JSON (one job object per line)", n + 1))?;
        jobs.push((n + 1, line, job));
    }
    Ok(jobs)
}

/// Whether `e` is the API's `409`.
fn ended_meanwhile(e: &anyhow::Error) -> bool {
    e.downcast_ref::<crate::client::ApiFailure>()
        .is_some_and(|f| f.status == 409)
}

/// A list's path with its `status` filter, `limit` and `cursor`.
fn page_path(path: &str, status: Option<String>, limit: u32, cursor: Option<String>) -> String {
    let mut q = vec![format!("limit={limit}")];
    q.extend(status.map(|s| format!("status={s}")));
    q.extend(cursor.map(|c| format!("cursor={c}")));
    format!("{path}?{}", q.join("&"))
}

/// A call answered `429` or `503` is sent again after the `Retry-After` the server asks for (said
/// on stderr), up to 60 times: how a page of many waits for the tenant's rate.
async fn call_patiently(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> anyhow::Result<Value> {
    let mut waits = 0;
    loop {
        match c.call(method.clone(), path, body, headers).await {
            Ok(out) => return Ok(out),
            Err(e) => {
                let failure = e.downcast_ref::<crate::client::ApiFailure>().cloned();
                match failure {
                    Some(f) if matches!(f.status, 429 | 503) && waits < 60 => {
                        let wait = f.retry_after.unwrap_or(Duration::from_secs(1));
                        eprintln!(
                            "{} {}: waiting {} s as the server asks (Retry-After)",
                            f.status,
                            f.detail,
                            wait.as_secs()
                        );
                        tokio::time::sleep(wait).await;
                        waits += 1;
                    }
                    _ => return Err(e),
                }
            }
        }
    }
}

pub(super) async fn batches(target: Target, command: BatchesCommand) -> anyhow::Result<()> {
    let c = client(&target)?;
    let out = match command {
        BatchesCommand::Submit {
            file,
            callback,
            callback_payload,
        } => {
            let jobs: Vec<Value> = read_jobs(&file)?.into_iter().map(|(_, _, j)| j).collect();
            let mut pages = jobs.chunks(producers::MAX_BATCH);
            let mut body = json!({ "jobs": pages.next().unwrap_or_default(), "seal": false });
            if let Some(kind) = callback {
                body["callback"] = json!({ "kind": kind });
                if let Some(p) = callback_payload {
                    body["callback"]["payload"] = serde_json::from_str(&p).context(
                        "--callback-payload is not valid JSON (e.g. '{\"to\": \"ops\"}')",
                    )?;
                }
            }
            // Each page under an idempotency key of its own: a page retried after a lost answer
            // adds its members once.
            let run = uuid::Uuid::now_v7();
            let key = format!("batch-{run}");
            let created = c
                .call(
                    Method::POST,
                    "/v1/batches",
                    Some(&body),
                    &[("Idempotency-Key", &key)],
                )
                .await?;
            let id = created["id"]
                .as_str()
                .context("the server answered no batch id")?
                .to_owned();
            for (n, page) in pages.enumerate() {
                let key = format!("batch-{run}-page-{}", n + 1);
                call_patiently(
                    &c,
                    Method::POST,
                    &format!("/v1/batches/{id}/jobs"),
                    Some(&json!({ "jobs": page })),
                    &[("Idempotency-Key", &key)],
                )
                .await?;
            }
            c.call(Method::POST, &format!("/v1/batches/{id}/seal"), None, &[])
                .await?
        }
        BatchesCommand::Get { id } => {
            c.call(Method::GET, &format!("/v1/batches/{id}"), None, &[])
                .await?
        }
        BatchesCommand::Jobs {
            id,
            status,
            limit,
            cursor,
            output,
        } => {
            let path = page_path(&format!("/v1/batches/{id}/jobs"), status, limit, cursor);
            let page = c.call(Method::GET, &path, None, &[]).await?;
            return Ok(output.print(&page, View::Jobs)?);
        }
        BatchesCommand::Seal { id } => {
            c.call(Method::POST, &format!("/v1/batches/{id}/seal"), None, &[])
                .await?
        }
        BatchesCommand::Cancel { id } => {
            // A request cancels up to 10,000 members: again while it says there are more.
            let path = format!("/v1/batches/{id}/cancel");
            let mut total = 0;
            let mut first = true;
            loop {
                let out = match call_patiently(&c, Method::POST, &path, None, &[]).await {
                    Ok(out) => out,
                    // After a first round, a 409 says every member has ended meanwhile.
                    Err(e) if !first && ended_meanwhile(&e) => json!({ "more": false }),
                    Err(e) => return Err(e),
                };
                first = false;
                total += out["cancelled"].as_u64().unwrap_or(0);
                if out["more"] != true {
                    break json!({ "id": id, "cancelled": total });
                }
            }
        }
    };
    print(&out);
    Ok(())
}

/// Submits a JSON Lines file of jobs in batches, as fast as the tenant's rate allows: a `429` or
/// `503` is waited out (`Retry-After`, said on stderr) and the batch sent again, a batch larger
/// than the tenant may send at once is split. A line without an `idempotency_key` gets one made
/// from its number and content, so running the same file again (within the 24 h the keys are
/// kept) adds only what did not get in. Refused lines are reported on stderr; a summary ends the
/// run, also when it stops early.
async fn submit_file(c: &Client, file: &std::path::Path) -> anyhow::Result<()> {
    let mut jobs = Vec::new();
    for (n, line, mut job) in read_jobs(file)? {
        if let Some(fields) = job.as_object_mut() {
            if !fields.contains_key("idempotency_key") {
                let digest =
                    <sha2::Sha256 as sha2::Digest>::digest(format!("{n}:{line}").as_bytes());
                fields.insert(
                    "idempotency_key".into(),
                    json!(format!("line-{n}-{}", &hex::encode(digest)[..32])),
                );
            }
        }
        jobs.push((n, job));
    }
    let total = jobs.len();
    let mut tally = Tally::default();
    let mut bar = crate::progress::Progress::new(total as u64, "jobs");
    let mut size = producers::MAX_BATCH;
    let mut next = 0;
    let mut waits = 0;
    while next < total {
        let chunk = &jobs[next..(next + size).min(total)];
        let body = json!({ "jobs": chunk.iter().map(|(_, j)| j).collect::<Vec<_>>() });
        let out = match c
            .call(Method::POST, "/v1/jobs/batch", Some(&body), &[])
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let failure = e.downcast_ref::<crate::client::ApiFailure>().cloned();
                match failure {
                    // Larger than the tenant may submit at once: smaller batches.
                    Some(f) if f.status == 429 && f.detail.contains("at once") && size > 1 => {
                        size = (size / 2).max(1);
                        continue;
                    }
                    // Over the rate, or the server busy: wait as told, then the same batch again.
                    Some(f) if matches!(f.status, 429 | 503) && waits < 60 => {
                        let wait = f.retry_after.unwrap_or(Duration::from_secs(1));
                        bar.suspend(|| {
                            eprintln!(
                                "{} {}: waiting {} s as the server asks (Retry-After)",
                                f.status,
                                f.detail,
                                wait.as_secs()
                            )
                        });
                        tokio::time::sleep(wait).await;
                        waits += 1;
                        continue;
                    }
                    _ => {
                        bar.finish();
                        tally.print(total, Some(chunk[0].0));
                        return Err(e.context(format!(
                            "stopped at line {}; run the same command again to submit the rest",
                            chunk[0].0
                        )));
                    }
                }
            }
        };
        waits = 0;
        for ((line, _), item) in chunk
            .iter()
            .zip(out["items"].as_array().into_iter().flatten())
        {
            match item["status"].as_u64() {
                Some(202) => tally.accepted += 1,
                Some(200) => tally.repeated += 1,
                status => {
                    tally.refused += 1;
                    bar.suspend(|| {
                        eprintln!(
                            "line {line}: {} {}",
                            status.unwrap_or(0),
                            item["problem"]["detail"].as_str().unwrap_or_default()
                        )
                    });
                }
            }
        }
        next += chunk.len();
        bar.set(next as u64, total as u64);
    }
    bar.finish();
    tally.print(total, None);
    if tally.refused > 0 {
        anyhow::bail!("{} of {total} jobs were refused (see above)", tally.refused);
    }
    Ok(())
}

/// What became of a file's jobs.
#[derive(Debug, Default)]
struct Tally {
    accepted: usize,
    repeated: usize,
    refused: usize,
}

impl Tally {
    /// The summary line; `stopped_at`: the first line not sent.
    fn print(&self, total: usize, stopped_at: Option<usize>) {
        let sent = self.accepted + self.repeated + self.refused;
        let end = match stopped_at {
            Some(line) => format!("; stopped at line {line}, {} not sent", total - sent),
            None => String::new(),
        };
        println!(
            "{} accepted, {} already submitted, {} refused, of {total} jobs{end}",
            self.accepted, self.repeated, self.refused
        );
    }
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

pub(super) async fn jobs(target: Target, command: JobsCommand) -> anyhow::Result<()> {
    let c = client(&target)?;
    let out = match command {
        JobsCommand::Submit {
            file: Some(file), ..
        } => return submit_file(&c, &file).await,
        JobsCommand::Submit {
            kind: Some(kind),
            payload,
            max_attempts,
            timeout_ms,
            run_at,
            webhook,
            idempotency_key,
            priority,
            concurrency_key,
            concurrency_limit,
            depends_on,
            file: None,
        } => {
            let mut body = json!({ "kind": kind });
            if !depends_on.is_empty() {
                body["depends_on"] = json!(depends_on);
            }
            if let Some(p) = priority {
                body["priority"] = json!(p);
            }
            if let Some(key) = concurrency_key {
                body["concurrency"] = json!({ "key": key, "limit": concurrency_limit });
            }
            if let Some(p) = payload {
                body["payload"] = serde_json::from_str(&p)
                    .context("--payload is not valid JSON (e.g. '{\"ms\": 500}')")?;
            }
            if let Some(m) = max_attempts {
                body["max_attempts"] = json!(m);
            }
            if let Some(t) = timeout_ms {
                body["timeout_ms"] = json!(t);
            }
            if let Some(r) = run_at {
                body["run_at"] = json!(r);
            }
            if let Some(w) = webhook {
                body["webhook"] = json!({ "url": w });
            }
            let headers: Vec<(&str, &str)> = idempotency_key
                .as_deref()
                .map(|k| vec![("Idempotency-Key", k)])
                .unwrap_or_default();
            c.call(Method::POST, "/v1/jobs", Some(&body), &headers)
                .await?
        }
        JobsCommand::Submit { kind: None, .. } => {
            anyhow::bail!("name a kind to submit, or --file with jobs")
        }
        JobsCommand::Get { id, output } => {
            let job = c
                .call(Method::GET, &format!("/v1/jobs/{id}"), None, &[])
                .await?;
            return Ok(output.print(&job, View::Job)?);
        }
        JobsCommand::List {
            status,
            kind,
            limit,
            cursor,
            output,
        } => {
            let mut q = vec![format!("limit={limit}")];
            q.extend(status.map(|s| format!("status={s}")));
            q.extend(kind.map(|k| format!("kind={k}")));
            q.extend(cursor.map(|c| format!("cursor={c}")));
            let page = c
                .call(Method::GET, &format!("/v1/jobs?{}", q.join("&")), None, &[])
                .await?;
            return Ok(output.print(&page, View::Jobs)?);
        }
        JobsCommand::Cancel { id } => {
            c.call(Method::POST, &format!("/v1/jobs/{id}/cancel"), None, &[])
                .await?
        }
        JobsCommand::Children {
            id,
            status,
            limit,
            cursor,
            output,
        } => {
            let path = page_path(&format!("/v1/jobs/{id}/children"), status, limit, cursor);
            let page = c.call(Method::GET, &path, None, &[]).await?;
            return Ok(output.print(&page, View::Jobs)?);
        }
        JobsCommand::Events { id, output } => {
            let events = c
                .call(Method::GET, &format!("/v1/jobs/{id}/events"), None, &[])
                .await?;
            return Ok(output.print(&events, View::Events)?);
        }
        JobsCommand::Watch { id } => return watch(&c, &id).await,
    };
    print(&out);
    Ok(())
}
