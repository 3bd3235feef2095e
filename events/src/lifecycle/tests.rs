//! Every decision of the lifecycle, and a model of JetStream that plays them in any order.

use std::collections::{HashMap, HashSet};

use chrono::TimeZone;
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::job::{JobStatus, Webhook};

const NOW: i64 = 1_700_000_000;

fn now() -> DateTime<Utc> {
    Utc.timestamp_opt(NOW, 0).unwrap()
}

fn submitted(max_attempts: u32) -> Submitted {
    Submitted {
        payload: json!({"n": 1}),
        max_attempts,
        timeout_ms: 250,
        run_at: None,
        webhook: Some(Webhook {
            url: "https://example.com/h".into(),
        }),
        scheduling: Default::default(),
        schedule: None,
        workflow: Default::default(),
    }
}

fn run(attempt: u32, max_attempts: u32, generation: u32) -> RunJob {
    RunJob {
        attempt,
        max_attempts,
        generation,
        ..RunJob::first(&submitted(max_attempts))
    }
}

fn names(t: &Transition) -> Vec<&'static str> {
    t.events.iter().map(|e| e.payload.name()).collect()
}

fn ids(t: &Transition) -> Vec<&str> {
    t.events.iter().map(|e| e.msg_id.as_str()).collect()
}

fn policies() -> [RetryPolicy; 3] {
    let ms = Duration::from_millis;
    [
        RetryPolicy::new(ms(0), ms(0)),
        RetryPolicy::new(ms(100), ms(1000)),
        RetryPolicy::new(ms(1000), ms(600_000)),
    ]
}

fn error(class: ErrorClass) -> ErrorInfo {
    ErrorInfo {
        class,
        message: "boom".into(),
    }
}

fn outcomes() -> Vec<AttemptOutcome> {
    let mut all = vec![
        AttemptOutcome::Succeeded {
            result: Some(json!({"ok": true})),
            result_ref: None,
        },
        AttemptOutcome::Succeeded {
            result: None,
            result_ref: Some(ResultRef {
                bucket: "B".into(),
                object: "o".into(),
                size: 1 << 20,
            }),
        },
        AttemptOutcome::Cancelled,
        AttemptOutcome::TimedOut,
        AttemptOutcome::WaitsForChildren,
    ];
    for class in [
        ErrorClass::Retryable,
        ErrorClass::Fatal,
        ErrorClass::Timeout,
        ErrorClass::Panic,
    ] {
        all.push(AttemptOutcome::Failed(error(class)));
    }
    all
}

#[test]
fn submission_stores_the_event_then_queues_the_first_attempt() {
    let job = JobId::new();
    let t = submit(job, submitted(3), now());
    assert_eq!(names(&t), ["submitted"]);
    assert_eq!(ids(&t), [format!("{job}.submitted")]);
    assert_eq!(t.at, now());
    let cmd = t.command.expect("a run command");
    let again = first_run(job, &submitted(3), now());
    assert!(again.events.is_empty());
    assert_eq!(again.command.as_ref(), Some(&cmd));
    assert_eq!(cmd.msg_id, format!("{job}.1.run"));
    let Command::Run(run) = cmd.payload else {
        panic!("not a run command")
    };
    assert_eq!((run.attempt, run.max_attempts, run.generation), (1, 3, 0));
    assert_eq!(run.webhook, Some(true));
}

#[test]
fn cancellation_requests_then_commands() {
    let job = JobId::new();
    let t = cancel(job, now());
    assert_eq!(names(&t), ["cancel_requested"]);
    assert_eq!(ids(&t), [format!("{job}.cancel_requested")]);
    let cmd = t.command.expect("a cancel command");
    assert_eq!(cmd.msg_id, format!("{job}.cancel"));
    assert_eq!(cmd.payload, Command::Cancel(CancelJob {}));
}

#[test]
fn a_redrive_numbers_on_from_the_last_attempt() {
    let job = JobId::new();
    for (last, earlier) in [(3, 0), (1, 0), (6, 1), (9, 4)] {
        let (redriven, t) = redrive(job, &submitted(3), last, earlier, now());
        assert_eq!(
            redriven,
            Redriven {
                generation: earlier + 1,
                next_attempt: last + 1,
                max_attempts: last + 3,
            }
        );
        assert_eq!(names(&t), ["redriven"]);
        assert_eq!(ids(&t), [format!("{job}.redriven.{}", earlier + 1)]);
        let cmd = t.command.expect("a run command");
        assert_eq!(cmd.msg_id, format!("{job}.{}.run", last + 1));
        let Command::Run(run) = cmd.payload else {
            panic!("not a run command")
        };
        assert_eq!(
            (run.attempt, run.max_attempts, run.generation, run.run_at),
            (last + 1, last + 3, earlier + 1, None)
        );
    }
    let (redriven, _) = redrive(job, &submitted(3), u32::MAX, u32::MAX, now());
    assert_eq!(redriven.generation, u32::MAX);
    assert_eq!(redriven.next_attempt, u32::MAX);
}

#[test]
fn start_hands_back_what_is_not_due_and_ends_what_was_cancelled() {
    let job = JobId::new();
    let later = Attempt::new(
        job,
        RunJob {
            run_at: Some(now() + Duration::from_secs(90)),
            ..run(2, 3, 0)
        },
    );
    assert_eq!(
        later.start(now(), false, "w"),
        Start::NotDue(Duration::from_secs(90))
    );
    let Start::Cancelled(t) = later.start(now(), true, "w") else {
        panic!("a cancelled job does not wait")
    };
    assert_eq!(names(&t), ["cancelled"]);
    assert_eq!(ids(&t), [format!("{job}.terminal")]);
    assert_eq!(
        t.events[0].payload,
        JobEvent::Cancelled(Cancelled {
            attempt: None,
            reason: None,
        })
    );
    assert_eq!(t.webhook, Some(true));
    assert_eq!(t.command, None);

    for run_at in [None, Some(now()), Some(now() - Duration::from_secs(5))] {
        let due = Attempt::new(
            job,
            RunJob {
                run_at,
                ..run(2, 3, 1)
            },
        );
        let Start::Started(t) = due.start(now(), false, "w-1") else {
            panic!("a due attempt starts")
        };
        assert_eq!(ids(&t), [format!("{job}.2.started")]);
        assert_eq!(
            t.events[0].payload,
            JobEvent::Started(Started {
                attempt: 2,
                worker: "w-1".into()
            })
        );
        assert_eq!(t.command, None);
        let Start::Cancelled(t) = due.start(now(), true, "w-1") else {
            panic!("a cancelled job does not start")
        };
        assert_eq!(ids(&t), [format!("{job}.terminal.1")]);
    }
}

/// Every outcome, at the first, a middle and the last attempt, of a first run and of a
/// re-drive, under every policy and jitter.
#[test]
fn every_outcome_at_every_position_under_every_policy() {
    let job = JobId::new();
    for policy in policies() {
        for jitter in [0.0, 0.5, 0.999] {
            for (attempt, max, generation) in
                [(1, 1, 0), (1, 3, 0), (2, 3, 0), (3, 3, 0), (5, 6, 2)]
            {
                for outcome in outcomes() {
                    let a = Attempt::new(job, run(attempt, max, generation));
                    let t = a.conclude(outcome.clone(), 42, &policy, now(), jitter);
                    check_conclusion(job, &a, &outcome, &t, &policy, jitter);
                }
            }
        }
    }
}

fn check_conclusion(
    job: JobId,
    a: &Attempt,
    outcome: &AttemptOutcome,
    t: &Transition,
    policy: &RetryPolicy,
    jitter: f64,
) {
    let run = a.run();
    let (attempt, max) = (run.attempt, run.max_attempts);
    let terminal = if run.generation == 0 {
        format!("{job}.terminal")
    } else {
        format!("{job}.terminal.{}", run.generation)
    };
    assert_eq!(t.at, now());
    assert_eq!(t.webhook, Some(true));
    let error = match outcome {
        AttemptOutcome::Succeeded { result, result_ref } => {
            assert_eq!(ids(t), [terminal.as_str()]);
            assert_eq!(
                t.events[0].payload,
                JobEvent::Succeeded(Succeeded {
                    attempt,
                    result: result.clone(),
                    result_ref: result_ref.clone(),
                    duration_ms: 42,
                })
            );
            assert_eq!(t.command, None);
            return;
        }
        AttemptOutcome::Cancelled => {
            assert_eq!(ids(t), [terminal.as_str()]);
            assert_eq!(
                t.events[0].payload,
                JobEvent::Cancelled(Cancelled {
                    attempt: Some(attempt),
                    reason: None,
                })
            );
            assert_eq!(t.command, None);
            return;
        }
        AttemptOutcome::WaitsForChildren => {
            assert_eq!(ids(t), [format!("{job}.{attempt}.suspended").as_str()]);
            assert_eq!(
                t.events[0].payload,
                JobEvent::Suspended(crate::job::Suspended {
                    attempt,
                    next_attempt: attempt + 1,
                    max_attempts: max + 1,
                })
            );
            let Some(Outgoing {
                msg_id,
                payload: Command::Run(next),
            }) = &t.command
            else {
                panic!("a wait is followed by the next attempt's run command");
            };
            assert_eq!(msg_id, &format!("{job}.{}.run", attempt + 1));
            assert!(next.workflow.awaits_children && next.upstream.is_none());
            assert_eq!(next.round, run.round + 1);
            assert_eq!(
                (next.attempt, next.max_attempts, next.run_at),
                (attempt + 1, max + 1, None)
            );
            return;
        }
        AttemptOutcome::TimedOut => ErrorInfo {
            class: ErrorClass::Timeout,
            message: "attempt exceeded its timeout of 250 ms".into(),
        },
        AttemptOutcome::Failed(e) => e.clone(),
    };
    let will_retry = error.class != ErrorClass::Fatal && attempt < max;
    assert_eq!(
        t.events[0],
        Outgoing::new(
            format!("{job}.{attempt}.failed"),
            JobEvent::Failed(Failed {
                attempt,
                error: error.clone(),
                will_retry,
                duration_ms: 42,
            })
        )
    );
    if will_retry {
        let delay = policy.jittered(attempt, jitter);
        assert_eq!(
            t.events[1],
            Outgoing::new(
                format!("{job}.{attempt}.retry_scheduled"),
                JobEvent::RetryScheduled(RetryScheduled {
                    next_attempt: attempt + 1,
                    delay_ms: delay.as_millis() as u64,
                    run_at: now() + delay,
                })
            )
        );
        assert_eq!(t.events.len(), 2);
        assert_eq!(
            t.command,
            Some(Outgoing::new(
                format!("{job}.{}.run", attempt + 1),
                Command::Run(RunJob {
                    attempt: attempt + 1,
                    run_at: Some(now() + delay),
                    ..run.clone()
                })
            ))
        );
    } else {
        let reason = if error.class == ErrorClass::Fatal {
            "fatal error".to_owned()
        } else {
            format!("attempts exhausted ({attempt} of {max})")
        };
        assert_eq!(
            t.events[1],
            Outgoing::new(
                terminal,
                JobEvent::DeadLettered(DeadLettered {
                    attempt,
                    reason,
                    error
                })
            )
        );
        assert_eq!(t.events.len(), 2);
        assert_eq!(t.command, None);
    }
}

#[test]
fn error_classes_keep_their_wire_names() {
    for (class, name) in [
        (ErrorClass::Retryable, "retryable"),
        (ErrorClass::Fatal, "fatal"),
        (ErrorClass::Timeout, "timeout"),
        (ErrorClass::Panic, "panic"),
    ] {
        assert_eq!(serde_json::to_value(class).unwrap(), json!(name));
        assert_eq!(
            serde_json::from_value::<ErrorClass>(json!(name)).unwrap(),
            class
        );
    }
}

// The model: one job on a log and a work queue that, like JetStream within its duplicate
// window, store a message id once; workers that crash between publishes, pause and wake late.

/// One step of the world.
#[derive(Debug, Clone)]
enum Op {
    /// A worker takes the `pick`-th waiting run command. It crashes (no ack) after publishing
    /// `crash_after` messages of a step, when set; it pauses after starting and wakes later
    /// (a zombie: its command is redelivered meanwhile) when `pause` is set.
    Deliver {
        pick: usize,
        crash_after: Option<usize>,
        pause: bool,
    },
    /// A paused worker wakes up, publishes its conclusion and acks.
    Wake { pick: usize },
    /// A client asks to cancel (refused, as by the API, once the job ended).
    Cancel,
    /// An operator re-drives the job (refused unless it is dead-lettered).
    Redrive,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (any::<usize>(), proptest::option::weighted(0.3, 0..4usize), proptest::bool::weighted(0.15))
            .prop_map(|(pick, crash_after, pause)| Op::Deliver { pick, crash_after, pause }),
        1 => any::<usize>().prop_map(|pick| Op::Wake { pick }),
        1 => Just(Op::Cancel),
        2 => Just(Op::Redrive),
    ]
}

/// A run command in the work queue.
#[derive(Debug)]
struct Queued {
    msg_id: String,
    run: RunJob,
    delivered: u32,
}

/// A paused worker: the command it holds and the conclusion it will publish.
#[derive(Debug)]
struct Zombie {
    msg_id: String,
    conclusion: Transition,
}

#[derive(Debug)]
struct World {
    job: JobId,
    /// How each attempt's handler ends (a redelivery or a zombie of it ends the same way).
    outcomes: Vec<AttemptOutcome>,
    policy: RetryPolicy,
    clock: DateTime<Utc>,
    log: Vec<Outgoing<JobEvent>>,
    stored: HashSet<String>,
    queue: Vec<Queued>,
    run_commands: Vec<RunJob>,
    cancel_marker: bool,
    zombies: Vec<Zombie>,
}

impl World {
    fn new(max_attempts: u32, outcomes: Vec<AttemptOutcome>) -> Self {
        let mut world = Self {
            job: JobId::new(),
            outcomes,
            policy: RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(60)),
            clock: now(),
            log: Vec::new(),
            stored: HashSet::new(),
            queue: Vec::new(),
            run_commands: Vec::new(),
            cancel_marker: false,
            zombies: Vec::new(),
        };
        let t = submit(world.job, submitted(max_attempts), world.clock);
        world.publish(t, None);
        world
    }

    /// Publishes the events in order, then the command, each stored once per message id; with
    /// `crash_after`, stops after that many. Returns whether it got through.
    fn publish(&mut self, t: Transition, crash_after: Option<usize>) -> bool {
        let limit = crash_after.unwrap_or(usize::MAX);
        let events = t.events.len();
        for (n, ev) in t.events.into_iter().enumerate() {
            if n >= limit {
                return false;
            }
            if self.stored.insert(ev.msg_id.clone()) {
                self.log.push(ev);
            }
        }
        if let Some(cmd) = t.command {
            if events >= limit {
                return false;
            }
            if self.stored.insert(cmd.msg_id.clone()) {
                match cmd.payload {
                    Command::Run(run) => {
                        self.run_commands.push(run.clone());
                        self.queue.push(Queued {
                            msg_id: cmd.msg_id,
                            run,
                            delivered: 0,
                        });
                    }
                    // The canceller turns the command into the marker.
                    Command::Cancel(_) => self.cancel_marker = true,
                    Command::Webhook(_) => unreachable!("the lifecycle queues no webhook"),
                }
            }
        }
        // A crash after the last publish still loses the ack.
        crash_after.is_none()
    }

    fn ack(&mut self, msg_id: &str) {
        self.queue.retain(|q| q.msg_id != msg_id);
    }

    /// The job's status, as the read model folds it: a terminal status moves only on a
    /// re-drive.
    fn status(&self) -> JobStatus {
        let mut status = JobStatus::Queued;
        for ev in &self.log {
            match ev.payload.status() {
                Some(s) if !status.is_terminal() || matches!(ev.payload, JobEvent::Redriven(_)) => {
                    status = s
                }
                _ => {}
            }
        }
        status
    }

    /// What the worker checks on a redelivery: the last terminal event is newer than the last
    /// re-drive.
    fn already_ended(&self) -> bool {
        let last = |f: fn(&JobEvent) -> bool| self.log.iter().rposition(|e| f(&e.payload));
        let terminal = last(JobEvent::is_terminal);
        let redriven = last(|e| matches!(e, JobEvent::Redriven(_)));
        terminal.is_some() && terminal > redriven
    }

    fn outcome(&self, attempt: u32) -> AttemptOutcome {
        self.outcomes[(attempt as usize - 1) % self.outcomes.len()].clone()
    }

    fn step(&mut self, op: Op) {
        // Time passes between steps: every backoff is over by the next one.
        self.clock += Duration::from_secs(3600);
        match op {
            Op::Deliver {
                pick,
                crash_after,
                pause,
            } => self.deliver(pick, crash_after, pause),
            Op::Wake { pick } => {
                if !self.zombies.is_empty() {
                    let z = self.zombies.remove(pick % self.zombies.len());
                    self.publish(z.conclusion, None);
                    self.ack(&z.msg_id);
                }
            }
            Op::Cancel => {
                if !self.status().is_terminal() {
                    self.publish(cancel(self.job, self.clock), None);
                }
            }
            Op::Redrive => {
                if self.status() == JobStatus::Failed {
                    let earlier = self
                        .log
                        .iter()
                        .filter(|e| matches!(e.payload, JobEvent::Redriven(_)))
                        .count() as u32;
                    let (_, t) = redrive(
                        self.job,
                        &self.submitted(),
                        self.last_attempt(),
                        earlier,
                        self.clock,
                    );
                    self.publish(t, None);
                }
            }
        }
    }

    fn submitted(&self) -> Submitted {
        match &self.log[0].payload {
            JobEvent::Submitted(s) => s.clone(),
            other => panic!("the log starts with {other:?}"),
        }
    }

    /// The job's attempt, as the read model folds it.
    fn last_attempt(&self) -> u32 {
        self.log
            .iter()
            .filter_map(|e| match &e.payload {
                JobEvent::Started(s) => Some(s.attempt),
                JobEvent::Failed(f) => Some(f.attempt),
                JobEvent::RetryScheduled(r) => Some(r.next_attempt),
                JobEvent::DeadLettered(d) => Some(d.attempt),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    }

    fn deliver(&mut self, pick: usize, crash_after: Option<usize>, pause: bool) {
        if self.queue.is_empty() {
            return;
        }
        let n = pick % self.queue.len();
        self.queue[n].delivered += 1;
        let (msg_id, run, delivered) = {
            let q = &self.queue[n];
            (q.msg_id.clone(), q.run.clone(), q.delivered)
        };
        let attempt = Attempt::new(self.job, run);
        let start = attempt.start(self.clock, self.cancel_marker, "w");
        if matches!(start, Start::NotDue(_)) {
            return;
        }
        if delivered > 1 && self.already_ended() {
            self.ack(&msg_id);
            return;
        }
        let started = match start {
            Start::NotDue(_) => unreachable!("handed back above"),
            Start::Cancelled(t) => {
                if self.publish(t, crash_after) {
                    self.ack(&msg_id);
                }
                return;
            }
            Start::Started(t) => t,
        };
        if !self.publish(started, crash_after) {
            return;
        }
        let outcome = self.outcome(attempt.run().attempt);
        let conclusion = attempt.conclude(outcome, 7, &self.policy, self.clock, 0.5);
        if pause {
            self.zombies.push(Zombie { msg_id, conclusion });
        } else if self.publish(conclusion, crash_after) {
            self.ack(&msg_id);
        }
    }

    /// Lets every paused worker wake, then runs what is queued, with no more faults, until the
    /// queue is empty.
    fn drain(&mut self) {
        while let Some(z) = self.zombies.pop() {
            self.publish(z.conclusion, None);
            self.ack(&z.msg_id);
        }
        for _ in 0..1000 {
            if self.queue.is_empty() {
                return;
            }
            self.step(Op::Deliver {
                pick: 0,
                crash_after: None,
                pause: false,
            });
        }
        panic!("the queue never drained: {:?}", self.queue);
    }

    fn check(&self) {
        let job = self.job;
        let generations = self
            .log
            .iter()
            .filter(|e| matches!(e.payload, JobEvent::Redriven(_)))
            .count() as u32;
        // Exactly one terminal event per generation.
        let mut terminals: HashMap<u32, usize> = HashMap::new();
        for ev in self.log.iter().filter(|e| e.payload.is_terminal()) {
            let generation = (0..=generations)
                .find(|g| msg_id::terminal(job, *g) == ev.msg_id)
                .unwrap_or_else(|| panic!("terminal event under {}", ev.msg_id));
            *terminals.entry(generation).or_default() += 1;
        }
        for g in 0..=generations {
            assert_eq!(
                terminals.get(&g),
                Some(&1),
                "generation {g}: {:#?}",
                self.log
            );
        }
        // No attempt beyond its budget.
        for run in &self.run_commands {
            assert!(run.attempt <= run.max_attempts, "{run:?}");
        }
        let budget = self.submitted().max_attempts * (generations + 1);
        for ev in &self.log {
            if let JobEvent::Started(s) = &ev.payload {
                assert!(s.attempt <= budget, "{:#?}", self.log);
                assert!(
                    self.run_commands.iter().any(|r| r.attempt == s.attempt),
                    "started without a run command: {:#?}",
                    self.log
                );
            }
        }
        // A failure that will be retried is followed by its retry, unless the job was cancelled
        // meanwhile (a redelivery that finds the cancel marker ends the job instead).
        for (n, ev) in self.log.iter().enumerate() {
            let JobEvent::Failed(f) = &ev.payload else {
                continue;
            };
            if !f.will_retry {
                continue;
            }
            let rest = &self.log[n + 1..];
            let retried = rest.iter().any(|e| {
                matches!(&e.payload, JobEvent::RetryScheduled(r) if r.next_attempt == f.attempt + 1)
            }) && self
                .run_commands
                .iter()
                .any(|r| r.attempt == f.attempt + 1);
            let cancelled = rest
                .iter()
                .any(|e| matches!(e.payload, JobEvent::Cancelled(_)));
            assert!(
                retried || cancelled,
                "failed attempt {} not retried: {:#?}",
                f.attempt,
                self.log
            );
        }
    }
}

fn attempt_outcome() -> impl Strategy<Value = AttemptOutcome> {
    prop_oneof![
        Just(AttemptOutcome::Succeeded {
            result: Some(json!(1)),
            result_ref: None
        }),
        Just(AttemptOutcome::Cancelled),
        Just(AttemptOutcome::TimedOut),
        Just(AttemptOutcome::Failed(error(ErrorClass::Retryable))),
        Just(AttemptOutcome::Failed(error(ErrorClass::Retryable))),
        Just(AttemptOutcome::Failed(error(ErrorClass::Fatal))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever the interleaving of deliveries, redeliveries after crashes, late zombies,
    /// cancels and re-drives: one terminal event per generation, no attempt beyond the budget,
    /// and every retried failure followed by its retry.
    #[test]
    fn one_terminal_event_per_generation_whatever_the_interleaving(
        max_attempts in 1u32..5,
        outcomes in proptest::collection::vec(attempt_outcome(), 1..6),
        ops in proptest::collection::vec(op(), 0..40),
    ) {
        let mut world = World::new(max_attempts, outcomes);
        for op in ops {
            world.step(op);
        }
        world.drain();
        world.check();
    }
}

#[test]
fn a_handler_that_waits_too_often_is_dead_lettered() {
    let job = JobId::new();
    let run = RunJob {
        round: MAX_WAITS,
        ..run(3, 3, 0)
    };
    let policy = RetryPolicy::new(Duration::from_millis(1), Duration::from_millis(1));
    let t =
        Attempt::new(job, run).conclude(AttemptOutcome::WaitsForChildren, 1, &policy, now(), 0.5);
    let names: Vec<_> = t.events.iter().map(|e| e.payload.name()).collect();
    assert_eq!(names, ["failed", "dead_lettered"]);
}

#[test]
fn a_batch_is_sealed_once_and_a_dependent_abandoned_ends_under_the_terminal_id() {
    let job = JobId::new();
    let sealed = seal(job, now());
    assert_eq!(ids(&sealed), [format!("{job}.sealed").as_str()]);
    assert_eq!(sealed.command, None);
    let t = Attempt::new(job, run(1, 3, 0)).abandon(now(), "dependency x failed".into());
    assert_eq!(ids(&t), [format!("{job}.terminal").as_str()]);
    assert_eq!(
        t.events[0].payload,
        JobEvent::Cancelled(Cancelled {
            attempt: None,
            reason: Some("dependency x failed".into()),
        })
    );
    assert_eq!(t.command, None);
}
