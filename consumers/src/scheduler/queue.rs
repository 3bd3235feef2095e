//! The scheduler's picture of the waiting jobs and the attempts under way, and its one decision:
//! which waiting job of a kind starts next. No I/O: the active scheduler feeds it what JetStream
//! tells (a command waiting, an attempt ended, a kind paused) and releases what it picks.
//!
//! The order, for each kind:
//! 1. a job not yet due (`run_at`, a retry's backoff), or whose concurrency key is full, or whose
//!    rate limit's key has released its limit within the period, or whose kind is paused (for
//!    all tenants or for its own), is not a candidate;
//! 2. among the candidates, the highest priority goes first;
//! 3. among tenants with a candidate of that priority, turns go round (fair share): a tenant with
//!    50,000 waiting jobs takes one turn like a tenant with one (a tenant given a weight takes
//!    that many releases per turn; one at its cap of running jobs of the kind sits turns out);
//! 4. within a tenant, the highest priority, then the earliest arrival (stream order).
//!
//! A concurrency key's slots are held from release to the end of the attempt (its `failed`,
//! `succeeded`, `cancelled` or `dead_lettered` event, or its released command gone from the
//! stream): a crashed worker's job keeps its slot until it is redelivered and ends, never freed
//! by a timer. A rate limit paces releases here; the worker taking a job checks it exactly
//! (`bus::Bus::take_start`), since a start can come later than its release.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use events::job::{ConcurrencyKey, RateLimit, WaitReason, Workflow};
use events::{JobId, JobKind, Tenant};

/// A waiting job's place in its tenant's line: higher priority first, then earlier arrival.
type Place = (Reverse<i32>, u64);

/// A tenant's concurrency key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId {
    tenant: Tenant,
    key: String,
}

/// A waiting run command, as the scheduler holds it.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub job: JobId,
    pub tenant: Tenant,
    pub kind: JobKind,
    pub attempt: u32,
    pub generation: u32,
    pub priority: i32,
    pub concurrency: Option<ConcurrencyKey>,
    pub rate_limit: Option<RateLimit>,
    pub due: Option<DateTime<Utc>>,
    /// Its stream sequence: the order of arrival.
    pub seq: u64,
    /// The command as stored, released as it is.
    pub body: Bytes,
    /// Acknowledges the held message once the command is released.
    pub reply: String,
    /// When the scheduler took it.
    pub arrived: DateTime<Utc>,
    /// The reasons it was told to wait already (see [`Queues::untold`]).
    pub told: Vec<WaitReason>,
    /// What it waits for (other jobs' ends) before it may even be weighed: `None` once that
    /// held, or if it waits for nothing.
    pub workflow: Option<Workflow>,
}

impl Waiting {
    fn place(&self) -> Place {
        (Reverse(self.priority), self.seq)
    }

    fn key(&self) -> Option<KeyId> {
        self.concurrency.as_ref().map(|c| KeyId {
            tenant: self.tenant.clone(),
            key: c.key.clone(),
        })
    }

    fn rate_key(&self) -> Option<KeyId> {
        self.rate_limit.as_ref().map(|r| KeyId {
            tenant: self.tenant.clone(),
            key: r.key.clone(),
        })
    }
}

/// A job held for other jobs' ends: its id, tenant, attempt and what it waits for.
pub type Blocked = (JobId, Tenant, u32, Workflow);

/// A reason a waiting job has not been told yet: the news for its `job.waiting`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub job: JobId,
    pub tenant: Tenant,
    pub kind: JobKind,
    pub attempt: u32,
    pub reason: WaitReason,
    /// The concurrency key or rate limit key.
    pub key: Option<String>,
}

/// A concurrency key's load, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLoad {
    pub tenant: Tenant,
    pub key: String,
    pub running: u32,
    pub waiting: usize,
}

/// An attempt released and not yet known to have ended.
#[derive(Debug, Clone)]
pub struct Running {
    pub kind: JobKind,
    pub tenant: Tenant,
    pub attempt: u32,
    pub key: Option<KeyId>,
    /// When it was released, or last found under way by reconciliation (which checks the
    /// longest unchecked first, and leaves young attempts alone).
    pub released_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct KeyState {
    limit: u32,
    /// Released and admitted jobs: each holds a slot.
    held: u32,
    /// Jobs waiting for a slot, in order.
    line: BTreeMap<Place, JobId>,
}

#[derive(Debug, Default)]
struct RateState {
    /// Releases within the last period.
    recent: VecDeque<DateTime<Utc>>,
    /// Jobs waiting for a release to fall out of the period, in order.
    line: BTreeMap<Place, JobId>,
}

#[derive(Debug, Default)]
struct KindQueue {
    /// Each tenant's candidates, in order.
    tenants: HashMap<Tenant, BTreeMap<Place, JobId>>,
    /// Tenants with candidates, in turn order.
    turns: VecDeque<Tenant>,
    /// When a job of the kind was last released: a job is told it waits behind a priority or
    /// other tenants only if something was released after it came (not while the kind has no
    /// worker at all).
    last_pick: Option<DateTime<Utc>>,
}

/// A tenant's share of each kind's workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// Releases per turn (1 by default).
    pub weight: u32,
    /// The most of its jobs of one kind under way at once (`None`: no cap).
    pub max_running: Option<u32>,
}

impl Default for Share {
    fn default() -> Self {
        Self {
            weight: 1,
            max_running: None,
        }
    }
}

/// The waiting jobs of every kind and the attempts under way.
#[derive(Debug, Default)]
pub struct Queues {
    waiting: HashMap<JobId, Waiting>,
    kinds: HashMap<JobKind, KindQueue>,
    /// Jobs not yet due, by due time.
    delayed: BTreeSet<(DateTime<Utc>, u64, JobId)>,
    /// Jobs waiting for other jobs' ends (their workflow), before anything else.
    blocked: BTreeSet<(u64, JobId)>,
    keys: HashMap<KeyId, KeyState>,
    rates: HashMap<KeyId, RateState>,
    running: HashMap<JobId, Running>,
    /// Paused kinds: `(kind, None)` for every tenant, `(kind, Some(tenant))` for one.
    paused: HashSet<(JobKind, Option<Tenant>)>,
    /// Tenants' shares other than the default.
    shares: HashMap<Tenant, Share>,
    /// Attempts under way per kind and tenant (for the caps).
    under_way: HashMap<(JobKind, Tenant), u32>,
    /// Releases in the current turn, per kind and tenant (for the weights).
    credit: HashMap<(JobKind, Tenant), u32>,
}

impl Queues {
    /// How many jobs wait.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// How many released attempts have not ended.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// How many jobs wait, by what holds them: `due_later` (`run_at`, a retry's backoff),
    /// `concurrency_key`, `rate_limit`, `paused`, `tenant_cap`, and `ready` (only their turn).
    pub fn waiting_by_reason(&self) -> [(&'static str, usize); 9] {
        let (mut paused, mut capped, mut ready) = (0, 0, 0);
        for (kind, queue) in &self.kinds {
            for (tenant, line) in &queue.tenants {
                match self.line_gate(kind, tenant) {
                    Some(WaitReason::Paused) => paused += line.len(),
                    Some(_) => capped += line.len(),
                    None => ready += line.len(),
                }
            }
        }
        let blocked = |reason| {
            self.blocked
                .iter()
                .filter(|(_, id)| self.blocked_reason(*id) == reason)
                .count()
        };
        [
            ("dependencies", blocked(WaitReason::Dependencies)),
            ("batch", blocked(WaitReason::Batch)),
            ("children", blocked(WaitReason::Children)),
            ("due_later", self.delayed.len()),
            (
                "concurrency_key",
                self.keys.values().map(|k| k.line.len()).sum(),
            ),
            (
                "rate_limit",
                self.rates.values().map(|r| r.line.len()).sum(),
            ),
            ("paused", paused),
            ("tenant_cap", capped),
            ("ready", ready),
        ]
    }

    /// Why waiting jobs wait, for those not told so yet: at most `most`, gates first. A job
    /// behind a gate (a full concurrency key, a rate limit, a pause, its tenant's cap) is told
    /// each gate once; a job that has waited `after` behind a higher priority or other tenants'
    /// turns is told that once, if it was told nothing before. A job that only waits for a free
    /// worker is told nothing. Each notice is marked told.
    pub fn untold(
        &mut self,
        now: DateTime<Utc>,
        after: chrono::Duration,
        most: usize,
    ) -> Vec<Notice> {
        let mut found: Vec<(JobId, WaitReason, Option<String>)> = Vec::new();
        let untold = |w: &Waiting, reason: WaitReason| {
            !w.told.contains(&reason) && (reason.is_gate() || w.told.is_empty())
        };
        for (_, id) in &self.blocked {
            if found.len() >= most {
                break;
            }
            let reason = self.blocked_reason(*id);
            if self.waiting.get(id).is_some_and(|w| untold(w, reason)) {
                found.push((*id, reason, None));
            }
        }
        let lines = self
            .keys
            .iter()
            .map(|(k, s)| (k, &s.line, WaitReason::ConcurrencyKey))
            .chain(
                self.rates
                    .iter()
                    .map(|(k, s)| (k, &s.line, WaitReason::RateLimit)),
            );
        'gates: for (key, line, reason) in lines {
            for id in line.values() {
                if found.len() >= most {
                    break 'gates;
                }
                if self.waiting.get(id).is_some_and(|w| untold(w, reason)) {
                    found.push((*id, reason, Some(key.key.clone())));
                }
            }
        }
        'kinds: for (kind, queue) in &self.kinds {
            let open = |t: &Tenant| self.open(kind, t);
            let firsts: Vec<i32> = queue
                .turns
                .iter()
                .filter(|t| open(t))
                .filter_map(|t| queue.tenants.get(t)?.first_key_value())
                .map(|((Reverse(p), _), _)| *p)
                .collect();
            let best = firsts.iter().copied().max();
            // Tenants taking turns at the top priority.
            let sharing = firsts.iter().filter(|p| Some(**p) == best).count() > 1;
            for (tenant, line) in &queue.tenants {
                let gate = self.line_gate(kind, tenant);
                // Alone at one priority: nothing overtakes it but its own earlier jobs.
                let level = |e: Option<(&Place, &JobId)>| e.map(|((Reverse(p), _), _)| *p);
                if gate.is_none()
                    && !sharing
                    && level(line.first_key_value()) == best
                    && level(line.last_key_value()) == best
                {
                    continue;
                }
                for id in line.values() {
                    if found.len() >= most {
                        break 'kinds;
                    }
                    let Some(w) = self.waiting.get(id) else {
                        continue;
                    };
                    let reason = match gate {
                        Some(gate) => gate,
                        None if now - w.arrived.max(w.due.unwrap_or(w.arrived)) < after
                            || queue.last_pick.is_none_or(|at| at <= w.arrived) =>
                        {
                            continue
                        }
                        None if best.is_some_and(|b| b > w.priority) => WaitReason::Priority,
                        None if sharing => WaitReason::TenantShare,
                        None => continue,
                    };
                    if untold(w, reason) {
                        found.push((*id, reason, None));
                    }
                }
            }
        }
        found
            .into_iter()
            .filter_map(|(id, reason, key)| {
                let w = self.waiting.get_mut(&id)?;
                w.told.push(reason);
                Some(Notice {
                    job: id,
                    tenant: w.tenant.clone(),
                    kind: w.kind.clone(),
                    attempt: w.attempt,
                    reason,
                    key,
                })
            })
            .collect()
    }

    /// What holds all of `tenant`'s candidates of `kind`: a pause (for all or for it), or its
    /// cap of running jobs.
    fn line_gate(&self, kind: &JobKind, tenant: &Tenant) -> Option<WaitReason> {
        if self.paused.contains(&(kind.clone(), None))
            || self.paused.contains(&(kind.clone(), Some(tenant.clone())))
        {
            Some(WaitReason::Paused)
        } else if !self.open(kind, tenant) {
            Some(WaitReason::TenantCap)
        } else {
            None
        }
    }

    /// Whether `tenant`'s jobs of `kind` may start: not paused for it, not at its cap.
    fn open(&self, kind: &JobKind, tenant: &Tenant) -> bool {
        !self.paused.contains(&(kind.clone(), Some(tenant.clone())))
            && self
                .shares
                .get(tenant)
                .and_then(|s| s.max_running)
                .is_none_or(|cap| {
                    self.under_way
                        .get(&(kind.clone(), tenant.clone()))
                        .copied()
                        .unwrap_or(0)
                        < cap
                })
    }

    /// The `most` concurrency keys with the most jobs waiting for a slot, then running.
    pub fn busiest_keys(&self, most: usize) -> Vec<KeyLoad> {
        let mut loads: Vec<KeyLoad> = self
            .keys
            .iter()
            .map(|(k, s)| KeyLoad {
                tenant: k.tenant.clone(),
                key: k.key.clone(),
                running: s.held,
                waiting: s.line.len(),
            })
            .collect();
        loads.sort_unstable_by(|a, b| {
            (b.waiting, b.running, &a.tenant, &a.key)
                .cmp(&(a.waiting, a.running, &b.tenant, &b.key))
        });
        loads.truncate(most);
        loads
    }

    /// Kinds with a candidate to release.
    pub fn ready_kinds(&self) -> Vec<JobKind> {
        self.kinds
            .iter()
            .filter(|(kind, q)| {
                !q.turns.is_empty() && !self.paused.contains(&((*kind).clone(), None))
            })
            .map(|(kind, _)| kind.clone())
            .collect()
    }

    /// What blocked job `id` waits for: its children, its batch's members, or its dependencies.
    fn blocked_reason(&self, id: JobId) -> WaitReason {
        match self.waiting.get(&id).and_then(|w| w.workflow.as_ref()) {
            Some(w) if w.awaits_children => WaitReason::Children,
            Some(w) if w.is_batch => WaitReason::Batch,
            _ => WaitReason::Dependencies,
        }
    }

    /// At most `most` of the jobs waiting for other jobs' ends, in arrival order from after
    /// `after` (wrapping round to the oldest), so that checks taking `most` at a time reach every
    /// one in turn; with the place to go on from next time (`None`: from the oldest).
    pub fn blocked(
        &self,
        after: Option<(u64, JobId)>,
        most: usize,
    ) -> (Vec<Blocked>, Option<(u64, JobId)>) {
        use std::ops::Bound::{Excluded, Unbounded};
        let (later, earlier) = match after {
            Some(at) => (
                self.blocked.range((Excluded(at), Unbounded)),
                self.blocked.range(..=at),
            ),
            None => (
                self.blocked.range(..),
                self.blocked.range(..(0, JobId(uuid::Uuid::nil()))),
            ),
        };
        let places: Vec<(u64, JobId)> = later.chain(earlier).take(most).copied().collect();
        let next = (places.len() == most && self.blocked.len() > most)
            .then(|| places.last().copied())
            .flatten();
        let jobs = places
            .into_iter()
            .filter_map(|(_, id)| {
                let w = self.waiting.get(&id)?;
                Some((id, w.tenant.clone(), w.attempt, w.workflow.clone()?))
            })
            .collect();
        (jobs, next)
    }

    /// The command held for job `id`, as it would be released.
    pub fn body(&self, id: JobId) -> Option<&Bytes> {
        self.waiting.get(&id).map(|w| &w.body)
    }

    /// What it waited for has ended: blocked job `id` goes on (to its due time, its key, its
    /// turn), to be released as `body` (its command, now telling how those jobs ended).
    pub fn unblock(&mut self, id: JobId, body: Bytes, now: DateTime<Utc>) {
        let Some(job) = self.waiting.get_mut(&id) else {
            return;
        };
        if job.workflow.take().is_none() {
            return;
        }
        job.body = body;
        let (seq, due) = (job.seq, job.due.filter(|d| *d > now));
        self.blocked.remove(&(seq, id));
        match due {
            Some(due) => {
                self.delayed.insert((due, seq, id));
            }
            None => self.admit(id, now),
        }
    }

    /// Whether a round may release something at `now`: a candidate, a job come due, or a job
    /// waiting on a rate limit.
    pub fn wants_round(&self, now: DateTime<Utc>) -> bool {
        !self.ready_kinds().is_empty()
            || self.delayed.first().is_some_and(|(due, _, _)| *due <= now)
            || self.rates.values().any(|r| !r.line.is_empty())
    }

    /// Counts an attempt found under way (a released command still in the stream) when this
    /// scheduler took over.
    pub fn adopt(&mut self, job: JobId, running: Running) {
        if self.running.contains_key(&job) {
            return;
        }
        if let Some(key) = &running.key {
            self.keys.entry(key.clone()).or_default().held += 1;
        }
        *self
            .under_way
            .entry((running.kind.clone(), running.tenant.clone()))
            .or_default() += 1;
        self.running.insert(job, running);
    }

    /// Sets a tenant's share (the default one: `Share::default()`).
    pub fn set_share(&mut self, tenant: Tenant, share: Share) {
        if share == Share::default() {
            self.shares.remove(&tenant);
        } else {
            self.shares.insert(tenant, share);
        }
    }

    /// A key for `tenant`'s `concurrency` (for [`Queues::adopt`]).
    pub fn key_of(tenant: &Tenant, concurrency: Option<&ConcurrencyKey>) -> Option<KeyId> {
        concurrency.map(|c| KeyId {
            tenant: tenant.clone(),
            key: c.key.clone(),
        })
    }

    /// Takes a waiting command. Returns the acknowledgement subject of a command to acknowledge
    /// now: this one if its attempt was released already (a redelivery after a lost ack), is
    /// another copy of one held, or is older than one held or under way; or the one it replaces
    /// (a newer attempt of a job).
    pub fn add(&mut self, job: Waiting, now: DateTime<Utc>) -> Option<String> {
        if let Some(under_way) = self.running.get(&job.job).map(|r| r.attempt) {
            if under_way >= job.attempt {
                return Some(job.reply);
            }
            // A later attempt's command exists only once the earlier one's outcome is stored,
            // whether or not its end event has been read yet.
            self.ended(job.job, Some(under_way));
        }
        let mut replaced = None;
        if let Some(held) = self.waiting.get_mut(&job.job) {
            if (held.attempt, held.generation) == (job.attempt, job.generation) {
                if held.seq == job.seq {
                    // The same message delivered again: only its acknowledgement subject changed.
                    held.reply = job.reply;
                    return None;
                }
                return Some(job.reply);
            }
            if held.attempt > job.attempt {
                return Some(job.reply);
            }
            let old = held.job;
            replaced = self.forget(old).map(|w| w.reply);
        }
        let id = job.job;
        let due = job.due.filter(|d| *d > now);
        let seq = job.seq;
        let blocked = job.workflow.is_some();
        self.waiting.insert(id, job);
        if blocked {
            self.blocked.insert((seq, id));
            return replaced;
        }
        match due {
            Some(due) => {
                self.delayed.insert((due, seq, id));
            }
            None => self.admit(id, now),
        }
        replaced
    }

    /// Moves the jobs due by `now` into the line, and those whose rate limit has room.
    pub fn promote_due(&mut self, now: DateTime<Utc>) {
        while let Some(&(due, seq, id)) = self.delayed.first() {
            if due > now {
                break;
            }
            self.delayed.remove(&(due, seq, id));
            self.admit(id, now);
        }
        let waiting: Vec<KeyId> = self
            .rates
            .iter()
            .filter(|(_, r)| !r.line.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        for key in waiting {
            self.pace(&key, now);
        }
    }

    /// A due job joins its key's line, or goes on to its rate limit.
    fn admit(&mut self, id: JobId, now: DateTime<Utc>) {
        let Some(job) = self.waiting.get(&id) else {
            return;
        };
        match job.key() {
            Some(key) => {
                let limit = job.concurrency.as_ref().map_or(1, |c| c.limit);
                let state = self.keys.entry(key.clone()).or_default();
                state.limit = limit;
                state.line.insert(job.place(), id);
                self.fill(&key, now);
            }
            None => self.gate(id, now),
        }
    }

    /// A job with room in its concurrency key joins its rate limit's line (then the
    /// candidates as the rate allows), or the candidates.
    fn gate(&mut self, id: JobId, now: DateTime<Utc>) {
        let Some(job) = self.waiting.get(&id) else {
            return;
        };
        match job.rate_key() {
            Some(key) => {
                let place = job.place();
                self.rates
                    .entry(key.clone())
                    .or_default()
                    .line
                    .insert(place, id);
                self.pace(&key, now);
            }
            None => self.candidate(id),
        }
    }

    /// Moves jobs from a rate limit's line to the candidates while its period has room.
    fn pace(&mut self, key: &KeyId, now: DateTime<Utc>) {
        loop {
            let Some(state) = self.rates.get_mut(key) else {
                return;
            };
            let Some((&place, &id)) = state.line.first_key_value() else {
                if state.recent.is_empty() {
                    self.rates.remove(key);
                }
                return;
            };
            let Some(rate) = self.waiting.get(&id).and_then(|j| j.rate_limit.clone()) else {
                state.line.remove(&place);
                continue;
            };
            let period = chrono::Duration::milliseconds(rate.period_ms as i64);
            while state.recent.front().is_some_and(|t| *t <= now - period) {
                state.recent.pop_front();
            }
            if state.recent.len() >= rate.limit as usize {
                return;
            }
            state.line.remove(&place);
            state.recent.push_back(now);
            self.candidate(id);
        }
    }

    /// Moves jobs from `key`'s line on (to their rate limit, or the candidates) while the key has
    /// free slots.
    fn fill(&mut self, key: &KeyId, now: DateTime<Utc>) {
        loop {
            let Some(state) = self.keys.get_mut(key) else {
                return;
            };
            let Some((&place, &id)) = state.line.first_key_value() else {
                if state.held == 0 {
                    self.keys.remove(key);
                }
                return;
            };
            let limit = self
                .waiting
                .get(&id)
                .and_then(|j| j.concurrency.as_ref())
                .map_or(state.limit, |c| c.limit);
            if state.held >= limit {
                return;
            }
            state.line.remove(&place);
            state.held += 1;
            self.gate(id, now);
        }
    }

    fn candidate(&mut self, id: JobId) {
        let Some(job) = self.waiting.get(&id) else {
            return;
        };
        let queue = self.kinds.entry(job.kind.clone()).or_default();
        let line = queue.tenants.entry(job.tenant.clone()).or_default();
        if line.is_empty() {
            queue.turns.push_back(job.tenant.clone());
        }
        line.insert(job.place(), id);
    }

    /// The next job of `kind` to release, taken out of the waiting jobs and counted as running
    /// (`None`: nothing of `kind` may start now).
    pub fn pick(&mut self, kind: &JobKind, now: DateTime<Utc>) -> Option<Waiting> {
        if self.paused.contains(&(kind.clone(), None)) {
            return None;
        }
        let queue = self.kinds.get_mut(kind)?;
        let (paused, shares, under_way) = (&self.paused, &self.shares, &self.under_way);
        let open = |tenant: &Tenant| {
            let key = (kind.clone(), tenant.clone());
            !paused.contains(&(kind.clone(), Some(tenant.clone())))
                && shares
                    .get(tenant)
                    .and_then(|s| s.max_running)
                    .is_none_or(|cap| under_way.get(&key).copied().unwrap_or(0) < cap)
        };
        // The highest priority any open tenant has waiting, then the first such tenant in turn.
        let best = queue
            .turns
            .iter()
            .filter(|t| open(t))
            .filter_map(|t| queue.tenants.get(t)?.first_key_value())
            .map(|((Reverse(p), _), _)| *p)
            .max()?;
        let turn = queue.turns.iter().position(|t| {
            open(t)
                && queue
                    .tenants
                    .get(t)
                    .and_then(|l| l.first_key_value())
                    .is_some_and(|((Reverse(p), _), _)| *p == best)
        })?;
        let tenant = queue.turns.remove(turn).expect("a tenant in turn");
        queue.last_pick = Some(now);
        let line = queue
            .tenants
            .get_mut(&tenant)
            .expect("a tenant with a line");
        let (_, id) = line.pop_first().expect("a candidate");
        let weight = self.shares.get(&tenant).map_or(1, |s| s.weight.max(1));
        let credit = self
            .credit
            .entry((kind.clone(), tenant.clone()))
            .or_default();
        *credit += 1;
        if line.is_empty() {
            queue.tenants.remove(&tenant);
            *credit = 0;
        } else if *credit < weight {
            // Its turn goes on: a weight of n is n releases per turn.
            queue.turns.insert(turn, tenant);
        } else {
            // Its turn is over: to the back.
            *credit = 0;
            queue.turns.push_back(tenant);
        }
        if queue.turns.is_empty() {
            self.kinds.remove(kind);
        }
        let job = self.waiting.remove(&id)?;
        *self
            .under_way
            .entry((job.kind.clone(), job.tenant.clone()))
            .or_default() += 1;
        let earlier = self.running.insert(
            id,
            Running {
                kind: job.kind.clone(),
                tenant: job.tenant.clone(),
                attempt: job.attempt,
                key: job.key(),
                released_at: now,
            },
        );
        // Never expected (`add` ends an earlier attempt first); its slot is not kept if so.
        if let Some(e) = &earlier {
            self.count_down(e);
        }
        if let Some(key) = earlier.and_then(|e| e.key) {
            if let Some(state) = self.keys.get_mut(&key) {
                state.held = state.held.saturating_sub(1);
            }
        }
        Some(job)
    }

    /// Hands a picked job back (its release failed): a candidate again, first in its line, still
    /// holding its concurrency slot and its rate limit's release.
    pub fn unpick(&mut self, job: Waiting) {
        let id = job.job;
        if let Some(r) = self.running.remove(&id) {
            self.count_down(&r);
        }
        self.waiting.insert(id, job);
        self.candidate(id);
    }

    /// Whether an attempt of `job` is under way.
    pub fn is_running(&self, job: JobId) -> bool {
        self.running.contains_key(&job)
    }

    /// An attempt of `job` ended (`attempt`: which, if the event says): its slot is free.
    pub fn ended(&mut self, job: JobId, attempt: Option<u32>) {
        let Some(running) = self.running.get(&job) else {
            return;
        };
        if attempt.is_some_and(|a| a < running.attempt) {
            // An earlier attempt's late news: the one under way goes on.
            return;
        }
        let running = self.running.remove(&job).expect("present");
        self.count_down(&running);
        if let Some(key) = running.key {
            if let Some(state) = self.keys.get_mut(&key) {
                state.held = state.held.saturating_sub(1);
            }
            self.fill(&key, Utc::now());
        }
    }

    fn count_down(&mut self, running: &Running) {
        let key = (running.kind.clone(), running.tenant.clone());
        if let Some(n) = self.under_way.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.under_way.remove(&key);
            }
        }
    }

    /// Released attempts older than `before`, for reconciliation against the stream.
    pub fn running_before(&self, before: DateTime<Utc>, most: usize) -> Vec<(JobId, JobKind)> {
        let mut old: Vec<_> = self
            .running
            .iter()
            .filter(|(_, r)| r.released_at < before)
            .map(|(id, r)| (r.released_at, *id, r.kind.clone()))
            .collect();
        old.sort_unstable_by_key(|(at, _, _)| *at);
        old.into_iter()
            .take(most)
            .map(|(_, id, kind)| (id, kind))
            .collect()
    }

    /// Reconciliation found `job`'s attempt still under way at `now`.
    pub fn still_running(&mut self, job: JobId, now: DateTime<Utc>) {
        if let Some(r) = self.running.get_mut(&job) {
            r.released_at = now;
        }
    }

    /// The pauses in force: `(kind, None)` for every tenant, `(kind, Some(tenant))` for one.
    pub fn set_pauses(&mut self, paused: HashSet<(JobKind, Option<Tenant>)>) {
        self.paused = paused;
    }

    /// Takes a held job out (its cancel was requested): `None` if it is not held.
    pub fn withdraw(&mut self, job: JobId) -> Option<Waiting> {
        let job = self.forget(job)?;
        // The slot it may have held goes to the next in its key's line.
        if let Some(key) = job.key() {
            self.fill(&key, Utc::now());
        }
        Some(job)
    }

    /// Drops a waiting job entirely, giving back the slot it held, if it held one.
    fn forget(&mut self, id: JobId) -> Option<Waiting> {
        let job = self.waiting.remove(&id)?;
        let place = job.place();
        if self.blocked.remove(&(job.seq, id)) {
            return Some(job);
        }
        let delayed = job
            .due
            .is_some_and(|due| self.delayed.remove(&(due, job.seq, id)));
        if let Some(key) = job.key() {
            if let Some(state) = self.keys.get_mut(&key) {
                let in_line = state.line.remove(&place).is_some();
                // Past its key's line (a candidate, or in its rate limit's line): it held a slot.
                if !delayed && !in_line {
                    state.held = state.held.saturating_sub(1);
                }
            }
        }
        if let Some(key) = job.rate_key() {
            if let Some(state) = self.rates.get_mut(&key) {
                state.line.remove(&place);
            }
        }
        if let Some(queue) = self.kinds.get_mut(&job.kind) {
            if let Some(line) = queue.tenants.get_mut(&job.tenant) {
                line.remove(&place);
                if line.is_empty() {
                    queue.tenants.remove(&job.tenant);
                    queue.turns.retain(|t| *t != job.tenant);
                }
            }
        }
        Some(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(tenant: &str, seq: u64, priority: i32, key: Option<(&str, u32)>) -> Waiting {
        Waiting {
            job: JobId::new(),
            tenant: Tenant::parse(tenant).unwrap(),
            kind: JobKind::parse("work").unwrap(),
            attempt: 1,
            generation: 0,
            priority,
            concurrency: key.map(|(k, limit)| ConcurrencyKey {
                key: k.into(),
                limit,
            }),
            rate_limit: None,
            due: None,
            seq,
            body: Bytes::new(),
            reply: String::new(),
            arrived: Utc::now() - chrono::Duration::seconds(10),
            told: Vec::new(),
            workflow: None,
        }
    }

    fn drain(q: &mut Queues, now: DateTime<Utc>) -> Vec<Waiting> {
        let kind = JobKind::parse("work").unwrap();
        std::iter::from_fn(|| q.pick(&kind, now)).collect()
    }

    #[test]
    fn a_job_waiting_for_others_is_weighed_only_once_let_go() {
        let mut q = Queues::default();
        let now = Utc::now();
        let dep = JobId::new();
        let mut held = job("a", 0, 9, Some(("acct", 1)));
        held.workflow = Some(Workflow {
            depends_on: vec![dep],
            ..Workflow::default()
        });
        let id = held.job;
        q.add(held, now);
        let callback = Waiting {
            workflow: Some(Workflow {
                is_batch: true,
                ..Workflow::default()
            }),
            ..job("a", 1, 0, None)
        };
        let batch = callback.job;
        q.add(callback, now);
        q.add(job("a", 2, 0, Some(("acct", 1))), now);
        // Neither is a candidate, nor holds its key's slot: the plain job goes first.
        let first = drain(&mut q, now);
        assert_eq!(first.len(), 1);
        assert_ne!(first[0].job, id);
        let reasons: Vec<_> = q.waiting_by_reason().into_iter().take(2).collect();
        assert_eq!(reasons, [("dependencies", 1), ("batch", 1)]);
        let told: Vec<_> = q
            .untold(now, chrono::Duration::seconds(1), 10)
            .into_iter()
            .map(|n| (n.job, n.reason))
            .collect();
        assert!(told.contains(&(id, WaitReason::Dependencies)), "{told:?}");
        assert!(told.contains(&(batch, WaitReason::Batch)), "{told:?}");
        assert_eq!(q.blocked(None, 10).0.len(), 2);
        // Checked one at a time, each in turn.
        let (one, next) = q.blocked(None, 1);
        let (other, _) = q.blocked(next, 1);
        assert_ne!(one[0].0, other[0].0);
        // Let go, it is released as its new body says, once its key has room.
        q.unblock(id, Bytes::from_static(b"told"), now);
        assert!(drain(&mut q, now).is_empty(), "its key is full");
        q.ended(first[0].job, Some(1));
        let next = drain(&mut q, now);
        assert_eq!(next.len(), 1);
        assert_eq!((next[0].job, next[0].body.as_ref()), (id, &b"told"[..]));
        // A held job withdrawn (its cancel) leaves nothing behind.
        assert!(q.withdraw(batch).is_some());
        assert!(q.blocked(None, 10).0.is_empty());
        assert_eq!(q.waiting(), 0);
    }

    #[test]
    fn tenants_take_turns_whatever_their_backlog() {
        let mut q = Queues::default();
        let now = Utc::now();
        for seq in 0..100 {
            q.add(job("a", seq, 0, None), now);
        }
        for seq in 100..103 {
            q.add(job("b", seq, 0, None), now);
        }
        let order: Vec<String> = drain(&mut q, now)
            .iter()
            .map(|j| j.tenant.to_string())
            .collect();
        assert_eq!(&order[..6], ["a", "b", "a", "b", "a", "b"]);
        assert!(order[6..].iter().all(|t| t == "a"));
    }

    #[test]
    fn higher_priority_overtakes_across_tenants() {
        let mut q = Queues::default();
        let now = Utc::now();
        for seq in 0..10 {
            q.add(job("a", seq, 0, None), now);
        }
        let urgent = job("b", 10, 5, None);
        let id = urgent.job;
        q.add(urgent, now);
        assert_eq!(drain(&mut q, now)[0].job, id);
    }

    #[test]
    fn a_full_key_holds_its_jobs_until_an_attempt_ends() {
        let mut q = Queues::default();
        let now = Utc::now();
        for seq in 0..3 {
            q.add(job("a", seq, 0, Some(("acct", 1))), now);
        }
        q.add(job("a", 3, 0, None), now);
        let first = drain(&mut q, now);
        assert_eq!(first.len(), 2, "one keyed job and the unkeyed one");
        let keyed = first.iter().find(|j| j.concurrency.is_some()).unwrap();
        assert!(drain(&mut q, now).is_empty());
        q.ended(keyed.job, Some(1));
        assert_eq!(drain(&mut q, now).len(), 1);
    }

    #[test]
    fn a_retry_seen_before_its_attempts_end_frees_the_slot_once() {
        let mut q = Queues::default();
        let now = Utc::now();
        let first = job("a", 0, 0, Some(("acct", 2)));
        let id = first.job;
        q.add(first.clone(), now);
        q.add(job("a", 1, 0, Some(("acct", 2))), now);
        assert_eq!(drain(&mut q, now).len(), 2);
        // Attempt 2 of the first job arrives before `job.failed` of attempt 1 is read.
        let retry = Waiting {
            attempt: 2,
            seq: 2,
            ..first
        };
        assert_eq!(q.add(retry, now), None);
        assert_eq!(
            drain(&mut q, now).len(),
            1,
            "attempt 1's slot went to attempt 2"
        );
        q.ended(id, Some(1));
        q.add(job("a", 3, 0, Some(("acct", 2))), now);
        assert!(
            drain(&mut q, now).is_empty(),
            "two attempts under way: the key is full"
        );
        q.ended(id, Some(2));
        assert_eq!(drain(&mut q, now).len(), 1);
    }

    #[test]
    fn a_weight_is_releases_per_turn_and_a_cap_sits_turns_out() {
        let mut q = Queues::default();
        let now = Utc::now();
        let heavy = Tenant::parse("heavy").unwrap();
        q.set_share(
            heavy.clone(),
            Share {
                weight: 3,
                max_running: None,
            },
        );
        for seq in 0..20 {
            q.add(job("heavy", seq, 0, None), now);
            q.add(job("light", 100 + seq, 0, None), now);
        }
        let kind = JobKind::parse("work").unwrap();
        let order: Vec<String> = (0..8)
            .map(|_| q.pick(&kind, now).unwrap().tenant.to_string())
            .collect();
        assert_eq!(
            order,
            ["heavy", "heavy", "heavy", "light", "heavy", "heavy", "heavy", "light"]
        );

        let mut q = Queues::default();
        q.set_share(
            heavy,
            Share {
                weight: 1,
                max_running: Some(2),
            },
        );
        for seq in 0..5 {
            q.add(job("heavy", seq, 0, None), now);
        }
        let got = drain(&mut q, now);
        assert_eq!(got.len(), 2, "capped at 2 under way");
        q.ended(got[0].job, Some(1));
        assert_eq!(drain(&mut q, now).len(), 1);
    }

    #[test]
    fn a_rate_limit_paces_releases_over_its_period() {
        let mut q = Queues::default();
        let now = Utc::now();
        for seq in 0..5 {
            let mut j = job("a", seq, 0, None);
            j.rate_limit = Some(RateLimit {
                key: "api".into(),
                limit: 2,
                period_ms: 1000,
            });
            q.add(j, now);
        }
        assert_eq!(drain(&mut q, now).len(), 2);
        assert!(q.wants_round(now));
        q.promote_due(now + chrono::Duration::milliseconds(999));
        assert!(drain(&mut q, now).is_empty());
        q.promote_due(now + chrono::Duration::milliseconds(1000));
        assert_eq!(drain(&mut q, now).len(), 2);
    }

    #[test]
    fn a_pause_holds_a_kind_for_one_tenant_or_all() {
        let mut q = Queues::default();
        let now = Utc::now();
        let kind = JobKind::parse("work").unwrap();
        let a = Some(Tenant::parse("a").unwrap());
        q.add(job("a", 0, 0, None), now);
        q.add(job("b", 1, 0, None), now);
        q.set_pauses([(kind.clone(), a)].into());
        let got = drain(&mut q, now);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].tenant.as_str(), "b");
        q.set_pauses([(kind, None)].into());
        assert!(drain(&mut q, now).is_empty());
        assert!(q.waiting_by_reason().contains(&("paused", 1)));
        q.set_pauses(HashSet::new());
        assert_eq!(drain(&mut q, now).len(), 1);
    }

    #[test]
    fn delayed_jobs_wait_for_their_time_and_redeliveries_are_one_job() {
        let mut q = Queues::default();
        let now = Utc::now();
        let mut later = job("a", 0, 0, None);
        later.due = Some(now + chrono::Duration::seconds(5));
        later.reply = "first".into();
        assert_eq!(q.add(later.clone(), now), None);
        let mut copy = later.clone();
        copy.seq = 7;
        copy.reply = "copy".into();
        assert_eq!(
            q.add(copy, now),
            Some("copy".into()),
            "another copy is acknowledged"
        );
        assert_eq!(q.waiting(), 1);
        assert!(drain(&mut q, now).is_empty());
        q.promote_due(now + chrono::Duration::seconds(6));
        assert_eq!(drain(&mut q, now).len(), 1);
        assert_eq!(q.add(later, now), Some("first".into()), "released already");
    }

    #[test]
    fn waiting_jobs_are_told_why_once_gates_first() {
        let mut q = Queues::default();
        let now = Utc::now();
        let after = chrono::Duration::seconds(1);
        // A key of limit 1 with one job released and one in its line.
        q.add(job("a", 1, 0, Some(("acct", 1))), now);
        let first = q.pick(&JobKind::parse("work").unwrap(), now).unwrap();
        let held = job("a", 2, 0, Some(("acct", 1)));
        let held_id = held.job;
        q.add(held, now);
        // Tenant a's plain jobs behind tenant b's urgent one; tenant c alone at one priority.
        let low = job("a", 3, 0, None);
        let low_id = low.job;
        q.add(low, now);
        q.add(job("b", 4, 10, None), now);
        q.add(job("b", 6, 10, None), now);
        let mut fresh = job("a", 5, 0, None);
        fresh.arrived = now;
        q.add(fresh, now);
        // One urgent job released: the others have been overtaken since they came.
        let urgent = q.pick(&JobKind::parse("work").unwrap(), now).unwrap();
        assert_eq!(urgent.seq, 4);

        let told = q.untold(now, after, 100);
        let reasons: Vec<_> = told
            .iter()
            .map(|n| (n.job, n.reason, n.key.clone()))
            .collect();
        assert!(reasons.contains(&(held_id, WaitReason::ConcurrencyKey, Some("acct".into()))));
        assert!(reasons.contains(&(low_id, WaitReason::Priority, None)));
        assert_eq!(
            told.len(),
            2,
            "the urgent job and the one just come are told nothing: {told:?}"
        );
        assert!(
            q.untold(now, after, 100).is_empty(),
            "each reason is told once"
        );

        // Paused: a gate, told even after an ordering reason.
        q.set_pauses(HashSet::from([(JobKind::parse("work").unwrap(), None)]));
        let paused: Vec<_> = q
            .untold(now, after, 100)
            .into_iter()
            .map(|n| n.reason)
            .collect();
        assert!(!paused.is_empty() && paused.iter().all(|r| *r == WaitReason::Paused));
        q.ended(first.job, Some(1));
        assert!(
            q.untold(now, after, 1).len() <= 1,
            "at most `most` at a time"
        );
    }

    #[test]
    fn tenants_taking_turns_are_told_so_and_a_lone_tenant_nothing() {
        let mut q = Queues::default();
        let now = Utc::now();
        let after = chrono::Duration::seconds(1);
        for seq in 0..4 {
            q.add(job("a", seq, 0, None), now);
        }
        assert!(
            q.untold(now, after, 100).is_empty(),
            "nothing released yet: no worker"
        );
        q.pick(&JobKind::parse("work").unwrap(), now).unwrap();
        assert!(
            q.untold(now, after, 100).is_empty(),
            "alone, it only waits for a worker"
        );
        q.add(job("b", 10, 0, None), now);
        let told = q.untold(now, after, 100);
        assert_eq!(told.len(), 4, "{told:?}");
        assert!(told.iter().all(|n| n.reason == WaitReason::TenantShare));
    }

    #[test]
    fn a_cancelled_job_gives_its_slot_to_the_next_in_its_key_line() {
        let mut q = Queues::default();
        let now = Utc::now();
        let work = JobKind::parse("work").unwrap();
        // The first holds the key's one slot, waiting behind a pause; the second is in line.
        q.set_pauses(HashSet::from([(work.clone(), None)]));
        let first = job("a", 1, 0, Some(("acct", 1)));
        let first_id = first.job;
        q.add(first, now);
        q.add(job("a", 2, 0, Some(("acct", 1))), now);
        assert!(q.withdraw(first_id).is_some());
        q.set_pauses(HashSet::new());
        assert_eq!(q.pick(&work, now).map(|j| j.seq), Some(2));
        assert!(q.withdraw(first_id).is_none(), "withdrawn once");
    }

    #[test]
    fn the_busiest_keys_are_those_with_the_longest_lines() {
        let mut q = Queues::default();
        let now = Utc::now();
        for seq in 0..3 {
            q.add(job("a", seq, 0, Some(("busy", 1))), now);
        }
        q.add(job("a", 10, 0, Some(("calm", 5))), now);
        let loads = q.busiest_keys(1);
        assert_eq!(loads.len(), 1);
        assert_eq!(
            (loads[0].key.as_str(), loads[0].running, loads[0].waiting),
            ("busy", 1, 2)
        );
    }
}
