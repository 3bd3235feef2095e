//! The workflow gate: a job that depends on other jobs, a batch's callback, or a parent waiting
//! for its children is held until the read model shows what it waits for has ended.
//!
//! The read model is the judge because it is exact and ordered: the projector applies the log in
//! order, in one transaction with its checkpoint, so a batch sealed there has every member
//! submitted before its seal there too (and a parent's wait, every child submitted before it),
//! and "every member ended" is a plain query, true after a crash or a replay as before it. A
//! dependency that ends while the projector is down releases its dependents once it is back.
//!
//! A check costs a few queries whatever the number of jobs checked (each condition is one
//! set-based query); only the jobs let go cost one more each, to tell them how what they waited
//! for ended.

use std::collections::{HashMap, HashSet};

use events::job::{Ended, Members, Upstream, Workflow};
use events::{JobId, JobStatus};
use readmodel::workflows::Group;

use super::queue::Blocked;
use sqlx::PgPool;
use uuid::Uuid;

/// The most JSON bytes of results passed on in one released command; the others are left out
/// (their `result_url` says where they are), so a command stays far below the stream's message
/// size.
const RESULTS_BUDGET: usize = 256 * 1024;

/// What became of a held job whose conditions were checked.
#[derive(Debug)]
pub(super) enum Verdict {
    /// What it waited for has ended as it needs: it goes on, told how.
    Go(JobId, Upstream),
    /// A job it depends on ended other than `succeeded`: it is cancelled, for this reason.
    Abandon(JobId, String),
}

/// Checks the conditions of `blocked` jobs; those still unmet are left out.
pub(super) async fn check(db: &PgPool, blocked: &[Blocked]) -> sqlx::Result<Vec<Verdict>> {
    let ids = |f: fn(&Workflow) -> bool| -> Vec<Uuid> {
        blocked
            .iter()
            .filter(|(_, _, _, w)| f(w))
            .map(|(id, _, _, _)| id.0)
            .collect()
    };
    let mut deps: Vec<Uuid> = blocked
        .iter()
        .flat_map(|(_, _, _, w)| w.depends_on.iter().map(|d| d.0))
        .collect();
    deps.sort_unstable();
    deps.dedup();
    let ended = if deps.is_empty() {
        HashMap::new()
    } else {
        readmodel::workflows::ended(db, &deps, Upstream::RESULT_LIMIT).await?
    };
    // A batch is done when sealed with no member open; a wait, when in the read model with no
    // child open.
    let sealed = readmodel::workflows::sealed(db, &ids(|w| w.is_batch)).await?;
    let open_batches: HashSet<Uuid> =
        readmodel::workflows::open_groups(db, Group::Members, &sealed)
            .await?
            .into_iter()
            .collect();
    let waiting = ids(|w| w.awaits_children);
    let suspended = if waiting.is_empty() {
        HashMap::new()
    } else {
        readmodel::workflows::suspended(db, &waiting).await?
    };
    let waited: Vec<Uuid> = blocked
        .iter()
        .filter(|(id, _, attempt, w)| {
            w.awaits_children
                && suspended
                    .get(&id.0)
                    .is_some_and(|a| i64::from(*a) >= i64::from(*attempt) - 1)
        })
        .map(|(id, _, _, _)| id.0)
        .collect();
    let open_parents: HashSet<Uuid> =
        readmodel::workflows::open_groups(db, Group::Children, &waited)
            .await?
            .into_iter()
            .collect();
    let (sealed, waited): (HashSet<Uuid>, HashSet<Uuid>) =
        (sealed.into_iter().collect(), waited.into_iter().collect());

    let mut verdicts = Vec::new();
    'jobs: for (id, tenant, _, workflow) in blocked {
        let mut upstream = Upstream::default();
        let mut budget = RESULTS_BUDGET;
        for dep in &workflow.depends_on {
            // Not ended (or not projected yet); or another tenant's, which submission refuses.
            let Some((owner, end)) = ended.get(&dep.0) else {
                continue 'jobs;
            };
            if owner != tenant.as_str() {
                continue 'jobs;
            }
            if end.status != JobStatus::Succeeded {
                let why = format!("dependency {dep} {}", end.status.as_str());
                verdicts.push(Verdict::Abandon(*id, why));
                continue 'jobs;
            }
            upstream.dependencies.push(within(end, &mut budget));
        }
        if workflow.is_batch && (!sealed.contains(&id.0) || open_batches.contains(&id.0)) {
            continue;
        }
        if workflow.awaits_children && (!waited.contains(&id.0) || open_parents.contains(&id.0)) {
            continue;
        }
        if workflow.is_batch {
            upstream.members = Some(ended_group(db, Group::Members(id.0)).await?);
        }
        if workflow.awaits_children {
            upstream.children = Some(ended_group(db, Group::Children(id.0)).await?);
        }
        verdicts.push(Verdict::Go(*id, upstream));
    }
    Ok(verdicts)
}

/// A dependency's end as passed on: its result while the budget lasts, else where to read it.
fn within(end: &Ended, budget: &mut usize) -> Ended {
    let size = end
        .result
        .as_ref()
        .map_or(0, |r| serde_json::to_vec(r).map_or(usize::MAX, |b| b.len()));
    let mut end = end.clone();
    if size > *budget {
        end.result = None;
        end.result_url = Some(format!("/v1/jobs/{}/result", end.id));
    } else {
        *budget -= size;
    }
    end
}

async fn ended_group(db: &PgPool, group: Group) -> sqlx::Result<Members> {
    readmodel::workflows::ended_group(db, group, Upstream::MEMBERS_LIMIT).await
}
