//! The workflow gate: a job that depends on other jobs, or a batch's callback, is held until the
//! read model shows what it waits for has ended.
//!
//! The read model is the judge because it is exact and ordered: the projector applies the log in
//! order, in one transaction with its checkpoint, so a batch sealed there has every member
//! submitted before its seal there too, and "every member ended" is a plain query, true after a
//! crash or a replay as before it. A dependency that ends while the projector is down releases its
//! dependents once the projector is back.

use std::collections::{HashMap, HashSet};

use events::job::{Upstream, Workflow};
use events::{JobId, JobStatus, Tenant};
use readmodel::workflows::Group;
use sqlx::PgPool;
use uuid::Uuid;

/// What became of a held job whose conditions were checked.
#[derive(Debug)]
pub(super) enum Verdict {
    /// What it waited for has ended as it needs: it goes on, told how.
    Go(JobId, Upstream),
    /// A job it depends on ended other than `succeeded`: it is cancelled, for this reason.
    Abandon(JobId, String),
}

/// Checks the conditions of `blocked` jobs (each with the attempt held); those still unmet are
/// left out.
pub(super) async fn check(
    db: &PgPool,
    blocked: &[(JobId, Tenant, u32, Workflow)],
) -> sqlx::Result<Vec<Verdict>> {
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
    let batches: Vec<Uuid> = blocked
        .iter()
        .filter(|(_, _, _, w)| w.is_batch)
        .map(|(id, _, _, _)| id.0)
        .collect();
    let parents: Vec<Uuid> = blocked
        .iter()
        .filter(|(_, _, _, w)| w.awaits_children)
        .map(|(id, _, _, _)| id.0)
        .collect();
    let suspended = if parents.is_empty() {
        HashMap::new()
    } else {
        readmodel::workflows::suspended(db, &parents).await?
    };
    let sealed: HashSet<Uuid> = if batches.is_empty() {
        HashSet::new()
    } else {
        readmodel::workflows::sealed(db, &batches)
            .await?
            .into_iter()
            .collect()
    };
    let mut verdicts = Vec::new();
    'jobs: for (id, tenant, attempt, workflow) in blocked {
        let mut upstream = Upstream::default();
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
            upstream.dependencies.push(end.clone());
        }
        if workflow.is_batch {
            let members = Group::Members(id.0);
            if !sealed.contains(&id.0) || readmodel::workflows::has_open(db, members).await? {
                continue;
            }
            upstream.members = Some(
                readmodel::workflows::ended_group(db, members, Upstream::MEMBERS_LIMIT).await?,
            );
        }
        if workflow.awaits_children {
            // The wait is in the read model (and so is every child submitted before it), and no
            // child is unended.
            let waited = i64::from(*attempt) - 1;
            let children = Group::Children(id.0);
            if suspended.get(&id.0).is_none_or(|a| i64::from(*a) < waited)
                || readmodel::workflows::has_open(db, children).await?
            {
                continue;
            }
            upstream.children = Some(
                readmodel::workflows::ended_group(db, children, Upstream::MEMBERS_LIMIT).await?,
            );
        }
        verdicts.push(Verdict::Go(*id, upstream));
    }
    Ok(verdicts)
}
