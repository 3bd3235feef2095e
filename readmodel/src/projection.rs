//! The projections: each is a table in every version's schema, a view of the same name onto the
//! live one, and a checkpoint row per version. They are rebuilt together (`job_stats` derives
//! from `jobs`).

use serde::Serialize;

/// One projection of the EVENTS stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Projection {
    /// `jobs`: each job's current state.
    Jobs,
    /// `job_events`: every event of every job, the timeline.
    JobEvents,
    /// `job_stats`: counts and run time per tenant, kind and status.
    JobStats,
}

impl Projection {
    /// Every projection.
    pub const ALL: [Projection; 3] = [Self::Jobs, Self::JobEvents, Self::JobStats];

    /// The projections a read of one job depends on (the API waits for these to pass a job's
    /// submission).
    pub const JOB_READS: [Projection; 2] = [Self::Jobs, Self::JobEvents];

    /// The table, view and checkpoint name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Jobs => "jobs",
            Self::JobEvents => "job_events",
            Self::JobStats => "job_stats",
        }
    }

    /// The projection named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The names of [`Projection::ALL`], for messages: `jobs, job_events, job_stats`.
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl std::fmt::Display for Projection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Projection::ALL {
            assert_eq!(Projection::parse(p.as_str()), Some(p));
        }
        assert_eq!(Projection::parse("nope"), None);
        assert_eq!(Projection::names(), "jobs, job_events, job_stats");
    }
}
