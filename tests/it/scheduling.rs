//! What runs next: tenants' fair share, priorities, concurrency keys (across worker processes,
//! through a SIGKILL and a scheduler takeover), and pausing. Each asserts order or overlap from
//! the event log (stream order), never a wall-clock time.

use std::collections::HashMap;
use std::time::Duration;

use bus::jetstream::DeliverPolicy;
use events::JobEvent;
use futures::StreamExt;
use serde_json::{json, Value};
use testkit::{id_of, Env};

use crate::BUILD;

/// One job's life as the log tells it.
#[derive(Debug, Default, Clone)]
struct Life {
    tenant: String,
    /// Stream sequence of its first `job.started`, and which worker ran it.
    started: Option<(u64, String)>,
    /// The time of its first `job.started`.
    started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Stream sequence of its terminal event.
    ended: Option<u64>,
}

/// A `job.submitted` of a schedule's tick.
#[derive(Debug, Clone)]
struct Tick {
    schedule: String,
    at: chrono::DateTime<chrono::Utc>,
    job: String,
}

/// The namespace's event log, read as it grows.
struct Log {
    lives: HashMap<String, Life>,
    /// Every `job.submitted` of a schedule, in log order (a repeat would show twice).
    ticks: Vec<Tick>,
    messages:
        std::pin::Pin<Box<dyn futures::Stream<Item = bus::Result<bus::jetstream::Message>> + Send>>,
}

impl Log {
    async fn open(env: &Env) -> Self {
        let js = env.js().await;
        let stream = js
            .get_stream(format!("{}_EVENTS", env.ns.to_uppercase()))
            .await
            .expect("EVENTS stream");
        let (messages, _) =
            bus::ordered::ordered(stream, format!("{}.events.>", env.ns), DeliverPolicy::All)
                .await
                .expect("read EVENTS");
        Self {
            lives: HashMap::new(),
            ticks: Vec::new(),
            messages: Box::pin(messages),
        }
    }

    /// Reads on until `done` holds (two minutes at most).
    async fn until(&mut self, what: &str, done: impl Fn(&HashMap<String, Life>) -> bool) {
        self.until_log(what, |log| done(&log.lives)).await
    }

    /// Reads on until `done` holds of the whole log (two minutes at most).
    async fn until_log(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while !done(self) {
            let next = tokio::time::timeout_at(deadline, self.messages.next()).await;
            let msg = match next {
                Ok(Some(Ok(msg))) => msg,
                Ok(other) => panic!("reading the log failed: {other:?}"),
                Err(_) => panic!(
                    "the log never showed {what} within two minutes ({} jobs, {} schedule ticks seen)",
                    self.lives.len(),
                    self.ticks.len()
                ),
            };
            let seq = msg.info().expect("a JetStream message").stream_sequence;
            let ev = bus::decode_event(msg.headers.as_ref(), &msg.payload).expect("an event");
            let life = self.lives.entry(ev.job.to_string()).or_default();
            life.tenant = ev.tenant.to_string();
            match ev.payload {
                JobEvent::Submitted(s) => {
                    if let Some(from) = s.schedule {
                        self.ticks.push(Tick {
                            schedule: from.id,
                            at: from.tick,
                            job: ev.job.to_string(),
                        });
                    }
                }
                JobEvent::Started(s) if life.started.is_none() => {
                    life.started = Some((seq, s.worker));
                    life.started_at = Some(ev.time);
                }
                e if e.is_terminal() => life.ended = Some(seq),
                _ => {}
            }
        }
    }
}

fn started_of(lives: &HashMap<String, Life>, tenant: &str) -> usize {
    lives
        .values()
        .filter(|l| l.tenant == tenant && l.started.is_some())
        .count()
}

fn sleep_job(ms: u64) -> Value {
    json!({"kind": "sleep", "payload": {"ms": ms, "steps": 1}})
}

/// A deployment whose one worker runs 8 jobs at once: a backlog of thousands takes seconds.
async fn small_worker() -> (Env, testkit::Proc, testkit::Api) {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_WORKER_CONCURRENCY", "8")
        .set("CONVEYOR_RATE_LIMIT", "100000")
        .set("CONVEYOR_RATE_BURST", "100000");
    let (dev, api) = env.spawn_http("dev").await;
    (env, dev, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_tenant_is_not_stuck_behind_a_large_backlog() {
    let (env, _dev, acme) = small_worker().await;
    let beta = acme.with_token(&env.token("beta", "jobs:write jobs:read"));
    let mut log = Log::open(&env).await;
    for _ in 0..5 {
        acme.submit_batch(vec![sleep_job(20); 1000]).await;
    }
    beta.submit_batch(vec![sleep_job(20); 20]).await;
    log.until("beta's 20 jobs started", |l| started_of(l, "beta") == 20)
        .await;
    let last_beta = log
        .lives
        .values()
        .filter(|l| l.tenant == "beta")
        .filter_map(|l| l.started.as_ref().map(|(seq, _)| *seq))
        .max()
        .unwrap();
    let acme_before = log
        .lives
        .values()
        .filter(|l| l.tenant == "acme")
        .filter(|l| l.started.as_ref().is_some_and(|(seq, _)| *seq < last_beta))
        .count();
    eprintln!("acme jobs started before beta's last: {acme_before} of 5000");
    assert!(
        acme_before <= 1000,
        "{acme_before} of acme's 5000 jobs started before beta's last one: beta waited behind acme's backlog"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_high_priority_job_overtakes_a_waiting_backlog() {
    let (env, _dev, api) = small_worker().await;
    let mut log = Log::open(&env).await;
    for _ in 0..5 {
        api.submit_batch(vec![sleep_job(20); 1000]).await;
    }
    let mut urgent = sleep_job(20);
    urgent["priority"] = json!(10);
    let urgent = id_of(&api.submit(urgent).await);
    log.until("the urgent job started", |l| {
        l.get(&urgent).is_some_and(|u| u.started.is_some())
    })
    .await;
    let at = log.lives[&urgent].started.as_ref().unwrap().0;
    let before = log
        .lives
        .iter()
        .filter(|(id, l)| **id != urgent && l.started.as_ref().is_some_and(|(seq, _)| *seq < at))
        .count();
    eprintln!("backlog jobs started before the urgent one: {before} of 5000");
    assert!(
        before <= 1000,
        "{before} of the 5000 waiting jobs started before the priority-10 job"
    );
    // Bad priorities are refused, not clamped.
    let mut bad = sleep_job(1);
    bad["priority"] = json!(1000);
    let (status, problem) = api.post("/v1/jobs", &bad).await;
    assert_eq!(status, 422, "{problem}");
}

/// The worker process (by pid) that ran `job`, from its `job.started`'s worker name
/// (`<host>-<pid>`).
fn pid_of(life: &Life) -> u32 {
    let worker = &life.started.as_ref().expect("started").1;
    worker
        .rsplit('-')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in worker name {worker}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concurrency_key_never_runs_two_at_once_across_workers_and_crashes() {
    let mut env = Env::new(BUILD).await;
    // A killed worker's job comes back after 3 s, not 30.
    env.set("CONVEYOR_ACK_WAIT_MS", "3000")
        .set("CONVEYOR_RATE_LIMIT", "100000");
    let (_api, api) = env.spawn_http("api").await;
    let _projector = env.spawn("projector").await;
    let mut workers: Vec<(testkit::Proc, String)> = Vec::new();
    for _ in 0..3 {
        workers.push(env.spawn_ops("worker").await);
    }
    let mut log = Log::open(&env).await;
    let keyed = |ms: u64| {
        let mut job = sleep_job(ms);
        job["concurrency"] = json!({"key": "account-42", "limit": 1});
        job
    };
    // A long job first, killed mid-run with its worker.
    let long = id_of(&api.submit(keyed(2_000)).await);
    api.submit_batch(vec![keyed(20); 199]).await;
    log.until("the long job started", |l| {
        l.get(&long).is_some_and(|j| j.started.is_some())
    })
    .await;
    let victim = pid_of(&log.lives[&long]);
    let at = workers
        .iter()
        .position(|(p, _)| p.pid() == victim)
        .expect("the long job ran in one of the workers");
    workers[at].0.kill().await;
    workers[at] = env.spawn_ops("worker").await;

    // Then the active scheduler too, mid-backlog, wherever it runs.
    log.until("a quarter of the jobs ended", |l| {
        l.values().filter(|j| j.ended.is_some()).count() >= 50
    })
    .await;
    let mut killed_scheduler = false;
    for (proc, ops) in workers.iter_mut() {
        let metrics = reqwest::get(format!("{ops}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap();
        if metrics
            .lines()
            .any(|l| l.starts_with("conveyor_scheduler_leader") && l.ends_with(" 1"))
        {
            proc.kill().await;
            killed_scheduler = true;
            break;
        }
    }
    assert!(
        killed_scheduler,
        "no worker process said it was the active scheduler"
    );

    log.until("all 200 jobs ended", |l| {
        l.values().filter(|j| j.ended.is_some()).count() == 200
    })
    .await;
    let done = api.wait_terminal(&long).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    // In log order, never two of the key's jobs between `started` and their end.
    let mut edges: Vec<(u64, i32)> = log
        .lives
        .values()
        .flat_map(|l| [(l.started.as_ref().unwrap().0, 1), (l.ended.unwrap(), -1)])
        .collect();
    edges.sort();
    let mut running = 0;
    for (seq, d) in edges {
        running += d;
        assert!(
            running <= 1,
            "two jobs of concurrency key account-42 ran at once (seq {seq})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_kind_keeps_its_jobs_queued_until_resumed() {
    let env = Env::new(BUILD).await;
    let (_dev, acme) = env.spawn_http("dev").await;
    let beta = acme.with_token(&env.token("beta", "jobs:write jobs:read"));
    let operator = acme.with_token(&env.token("ops", "operator"));

    // A tenant pauses its own jobs of a kind; another tenant's run on.
    let (status, paused) = acme.post("/v1/kinds/noop/pause", &json!({})).await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["paused"], true);
    let mut acme_jobs = Vec::new();
    for _ in 0..3 {
        acme_jobs.push(id_of(&acme.submit(json!({"kind": "noop"})).await));
    }
    let other = id_of(&beta.submit(json!({"kind": "noop"})).await);
    assert_eq!(beta.wait_terminal(&other).await["status"], "succeeded");
    // A job of another kind, submitted after, has run: the paused ones were passed over.
    let after = id_of(
        &acme
            .submit(json!({"kind": "sleep", "payload": {"ms": 1}}))
            .await,
    );
    assert_eq!(acme.wait_terminal(&after).await["status"], "succeeded");
    for id in &acme_jobs {
        let timeline = acme.timeline(id).await;
        assert!(
            !timeline.contains(&"started".to_owned()),
            "job {id} started while paused: {timeline:?}"
        );
    }
    let (_, listed) = acme.get("/v1/pauses").await;
    assert_eq!(listed["items"][0]["kind"], "noop", "{listed}");
    assert_eq!(listed["items"][0]["tenant"], "acme", "{listed}");

    // An operator pauses the kind for every tenant; the tenant's own resume does not lift it.
    assert_eq!(
        acme.post("/v1/admin/kinds/noop/pause", &json!({})).await.0,
        403
    );
    let (status, all) = operator
        .post("/v1/admin/kinds/noop/pause", &json!({}))
        .await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["tenant"], Value::Null);
    assert_eq!(acme.post("/v1/kinds/noop/resume", &json!({})).await.0, 200);
    let beta_held = id_of(&beta.submit(json!({"kind": "noop"})).await);
    let after = id_of(
        &beta
            .submit(json!({"kind": "sleep", "payload": {"ms": 1}}))
            .await,
    );
    assert_eq!(beta.wait_terminal(&after).await["status"], "succeeded");
    for id in acme_jobs.iter().chain([&beta_held]) {
        assert_eq!(
            acme_or(&acme, &beta, id).await,
            "queued",
            "job {id} started while paused for all"
        );
    }
    let (_, every) = operator.get("/v1/admin/pauses").await;
    assert_eq!(every["items"].as_array().map(Vec::len), Some(1), "{every}");

    // Resumed: everything held runs.
    assert_eq!(
        operator
            .post("/v1/admin/kinds/noop/resume", &json!({}))
            .await
            .0,
        200
    );
    for id in &acme_jobs {
        assert_eq!(acme.wait_terminal(id).await["status"], "succeeded");
    }
    assert_eq!(beta.wait_terminal(&beta_held).await["status"], "succeeded");
    let (status, bad) = operator
        .post(
            "/v1/admin/kinds/noop/pause?tenant=Not%20A%20Tenant",
            &json!({}),
        )
        .await;
    assert_eq!(status, 422, "{bad}");

    // An operator's pause of one tenant outlasts that tenant's own resume.
    let (status, one) = operator
        .post("/v1/admin/kinds/noop/pause?tenant=acme", &json!({}))
        .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["by_operator"], true, "{one}");
    assert_eq!(acme.post("/v1/kinds/noop/resume", &json!({})).await.0, 200);
    let held = id_of(&acme.submit(json!({"kind": "noop"})).await);
    let after = id_of(
        &acme
            .submit(json!({"kind": "sleep", "payload": {"ms": 1}}))
            .await,
    );
    assert_eq!(acme.wait_terminal(&after).await["status"], "succeeded");
    let timeline = acme.timeline(&held).await;
    assert!(
        !timeline.contains(&"started".to_owned()),
        "the tenant lifted an operator's pause: {timeline:?}"
    );
    let (_, listed) = acme.get("/v1/pauses").await;
    assert_eq!(listed["items"][0]["by_operator"], true, "{listed}");
    assert_eq!(
        operator
            .post("/v1/admin/kinds/noop/resume?tenant=acme", &json!({}))
            .await
            .0,
        200
    );
    assert_eq!(acme.wait_terminal(&held).await["status"], "succeeded");
}

/// Polls the job until its read model says it waits for `reason`.
async fn waits_for(api: &testkit::Api, id: &str, reason: &str) -> Value {
    api.wait_for(id, 30, |j| j["waiting"]["reason"] == reason)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waiting_job_says_why_and_queued_jobs_list_in_the_order_they_start() {
    let mut env = Env::new(BUILD).await;
    // One slot: jobs start one after another, in the order they are released.
    env.set("CONVEYOR_WORKER_CONCURRENCY", "1");
    let (_dev, acme) = env.spawn_http("dev").await;
    let operator = acme.with_token(&env.token("ops", "operator"));

    // A key of limit 1 held by a running job: the next job with it says it waits for the key,
    // in its read model and its timeline, and forgets it once it starts.
    let keyed = |ms: u64| {
        json!({"kind": "sleep", "payload": {"ms": ms, "steps": 1},
               "concurrency": {"key": "acct-42", "limit": 1}})
    };
    let first = id_of(&acme.submit(keyed(2_000)).await);
    acme.wait_for(&first, 30, |j| j["status"] == "running")
        .await;
    let second = id_of(&acme.submit(keyed(1)).await);
    let held = waits_for(&acme, &second, "concurrency_key").await;
    assert_eq!(held["status"], "queued", "{held}");
    assert_eq!(held["waiting"]["key"], "acct-42", "{held}");
    assert_eq!(held["waiting"]["attempt"], 1, "{held}");
    assert!(held["waiting"]["since"].is_string(), "{held}");
    let done = acme.wait_terminal(&second).await;
    assert_eq!(done["status"], "succeeded");
    assert!(done.get("waiting").is_none(), "still said to wait: {done}");
    assert_eq!(
        acme.timeline(&second).await,
        ["submitted", "waiting", "started", "progressed", "succeeded"]
    );
    let (_, events) = acme.get(&format!("/v1/jobs/{second}/events")).await;
    assert_eq!(events[1]["data"]["reason"], "concurrency_key", "{events}");

    // Paused by an operator: queued jobs say so, and list highest priority first, then oldest,
    // page by page.
    assert_eq!(
        operator
            .post("/v1/admin/kinds/noop/pause?tenant=acme", &json!({}))
            .await
            .0,
        200
    );
    let mut queued = Vec::new();
    for priority in [0, 5, -5, 0, 5] {
        let body = json!({"kind": "noop", "priority": priority});
        queued.push((priority, id_of(&acme.submit(body).await)));
    }
    for (_, id) in &queued {
        waits_for(&acme, id, "paused").await;
    }
    let mut order = queued.clone();
    order.sort_by_key(|(p, _)| std::cmp::Reverse(*p)); // stable: submission order within one
    let mut listed = Vec::new();
    let mut path = "/v1/jobs?status=queued&kind=noop&limit=2".to_owned();
    loop {
        let (status, page) = acme.get(&path).await;
        assert_eq!(status, 200, "{page}");
        for j in page["items"].as_array().unwrap() {
            listed.push((
                j["priority"].as_i64().unwrap() as i32,
                j["id"].as_str().unwrap().to_owned(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/jobs?status=queued&kind=noop&limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(
        listed, order,
        "queued jobs not listed in the order they start"
    );
    let (status, bad) = acme.get("/v1/jobs?status=queued&cursor=nonsense").await;
    assert_eq!(status, 400, "{bad}");

    // A held job cancelled ends at once, though its kind is still paused.
    let doomed = id_of(&acme.submit(json!({"kind": "noop"})).await);
    waits_for(&acme, &doomed, "paused").await;
    let (status, body) = acme
        .post(&format!("/v1/jobs/{doomed}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let ended = acme.wait_terminal(&doomed).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    assert!(ended.get("waiting").is_none(), "{ended}");
    let timeline = acme.timeline(&doomed).await;
    assert!(!timeline.contains(&"started".to_owned()), "{timeline:?}");

    // Resumed, they start in that order.
    assert_eq!(
        operator
            .post("/v1/admin/kinds/noop/resume?tenant=acme", &json!({}))
            .await
            .0,
        200
    );
    let mut log = Log::open(&env).await;
    log.until("the listed jobs ending", |lives| {
        order
            .iter()
            .all(|(_, id)| lives.get(id).is_some_and(|l| l.ended.is_some()))
    })
    .await;
    let starts: Vec<u64> = order
        .iter()
        .map(|(_, id)| log.lives[id].started.as_ref().expect("started").0)
        .collect();
    assert!(
        starts.windows(2).all(|w| w[0] < w[1]),
        "started out of the listed order: {starts:?}"
    );
}

/// A job's status, asked as whichever tenant owns it.
async fn acme_or(acme: &testkit::Api, beta: &testkit::Api, id: &str) -> String {
    for api in [acme, beta] {
        let (status, job) = api.get(&format!("/v1/jobs/{id}")).await;
        if status == 200 {
            return job["status"].as_str().unwrap_or_default().to_owned();
        }
    }
    panic!("job {id} not found for either tenant")
}

/// The pid of the worker process that is the active scheduler, among `workers` (by their
/// metrics).
async fn active_scheduler(workers: &[(testkit::Proc, String)]) -> Option<usize> {
    for (i, (_, ops)) in workers.iter().enumerate() {
        let Ok(res) = reqwest::get(format!("{ops}/metrics")).await else {
            continue;
        };
        let metrics = res.text().await.unwrap_or_default();
        if metrics
            .lines()
            .any(|l| l.starts_with("conveyor_scheduler_leader") && l.ends_with(" 1"))
        {
            return Some(i);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schedule_submits_one_job_per_tick_across_apis_and_a_scheduler_takeover() {
    let env = Env::new(BUILD).await;
    let (_api1, api1) = env.spawn_http("api").await;
    let (_api2, api2) = env.spawn_http("api").await;
    let _projector = env.spawn("projector").await;
    let mut workers = vec![env.spawn_ops("worker").await, env.spawn_ops("worker").await];
    let mut log = Log::open(&env).await;

    // Bad definitions are refused, each with its reason: an unknown field as malformed JSON is.
    let (status, problem) = api1
        .post(
            "/v1/schedules",
            &json!({"id": "x", "kind": "noop", "every": "1s", "bogus": 1}),
        )
        .await;
    assert_eq!(status, 400, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("bogus"),
        "{problem}"
    );
    for (bad, why) in [
        (json!({"id": "x", "kind": "noop"}), "cron` or `every"),
        (
            json!({"id": "x", "kind": "noop", "cron": "every day"}),
            "cron expression",
        ),
        (
            json!({"id": "x", "kind": "noop", "cron": "* * * * *", "timezone": "Mars/Base"}),
            "time zone",
        ),
        (
            json!({"id": "x", "kind": "noop", "every": "10ms"}),
            "from 1s",
        ),
        (
            json!({"id": "no spaces", "kind": "noop", "every": "1s"}),
            "`id`",
        ),
    ] {
        let (status, problem) = api1.post("/v1/schedules", &bad).await;
        assert_eq!(status, 422, "{bad}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap_or_default().contains(why),
            "{bad}: {problem}"
        );
    }

    let (status, created) = api1
        .post(
            "/v1/schedules",
            &json!({"id": "every-second", "every": "1s", "kind": "noop"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let (status, seen) = api2.get("/v1/schedules/every-second").await;
    assert_eq!(status, 200, "{seen}");
    assert!(seen["next_run_at"].is_string(), "{seen}");
    let scheduled = |log: &Log| {
        log.ticks
            .iter()
            .filter(|t| t.schedule == "every-second")
            .count()
    };

    log.until_log("8 ticks", |l| scheduled(l) >= 8).await;
    // The active scheduler killed mid-schedule; a new worker joins.
    let active = active_scheduler(&workers)
        .await
        .expect("an active scheduler");
    workers[active].0.kill().await;
    workers[active] = env.spawn_ops("worker").await;
    log.until_log("20 ticks", |l| scheduled(l) >= 20).await;

    let (status, paused) = api2
        .post("/v1/schedules/every-second/pause", &json!({}))
        .await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["paused"], true);
    let paused_at = chrono::Utc::now();
    // Past a few ticks, then a marker job: nothing was scheduled after the pause's answer.
    let (_, listed) = api1.get("/v1/schedules").await;
    assert_eq!(listed["items"][0]["id"], "every-second", "{listed}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let marker = id_of(&api1.submit(json!({"kind": "noop"})).await);
    log.until("the marker job ended", |l| {
        l.get(&marker).is_some_and(|j| j.ended.is_some())
    })
    .await;
    let ticks: Vec<Tick> = log
        .ticks
        .iter()
        .filter(|t| t.schedule == "every-second")
        .cloned()
        .collect();
    // A tick already being fired as the pause landed may follow it, none later.
    let last = ticks.iter().map(|t| t.at).max().expect("ticks");
    assert!(
        last <= paused_at + chrono::Duration::seconds(1),
        "a tick at {last} fired after the schedule was paused at {paused_at}"
    );
    let (status, _) = api1.get("/v1/schedules/every-second").await;
    assert_eq!(status, 200);
    let res = api1
        .request(reqwest::Method::DELETE, "/v1/schedules/every-second")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(api2.get("/v1/schedules/every-second").await.0, 404);

    // Exactly one job per tick, none missing: consecutive ticks a second apart, each once.
    let mut at: Vec<_> = ticks.iter().map(|t| t.at).collect();
    at.sort();
    let distinct: std::collections::BTreeSet<_> = at.iter().collect();
    assert_eq!(
        distinct.len(),
        ticks.len(),
        "a tick was submitted twice: {at:?}"
    );
    for pair in at.windows(2) {
        assert_eq!(
            (pair[1] - pair[0]).num_milliseconds(),
            1000,
            "a tick is missing between {} and {}",
            pair[0],
            pair[1]
        );
    }
    let jobs: std::collections::HashSet<_> = ticks.iter().map(|t| t.job.clone()).collect();
    assert_eq!(jobs.len(), ticks.len(), "two ticks share a job");
    for t in &ticks {
        let done = api1.wait_terminal(&t.job).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    eprintln!(
        "{} ticks, one job each, across a scheduler takeover",
        ticks.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_limited_key_never_starts_more_than_its_rate_in_any_window() {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_RATE_LIMIT", "100000");
    let (_dev, api) = env.spawn_http("dev").await;
    let _second = env.spawn("worker").await;
    let mut log = Log::open(&env).await;
    // A worker in another language shares the key: its leases obey the same limit.
    let http = api.with_token(&env.token("acme", "worker"));
    let res = http
        .request(reqwest::Method::PUT, "/v1/workers/kinds/it.rated")
        .json(&json!({ "schema": null }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let rate = json!({"key": "partner-api", "limit": 5, "period_ms": 1000});
    let mut jobs = Vec::new();
    for i in 0..30 {
        let mut job = if i % 3 == 0 {
            json!({"kind": "it.rated"})
        } else {
            sleep_job(5)
        };
        job["rate_limit"] = rate.clone();
        jobs.push(job);
    }
    let ids: Vec<String> = api.submit_batch(jobs).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["job"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 30);
    // The HTTP worker leases and completes what it gets until everything has started.
    let worker = {
        let http = http.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                let (status, body) = http
                    .post(
                        "/v1/workers/lease",
                        &json!({"kinds": ["it.rated"], "max_jobs": 4, "wait_ms": 500, "worker": "it-http"}),
                    )
                    .await;
                assert_eq!(status, 200, "{body}");
                for job in body["jobs"].as_array().unwrap() {
                    let mut done = json!({"result": {"ok": true}});
                    done["lease"] = job["lease"].clone();
                    let path = format!("/v1/workers/jobs/{}/complete", job["id"].as_str().unwrap());
                    assert_eq!(http.post(&path, &done).await.0, 200);
                }
            }
        })
    };
    log.until("all 30 jobs ended", |l| {
        ids.iter()
            .all(|id| l.get(id).is_some_and(|j| j.ended.is_some()))
    })
    .await;
    worker.abort();
    let mut starts: Vec<_> = ids
        .iter()
        .map(|id| log.lives[id].started_at.expect("started"))
        .collect();
    starts.sort();
    for w in starts.windows(6) {
        let span = w[5] - w[0];
        assert!(
            span >= chrono::Duration::milliseconds(1000),
            "6 starts of a key limited to 5 a second within {} ms: {:?}",
            span.num_milliseconds(),
            w
        );
    }
    let (status, bad) = api
        .post(
            "/v1/jobs",
            &json!({"kind": "noop", "rate_limit": {"key": "k", "limit": 0, "period_ms": 1000}}),
        )
        .await;
    assert_eq!(status, 422, "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_weight_takes_more_turns_and_a_cap_bounds_its_running_jobs() {
    let mut env = Env::new(BUILD).await;
    env.set("CONVEYOR_WORKER_CONCURRENCY", "6")
        .set("CONVEYOR_RATE_LIMIT", "100000");
    let (_dev, api) = env.spawn_http("dev").await;
    let operator = api.with_token(&env.token("ops", "operator"));
    let heavy = api.with_token(&env.token("heavy", "jobs:write jobs:read"));
    let light = api.with_token(&env.token("light", "jobs:write jobs:read"));
    let capped = api.with_token(&env.token("capped", "jobs:write jobs:read"));
    let refused = api
        .request(reqwest::Method::PUT, "/v1/admin/tenants/heavy/share")
        .json(&json!({"weight": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403, "shares are an operator's");
    let put = |tenant: &str, share: Value| {
        let operator = operator.clone();
        let path = format!("/v1/admin/tenants/{tenant}/share");
        async move {
            let res = operator
                .request(reqwest::Method::PUT, &path)
                .json(&share)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, share) = put("heavy", json!({"weight": 3})).await;
    assert_eq!(status, 200, "{share}");
    let (status, share) = put("capped", json!({"max_running": 2})).await;
    assert_eq!(status, 200, "{share}");
    assert_eq!(put("heavy", json!({"weight": 0})).await.0, 422);
    let (_, shown) = operator.get("/v1/admin/tenants/heavy/share").await;
    assert_eq!(shown["weight"], 3, "{shown}");

    // Everything queued while the kind is paused for all, so the turns start together.
    assert_eq!(
        operator
            .post("/v1/admin/kinds/sleep/pause", &json!({}))
            .await
            .0,
        200
    );
    let mut log = Log::open(&env).await;
    for tenant in [&heavy, &light, &capped] {
        tenant.submit_batch(vec![sleep_job(30); 120]).await;
    }
    // The pause is seen by the scheduler before the resume: a job of another kind, submitted
    // after the batches, has run.
    let marker = id_of(&api.submit(json!({"kind": "noop"})).await);
    assert_eq!(api.wait_terminal(&marker).await["status"], "succeeded");
    assert_eq!(
        operator
            .post("/v1/admin/kinds/sleep/resume", &json!({}))
            .await
            .0,
        200
    );
    log.until("60 jobs of each of the three tenants started", |l| {
        ["heavy", "light", "capped"]
            .iter()
            .all(|t| started_of(l, t) >= 60)
    })
    .await;
    let mut starts: Vec<(u64, String)> = log
        .lives
        .values()
        .filter(|l| ["heavy", "light"].contains(&l.tenant.as_str()))
        .filter_map(|l| l.started.as_ref().map(|(seq, _)| (*seq, l.tenant.clone())))
        .collect();
    starts.sort();
    let first: Vec<&String> = starts.iter().take(80).map(|(_, t)| t).collect();
    let heavy_n = first.iter().filter(|t| t.as_str() == "heavy").count();
    let light_n = first.len() - heavy_n;
    eprintln!("first 80 starts of heavy (weight 3) and light (weight 1): {heavy_n} and {light_n}");
    assert!(
        heavy_n >= 2 * light_n && heavy_n <= 4 * light_n,
        "weight 3 against 1 gave {heavy_n} against {light_n} starts"
    );
    // In log order, never more than 2 of the capped tenant's jobs between start and end.
    let mut edges: Vec<(u64, i32)> = log
        .lives
        .values()
        .filter(|l| l.tenant == "capped" && l.started.is_some())
        .flat_map(|l| {
            let mut e = vec![(l.started.as_ref().unwrap().0, 1)];
            e.extend(l.ended.map(|seq| (seq, -1)));
            e
        })
        .collect();
    edges.sort();
    let (mut running, mut most) = (0, 0);
    for (_, d) in edges {
        running += d;
        most = most.max(running);
    }
    assert!(
        most <= 2,
        "{most} of the capped tenant's jobs ran at once (cap 2)"
    );
    assert_eq!(
        most, 2,
        "the cap of 2 was never reached: the test shows nothing"
    );
}
