//! The processes under test, and the faults done to them.

use std::time::Duration;

use async_nats::jetstream;
use events::command::RunJob;
use events::{Command, Envelope, JobEvent, JobId, JobKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::load::Recent;
use crate::Tally;
use testkit::services::{OwnNats, OwnPostgres, PgProxy};
use testkit::{Env, Proc};

/// The role processes: two APIs (on fixed ports, so clients keep their addresses across
/// restarts), two workers, a projector and a notifier.
pub(crate) struct Roles {
    pub(crate) env: Env,
    slots: Vec<Slot>,
    pub(crate) api_urls: Vec<String>,
}

struct Slot {
    role: &'static str,
    addr: Option<String>,
    proc: Mutex<Option<Proc>>,
}

impl Roles {
    pub(crate) async fn start(env: Env) -> Self {
        let mut slots = Vec::new();
        let mut api_urls = Vec::new();
        for role in ["api", "api", "worker", "worker", "projector", "notifier"] {
            let addr = (role == "api").then(|| {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("a free port")
                    .port();
                format!("127.0.0.1:{port}")
            });
            if let Some(a) = &addr {
                api_urls.push(format!("http://{a}"));
            }
            slots.push(Slot {
                role,
                addr,
                proc: Mutex::new(None),
            });
        }
        let roles = Self {
            env,
            slots,
            api_urls,
        };
        roles.restore_all().await;
        // Ready when every API answers.
        let http = reqwest::Client::new();
        for url in &roles.api_urls {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while http.get(format!("{url}/healthz")).send().await.is_err() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the API at {url} did not start"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        roles
    }

    async fn spawn(&self, slot: &Slot) -> Proc {
        match &slot.addr {
            Some(addr) => {
                self.env
                    .spawn_with(slot.role, &[("CONVEYOR_HTTP_ADDR", addr)])
                    .await
            }
            None => self.env.spawn(slot.role).await,
        }
    }

    /// Starts every role that is not running.
    pub(crate) async fn restore_all(&self) {
        for slot in &self.slots {
            let mut proc = slot.proc.lock().await;
            let running = proc.as_mut().is_some_and(|p| p.is_running());
            if !running {
                *proc = Some(self.spawn(slot).await);
            }
        }
    }

    /// SIGKILL of slot `i`, then a restart after `down`.
    async fn kill_and_restart(&self, i: usize, down: Duration) {
        let slot = &self.slots[i];
        let mut proc = slot.proc.lock().await;
        if let Some(p) = proc.as_mut() {
            p.kill().await;
        }
        tokio::time::sleep(down).await;
        *proc = Some(self.spawn(slot).await);
    }

    /// SIGSTOP of slot `i` for `paused`, then SIGCONT.
    async fn pause(&self, i: usize, paused: Duration) {
        let proc = self.slots[i].proc.lock().await;
        let Some(pid) = proc.as_ref().map(|p| p.pid()) else {
            return;
        };
        signal("-STOP", pid);
        tokio::time::sleep(paused).await;
        signal("-CONT", pid);
    }

    pub(crate) async fn stop(&self) {
        for slot in &self.slots {
            if let Some(p) = slot.proc.lock().await.as_mut() {
                p.kill().await;
            }
        }
    }
}

fn signal(sig: &str, pid: u32) {
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status();
}

/// Injects faults on a schedule drawn from the seed until the run's time is over, then waits
/// for the faults still under way (restarts, pauses) to finish.
pub(crate) async fn inject(
    roles: &std::sync::Arc<Roles>,
    nats: &mut OwnNats,
    pg: &OwnPostgres,
    proxy: &PgProxy,
    recent: &Recent,
    tally: &Tally,
    settings: crate::Settings,
) {
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let end = tokio::time::Instant::now() + Duration::from_secs(settings.seconds);
    let mut running = JoinSet::new();
    let client = async_nats::connect(nats.url())
        .await
        .expect("connect to NATS");
    let js = jetstream::new(client);
    // A quiet start, so the first jobs show the system working before anything breaks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    while tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..2500))).await;
        let roll = rng.random_range(0..100);
        match roll {
            0..=29 => {
                let i = rng.random_range(0..roles.slots.len());
                let down = Duration::from_millis(rng.random_range(0..1500));
                tally.add(&format!("fault SIGKILL {}", roles.slots[i].role));
                let roles = roles.clone();
                running.spawn(async move { roles.kill_and_restart(i, down).await });
            }
            30..=37 => {
                let n = rng.random_range(2..=3);
                let mut picked: Vec<usize> = (0..roles.slots.len()).collect();
                for _ in 0..n {
                    let i = picked.remove(rng.random_range(0..picked.len()));
                    let down = Duration::from_millis(rng.random_range(0..1500));
                    tally.add(&format!(
                        "fault SIGKILL {} (with others)",
                        roles.slots[i].role
                    ));
                    let roles = roles.clone();
                    running.spawn(async move { roles.kill_and_restart(i, down).await });
                }
                tally.add("fault SIGKILL of several at once");
            }
            38..=47 => {
                // A worker frozen past the ack wait (2 s): its jobs go to the other worker, and
                // what it publishes when it wakes up must change nothing.
                let i = 2 + rng.random_range(0..2);
                let paused = Duration::from_millis(rng.random_range(2500..4500));
                tally.add("fault SIGSTOP worker past the ack wait");
                let roles = roles.clone();
                running.spawn(async move { roles.pause(i, paused).await });
            }
            48..=55 => {
                tally.add("fault NATS server killed and restarted");
                nats.kill().await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..3000))).await;
                nats.restart().await;
            }
            56..=59 => {
                tally.add("fault Postgres connections terminated");
                terminate_connections(&roles.env).await;
            }
            60..=63 => {
                tally.add("fault Postgres crashed and restarted");
                pg.crash().await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(500..3000))).await;
                pg.start_again().await;
            }
            64..=69 => {
                tally.add("fault Postgres unreachable for seconds");
                proxy.cut();
                tokio::time::sleep(Duration::from_millis(rng.random_range(1000..5000))).await;
                proxy.restore().await;
            }
            70..=79 => {
                if let Some(job) = recent.pick(&mut rng) {
                    let what = duplicate(&js, &roles.env, job, rng.random_range(0..3)).await;
                    tally.add(&format!("fault duplicate {what}"));
                }
            }
            _ => {
                let what = poison(&js, &roles.env, rng.random_range(0..4)).await;
                tally.add(&format!("fault poison: {what}"));
            }
        }
    }
    while running.join_next().await.is_some() {}
}

/// Drops every connection to the test's database (what a Postgres restart does to clients).
async fn terminate_connections(env: &Env) {
    let db = env.db().await;
    let _ = sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&db)
    .await;
    db.close().await;
}

/// Publishes a second copy of something of `job`'s: its first run command (as a publisher
/// retrying without a message id would, so JetStream delivers it again, to the scheduler), or its `job.submitted`
/// or latest `job.started` event, with its message id (JetStream must drop it) or without (it is
/// stored twice, and the read models must not change).
async fn duplicate(js: &jetstream::Context, env: &Env, job: JobId, how: u32) -> &'static str {
    let ns = events::Namespace::parse(&env.ns).expect("namespace");
    let tenant = events::Tenant::parse("acme").expect("tenant");
    let Ok(stream) = js.get_stream(ns.events_stream()).await else {
        return "skipped (NATS down)";
    };
    let name = if how == 0 { "submitted" } else { "started" };
    let Ok(msg) = stream
        .direct_get_last_for_subject(ns.job_event(&tenant, job, name))
        .await
    else {
        return "skipped (event not found)";
    };
    match how {
        0 => {
            let Ok(ev) = bus::decode_event(Some(&msg.headers), &msg.payload) else {
                return "skipped (unreadable)";
            };
            let JobEvent::Submitted(s) = &ev.payload else {
                return "skipped (not a submission)";
            };
            let cmd = Envelope::new(
                "/chaos",
                job,
                tenant.clone(),
                ev.kind.clone(),
                Command::Run(RunJob::first(s)),
            );
            // Where every publisher of a run command sends it: to the scheduler.
            let _ = publish(js, ns.wait_command_of(&ev.kind, job), cmd.to_json(), None).await;
            "run command (no message id)"
        }
        1 => {
            let _ = publish(
                js,
                msg.subject.to_string(),
                msg.payload.to_vec(),
                Some(msg.headers),
            )
            .await;
            "job.started (same message id)"
        }
        _ => {
            let mut headers = async_nats::HeaderMap::new();
            for (k, v) in msg.headers.iter() {
                if AsRef::<str>::as_ref(k) != "Nats-Msg-Id" {
                    for v in v {
                        headers.append(k.clone(), v.clone());
                    }
                }
            }
            let _ = publish(
                js,
                msg.subject.to_string(),
                msg.payload.to_vec(),
                Some(headers),
            )
            .await;
            "job.started (no message id)"
        }
    }
}

/// Publishes a poison message: garbage on a run subject or an event subject, a well-formed
/// CloudEvent of a type conveyor does not know, or a job whose handler panics (see the load).
async fn poison(js: &jetstream::Context, env: &Env, which: u32) -> &'static str {
    let ns = events::Namespace::parse(&env.ns).expect("namespace");
    let tenant = events::Tenant::parse("acme").expect("tenant");
    let job = JobId::new();
    let garbage = b"\x00\xffnot a cloudevent {".to_vec();
    match which {
        0 => {
            // Where run commands are published: the scheduler must drop it.
            let kind = JobKind::parse("noop").expect("kind");
            let _ = publish(js, ns.wait_command_of(&kind, job), garbage, None).await;
            "garbage run command"
        }
        1 => {
            let _ = publish(js, ns.job_event(&tenant, job, "succeeded"), garbage, None).await;
            "garbage job.succeeded"
        }
        2 => {
            let _ = publish(js, ns.job_event(&tenant, job, "submitted"), garbage, None).await;
            "garbage job.submitted"
        }
        _ => {
            let ce = serde_json::json!({
                "specversion": "1.0",
                "id": uuid::Uuid::new_v4().to_string(),
                "source": "/chaos",
                "type": "dev.conveyor.job.exploded",
                "subject": job.to_string(),
                "time": chrono::Utc::now(),
                "datacontenttype": "application/json",
                "tenant": "acme",
                "data": { "boom": true },
            });
            let _ = publish(
                js,
                ns.job_event(&tenant, job, "exploded"),
                serde_json::to_vec(&ce).expect("json"),
                None,
            )
            .await;
            "CloudEvent of an unknown type"
        }
    }
}

async fn publish(
    js: &jetstream::Context,
    subject: String,
    payload: Vec<u8>,
    headers: Option<async_nats::HeaderMap>,
) -> Result<(), String> {
    let ack = match headers {
        Some(h) => js.publish_with_headers(subject, h, payload.into()).await,
        None => js.publish(subject, payload.into()).await,
    }
    .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(5), ack)
        .await
        .map_err(|_| "no ack".to_owned())?
        .map(drop)
        .map_err(|e| e.to_string())
}
