//! How the client commands print what the API answers: tables for people, JSON for scripts.
//!
//! On a terminal, `jobs list|get|events`, `dlq list|show` and `webhooks failed` print a table
//! (for one job, an aligned key/value block) fitted to the terminal's width: long values end in
//! `…` and a nested result is summarised (`rows: [12 items]`). Piped, they print the API's JSON
//! exactly as before, so scripts that parse it keep working. `--json` and `--table` choose
//! explicitly. Tables use no colour, so `NO_COLOR` is honoured by construction.
//!
//! The renderers are pure functions of the JSON, the current time and a width ([`render`]), so
//! the unit tests below pin the layout without a terminal.

use std::io::{IsTerminal as _, Write as _};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

/// The width a table is fitted to when stdout is not a terminal (`--table` piped).
const DEFAULT_WIDTH: usize = 120;
/// The narrowest the one shrinkable column of a table gets, however narrow the terminal.
const MIN_FLEX: usize = 16;
/// Between two columns.
const GAP: &str = "  ";

/// `--json` / `--table`, for the commands that print a job, a list or a timeline.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct OutputArgs {
    /// Print the API's JSON (the default when stdout is not a terminal).
    #[arg(long, conflicts_with = "table")]
    pub json: bool,
    /// Print a table for people (the default when stdout is a terminal).
    #[arg(long)]
    pub table: bool,
}

/// What a response is, which decides its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// One job (`GET /v1/jobs/{id}`): a key/value block.
    Job,
    /// A page of jobs (`GET /v1/jobs`): a table, and the next cursor as a hint.
    Jobs,
    /// A job's timeline (`GET /v1/jobs/{id}/events`).
    Events,
    /// A page of dead-lettered jobs (`GET /v1/admin/dead-letters`).
    DeadLetters,
    /// `{"job": …, "events": […]}`: a dead-lettered job and its timeline.
    DeadLetter,
    /// Failed webhook deliveries (`GET /v1/admin/webhooks/failed`).
    FailedWebhooks,
}

impl OutputArgs {
    /// Whether to print a table: asked for, or stdout is a terminal and JSON was not asked for.
    pub fn wants_table(&self) -> bool {
        self.table || (!self.json && std::io::stdout().is_terminal())
    }

    /// Prints `v` on stdout as a table of `view`, or as pretty JSON (byte for byte what the
    /// commands printed before tables existed). A hint (the next page's cursor, or that values
    /// were shortened) goes to stderr. A closed pipe (`| head`) is not an error.
    pub fn print(&self, v: &Value, view: View) -> std::io::Result<()> {
        let written = if self.wants_table() {
            let width = console::Term::stdout()
                .size_checked()
                .map_or(DEFAULT_WIDTH, |(_, cols)| usize::from(cols));
            let out = render(v, view, Utc::now(), width);
            let mut stdout = std::io::stdout().lock();
            let written = stdout
                .write_all(out.body.as_bytes())
                .and_then(|()| stdout.flush());
            if let Some(hint) = out.hint {
                eprintln!("{hint}");
            }
            written
        } else {
            let pretty = serde_json::to_string_pretty(v).unwrap_or_default();
            writeln!(std::io::stdout().lock(), "{pretty}")
        };
        match written {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    }
}

/// A rendered response: the text for stdout, and a hint for stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The table or block, each line ending in a newline.
    pub body: String,
    /// The next page's cursor, or a note that values were shortened.
    pub hint: Option<String>,
}

/// Renders `v` as `view` at `now`, fitted to `width` columns.
pub fn render(v: &Value, view: View, now: DateTime<Utc>, width: usize) -> Rendered {
    let mut fit = Fit::new(width);
    let body = match view {
        View::Job => job_block(v, now, &mut fit),
        View::Jobs => jobs_table(v, now).render(&mut fit),
        View::Events => events_table(v).render(&mut fit),
        View::DeadLetters => dead_letters_table(v).render(&mut fit),
        View::DeadLetter => {
            let mut body = job_block(&v["job"], now, &mut fit);
            body.push('\n');
            body.push_str(&events_table(&v["events"]).render(&mut fit));
            body
        }
        View::FailedWebhooks => failed_webhooks_table(v).render(&mut fit),
    };
    let cursor = matches!(view, View::Jobs | View::DeadLetters)
        .then(|| v["next_cursor"].as_str())
        .flatten();
    let hint = match cursor {
        Some(c) => Some(format!("more: --cursor {c}")),
        None if fit.shortened => Some("(values shortened to fit; --json prints them all)".into()),
        None => None,
    };
    Rendered { body, hint }
}

/// Fitting text into a width, remembering whether anything had to be cut.
struct Fit {
    width: usize,
    shortened: bool,
}

impl Fit {
    fn new(width: usize) -> Self {
        Self {
            width,
            shortened: false,
        }
    }

    /// `s` cut to `width` display columns, ending in `…` if cut.
    fn cut(&mut self, s: &str, width: usize) -> String {
        if console::measure_text_width(s) <= width {
            return s.to_owned();
        }
        self.shortened = true;
        console::truncate_str(s, width, "…").into_owned()
    }
}

/// Columns with a header; one of them (the long free text) shrinks to fit the width.
struct Table {
    headers: &'static [&'static str],
    rows: Vec<Vec<String>>,
    flex: Option<usize>,
    empty: &'static str,
}

impl Table {
    fn render(&self, fit: &mut Fit) -> String {
        let mut widths: Vec<usize> = self
            .headers
            .iter()
            .map(|h| console::measure_text_width(h))
            .collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(console::measure_text_width(cell));
            }
        }
        if let Some(f) = self.flex {
            let others: usize = widths
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != f)
                .map(|(_, w)| w + GAP.len())
                .sum();
            widths[f] = widths[f].min(fit.width.saturating_sub(others).max(MIN_FLEX));
        }
        let mut out = String::new();
        let headers: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| {
                    let cell = fit.cut(cell, *w);
                    let pad = w.saturating_sub(console::measure_text_width(&cell));
                    format!("{cell}{}", " ".repeat(pad))
                })
                .collect();
            out.push_str(cells.join(GAP).trim_end());
            out.push('\n');
        }
        if self.rows.is_empty() {
            out.push_str(self.empty);
            out.push('\n');
        }
        out
    }
}

fn jobs_table(page: &Value, now: DateTime<Utc>) -> Table {
    Table {
        headers: &[
            "ID", "KIND", "STATUS", "ATTEMPT", "PROGRESS", "AGE", "RUN TIME",
        ],
        rows: items(page)
            .map(|j| {
                vec![
                    text(&j["id"]),
                    text(&j["kind"]),
                    text(&j["status"]),
                    attempts(j),
                    progress(&j["progress"]),
                    time(&j["created_at"]).map_or_else(dash, |t| coarse(now - t)),
                    run_time(j, now),
                ]
            })
            .collect(),
        // The kind is the only free text; ids, statuses and numbers are never cut.
        flex: Some(1),
        empty: "(no jobs)",
    }
}

fn dead_letters_table(page: &Value) -> Table {
    Table {
        headers: &["ID", "KIND", "ATTEMPTS", "ERROR", "DEAD-LETTERED (UTC)"],
        rows: items(page)
            .map(|j| {
                vec![
                    text(&j["id"]),
                    text(&j["kind"]),
                    attempts(j),
                    error(&j["error"]),
                    time(&j["finished_at"]).map_or_else(dash, stamp),
                ]
            })
            .collect(),
        flex: Some(3),
        empty: "(no dead-lettered jobs)",
    }
}

fn failed_webhooks_table(page: &Value) -> Table {
    Table {
        headers: &[
            "JOB",
            "KIND",
            "ATTEMPTS",
            "FAILED (UTC)",
            "URL",
            "LAST ERROR",
        ],
        rows: items(page)
            .map(|f| {
                vec![
                    text(&f["job"]),
                    text(&f["kind"]),
                    text(&f["attempts"]),
                    time(&f["failed_at"]).map_or_else(|| text(&f["failed_at"]), stamp),
                    text(&f["url"]),
                    text(&f["last_error"]),
                ]
            })
            .collect(),
        flex: Some(5),
        empty: "(no failed deliveries)",
    }
}

fn events_table(events: &Value) -> Table {
    Table {
        headers: &["TIME (UTC)", "TYPE", "SUMMARY"],
        rows: events
            .as_array()
            .into_iter()
            .flatten()
            .map(|ev| {
                let ty = ev["type"].as_str().unwrap_or_default();
                vec![
                    time(&ev["time"])
                        .map_or_else(dash, |t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()),
                    ty.trim_start_matches("dev.conveyor.").to_owned(),
                    event_summary(ty.rsplit('.').next().unwrap_or(ty), &ev["data"]),
                ]
            })
            .collect(),
        flex: Some(2),
        empty: "(no events)",
    }
}

/// One line on what an event says: the attempt, the error, the progress, the outcome.
fn event_summary(name: &str, d: &Value) -> String {
    let attempt = |a: &Value| match a.as_u64() {
        Some(n) => format!("attempt {n}"),
        None => String::new(),
    };
    let ms = |v: &Value| precise(TimeDelta::milliseconds(v.as_i64().unwrap_or(0)));
    match name {
        "submitted" => {
            let mut s = format!(
                "max {} attempts, timeout {}",
                text(&d["max_attempts"]),
                ms(&d["timeout_ms"])
            );
            if let Some(at) = time(&d["run_at"]) {
                s.push_str(&format!(", runs at {}", stamp(at)));
            }
            format!("{s}, payload {}", compact(&d["payload"]))
        }
        "started" => format!("{} on {}", attempt(&d["attempt"]), text(&d["worker"])),
        "progressed" => {
            let mut s = format!("{}: {}", attempt(&d["attempt"]), progress(d));
            if let Some(m) = d["message"].as_str() {
                s.push_str(&format!(" {m}"));
            }
            s
        }
        "succeeded" => {
            let outcome = match (&d["result"], &d["result_ref"]) {
                (_, Value::Object(r)) => format!(
                    "result stored apart ({} bytes)",
                    r.get("size").map(text).unwrap_or_default()
                ),
                (Value::Null, _) => "no result".to_owned(),
                (r, _) => format!("result {}", summary(r)),
            };
            format!(
                "{} in {}: {outcome}",
                attempt(&d["attempt"]),
                ms(&d["duration_ms"])
            )
        }
        "failed" => format!(
            "{} in {}: {}{}",
            attempt(&d["attempt"]),
            ms(&d["duration_ms"]),
            error(&d["error"]),
            if d["will_retry"].as_bool() == Some(true) {
                " (will retry)"
            } else {
                ""
            }
        ),
        "retry_scheduled" => format!(
            "attempt {} after {}",
            text(&d["next_attempt"]),
            ms(&d["delay_ms"])
        ),
        "dead_lettered" => format!(
            "{}: {}: {}",
            attempt(&d["attempt"]),
            text(&d["reason"]),
            error(&d["error"])
        ),
        "cancel_requested" => d["reason"].as_str().unwrap_or_default().to_owned(),
        "cancelled" => match d["reason"].as_str() {
            Some(reason) => reason.to_owned(),
            None => attempt(&d["attempt"]),
        },
        "sealed" => "batch sealed: no more members".to_owned(),
        "suspended" => format!(
            "{}: waits for its children, then attempt {}",
            attempt(&d["attempt"]),
            text(&d["next_attempt"])
        ),
        "waiting" => format!("{}: {}", attempt(&d["attempt"]), waiting(d)),
        "redriven" => format!(
            "generation {}, next attempt {} of {}",
            text(&d["generation"]),
            text(&d["next_attempt"]),
            text(&d["max_attempts"])
        ),
        _ => summary(d),
    }
}

/// Why a job waits, as its `waiting` (or a `job.waiting` event's data) says.
fn waiting(w: &Value) -> String {
    let key = w["key"].as_str().unwrap_or_default();
    match w["reason"].as_str().unwrap_or_default() {
        "concurrency_key" => format!("concurrency key {key} is full"),
        "rate_limit" => format!("rate limit of {key} reached"),
        "paused" => "kind paused".to_owned(),
        "tenant_cap" => "tenant at its cap of running jobs".to_owned(),
        "priority" => "higher-priority jobs go first".to_owned(),
        "tenant_share" => "other tenants' turns (fair share)".to_owned(),
        "dependencies" => "jobs it depends on have not all ended".to_owned(),
        "batch" => "its batch's members have not all ended".to_owned(),
        "children" => "its children have not all ended".to_owned(),
        other => other.to_owned(),
    }
}

/// One job as aligned `key  value` lines; values cut to the width, a nested result summarised.
fn job_block(j: &Value, now: DateTime<Utc>, fit: &mut Fit) -> String {
    let when = |key: &str| {
        time(&j[key]).map(|t| {
            let d = now - t;
            if d >= TimeDelta::zero() {
                format!("{} ({} ago)", stamp(t), coarse(d))
            } else {
                format!("{} (in {})", stamp(t), coarse(-d))
            }
        })
    };
    let mut lines: Vec<(&str, Option<String>)> = vec![
        ("id", Some(text(&j["id"]))),
        ("kind", Some(text(&j["kind"]))),
        ("status", Some(text(&j["status"]))),
        (
            "waiting",
            (!j["waiting"].is_null()).then(|| waiting(&j["waiting"])),
        ),
        (
            "priority",
            j["priority"]
                .as_i64()
                .filter(|p| *p != 0)
                .map(|p| p.to_string()),
        ),
        ("batch", j["batch"].as_str().map(str::to_owned)),
        ("parent", j["parent"].as_str().map(str::to_owned)),
        (
            "depends on",
            j["depends_on"].as_array().map(|ids| {
                ids.iter()
                    .map(|id| id.as_str().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
        ),
        (
            "batch of",
            (j["is_batch"] == true).then(|| {
                if j["sealed_at"].is_null() {
                    "its members (open)".to_owned()
                } else {
                    "its members (sealed)".to_owned()
                }
            }),
        ),
        ("attempt", Some(attempts(j))),
        (
            "progress",
            (!j["progress"].is_null()).then(|| progress(&j["progress"])),
        ),
        (
            "run time",
            (!j["started_at"].is_null()).then(|| run_time(j, now)),
        ),
        ("created", when("created_at")),
        ("run at", when("run_at")),
        ("started", when("started_at")),
        ("finished", when("finished_at")),
        (
            "timeout",
            j["timeout_ms"]
                .as_i64()
                .map(|t| precise(TimeDelta::milliseconds(t))),
        ),
        ("error", (!j["error"].is_null()).then(|| error(&j["error"]))),
    ];
    let key_width = "result url".len();
    let value_width = fit
        .width
        .saturating_sub(key_width + GAP.len())
        .max(MIN_FLEX);
    lines.extend([
        ("payload", Some(fitted(&j["payload"], value_width))),
        (
            "result",
            (!j["result"].is_null()).then(|| fitted(&j["result"], value_width)),
        ),
        ("result url", j["result_url"].as_str().map(str::to_owned)),
        ("trace id", j["trace_id"].as_str().map(str::to_owned)),
    ]);
    let lines: Vec<(&str, String)> = lines
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    let mut out = String::new();
    for (k, v) in lines {
        let v = fit.cut(&clean(&v), value_width);
        out.push_str(&format!("{k:<key_width$}{GAP}{v}\n"));
    }
    out
}

/// The `items` of a page.
fn items(page: &Value) -> impl Iterator<Item = &Value> {
    page["items"].as_array().into_iter().flatten()
}

/// A scalar as plain text (strings without quotes), control characters made visible.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => clean(s),
        Value::Null => dash(),
        other => clean(&other.to_string()),
    }
}

/// Values come from job submitters: a control character (a newline, an escape sequence) is
/// shown escaped, never sent to the terminal, so it can neither break a row nor drive the
/// terminal.
fn clean(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| match c {
            '\n' | '\r' | '\t' => " ".to_owned(),
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect()
}

fn dash() -> String {
    "-".to_owned()
}

/// JSON on one line.
fn compact(v: &Value) -> String {
    clean(&v.to_string())
}

/// A value on one line, nesting summarised: `since: …, rows: [12 items]`.
fn summary(v: &Value) -> String {
    match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{}: {}", clean(k), brief(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => brief(other),
    }
}

/// A value as a one-line JSON if it fits in `width` columns, else its [`summary`].
fn fitted(v: &Value, width: usize) -> String {
    let line = compact(v);
    if console::measure_text_width(&line) <= width {
        line
    } else {
        summary(v)
    }
}

/// A scalar as itself, a short list of scalars as JSON, anything nested as its size.
fn brief(v: &Value) -> String {
    match v {
        Value::Array(a) if a.len() <= 5 && a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            compact(v)
        }
        Value::Array(a) => format!("[{}]", count(a.len(), "item")),
        Value::Object(m) => format!("{{{}}}", count(m.len(), "field")),
        other => text(other),
    }
}

/// `1 item`, `12 items`.
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// `attempt/max_attempts`, or the attempt alone.
fn attempts(j: &Value) -> String {
    match (j["attempt"].as_i64(), j["max_attempts"].as_i64()) {
        (Some(a), Some(m)) => format!("{a}/{m}"),
        (Some(a), None) => a.to_string(),
        _ => dash(),
    }
}

/// `current/total` (or `current`) of a progress object.
fn progress(p: &Value) -> String {
    match (p["current"].as_u64(), p["total"].as_u64()) {
        (Some(c), Some(t)) => format!("{c}/{t}"),
        (Some(c), None) => c.to_string(),
        _ => dash(),
    }
}

/// `class: message` of an error object.
fn error(e: &Value) -> String {
    match (e["class"].as_str(), e["message"].as_str()) {
        (Some(c), Some(m)) => clean(&format!("{c}: {m}")),
        (None, Some(m)) => clean(m),
        _ if e.is_null() => dash(),
        _ => compact(e),
    }
}

/// From start to finish, or so far if still running; `-` if it never started.
fn run_time(j: &Value, now: DateTime<Utc>) -> String {
    match (time(&j["started_at"]), time(&j["finished_at"])) {
        (Some(s), Some(f)) => precise(f - s),
        (Some(s), None) if j["status"] == "running" => precise(now - s),
        _ => dash(),
    }
}

fn time(v: &Value) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn stamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// An age in one unit: `42s`, `3m`, `5h`, `2d`.
fn coarse(d: TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3_599 => format!("{}m", s / 60),
        3_600..=86_399 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A run time: `850ms`, `4.2s`, `42s`, `3m05s`, `5m`, `2h07m`.
fn precise(d: TimeDelta) -> String {
    let ms = d.num_milliseconds().max(0);
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=9_999 => format!("{:.1}s", ms as f64 / 1_000.0),
        10_000..=59_999 => format!("{}s", ms / 1_000),
        60_000..=3_599_999 => match ms / 1_000 % 60 {
            0 => format!("{}m", ms / 60_000),
            s => format!("{}m{s:02}s", ms / 60_000),
        },
        _ => match ms / 60_000 % 60 {
            0 => format!("{}h", ms / 3_600_000),
            m => format!("{}h{m:02}m", ms / 3_600_000),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        "2025-03-01T12:00:00Z".parse().unwrap()
    }

    fn job(id: &str, status: &str) -> Value {
        json!({
            "id": id, "kind": "sleep", "status": status, "attempt": 1, "max_attempts": 3,
            "timeout_ms": 30000, "payload": {"ms": 2000, "steps": 4},
            "progress": {"current": 2, "total": 4, "message": "step 2"},
            "result": null, "error": null, "run_at": null, "trace_id": null,
            "created_at": "2025-03-01T11:57:00Z", "started_at": "2025-03-01T11:59:58.500Z",
            "finished_at": null, "updated_at": "2025-03-01T11:59:59Z"
        })
    }

    fn lines(s: &str) -> Vec<&str> {
        s.lines().collect()
    }

    #[test]
    fn a_page_of_jobs_is_a_header_and_a_row_per_job_with_the_cursor_as_a_hint() {
        let a = "0195a3c4-0000-7000-8000-000000000001";
        let b = "0195a3c4-0000-7000-8000-000000000002";
        let page = json!({ "items": [job(a, "running"), job(b, "queued")], "next_cursor": "abc" });
        let out = render(&page, View::Jobs, now(), 120);
        let l = lines(&out.body);
        assert_eq!(l.len(), 3, "{}", out.body);
        assert_eq!(
            l[0].split_whitespace().collect::<Vec<_>>(),
            ["ID", "KIND", "STATUS", "ATTEMPT", "PROGRESS", "AGE", "RUN", "TIME"]
        );
        assert_eq!(
            l[1].split_whitespace().collect::<Vec<_>>(),
            [a, "sleep", "running", "1/3", "2/4", "3m", "1.5s"]
        );
        assert_eq!(l[2].split_whitespace().nth(5), Some("3m"));
        assert_eq!(l[2].split_whitespace().nth(6), Some("-"));
        assert_eq!(out.hint.as_deref(), Some("more: --cursor abc"));
        // Columns line up: every row's status starts where the header's does.
        let col = l[0].find("STATUS").unwrap();
        assert!(l[1..].iter().all(|r| r[col..].starts_with(['r', 'q'])));
    }

    #[test]
    fn an_empty_page_says_so() {
        let out = render(
            &json!({"items": [], "next_cursor": null}),
            View::Jobs,
            now(),
            80,
        );
        assert_eq!(lines(&out.body)[1], "(no jobs)");
        assert_eq!(out.hint, None);
    }

    #[test]
    fn a_large_nested_result_is_summarised_and_cut_to_the_width() {
        let rows: Vec<Value> = (0..200)
            .map(|i| json!({"kind": format!("k{i}"), "status": "succeeded", "count": i}))
            .collect();
        let mut j = job("0195a3c4-0000-7000-8000-000000000001", "succeeded");
        j["kind"] = json!("report.job_stats");
        j["finished_at"] = json!("2025-03-01T11:59:59.250Z");
        j["result"] =
            json!({"since": "2025-03-01T11:00:00Z", "until": "2025-03-01T12:00:00Z", "rows": rows});
        let out = render(&j, View::Job, now(), 60);
        let l = lines(&out.body);
        assert!(l.len() < 20, "{}", out.body);
        assert!(
            l.iter().all(|l| console::measure_text_width(l) <= 60),
            "{}",
            out.body
        );
        let result = l.iter().find(|l| l.starts_with("result ")).unwrap();
        assert!(
            result.contains("rows: [200 items], since: 2025"),
            "{result}"
        );
        assert!(result.ends_with('…'), "{result}");
        assert!(out.body.contains("run time    750ms\n"), "{}", out.body);
        assert!(out
            .body
            .contains("created     2025-03-01 11:57:00 (3m ago)\n"));
        assert!(out.hint.unwrap().contains("--json"));
        // Wide enough, the summary shows whole.
        let out = render(&j, View::Job, now(), 200);
        assert!(out.body.contains(
            "result      rows: [200 items], since: 2025-03-01T11:00:00Z, until: 2025-03-01T12:00:00Z\n"
        ), "{}", out.body);
    }

    #[test]
    fn a_small_value_is_shown_as_json() {
        let out = render(&job("x", "running"), View::Job, now(), 100);
        assert!(
            out.body.contains("payload     {\"ms\":2000,\"steps\":4}\n"),
            "{}",
            out.body
        );
        assert_eq!(out.hint, None);
    }

    #[test]
    fn a_timeline_has_one_summary_line_per_event() {
        let ev = |ty: &str, data: Value| json!({"type": format!("dev.conveyor.job.{ty}"), "time": "2025-03-01T11:59:58.123456Z", "data": data});
        let events = json!([
            ev(
                "submitted",
                json!({"payload": {"fail_times": 1}, "max_attempts": 3, "timeout_ms": 30000})
            ),
            ev("started", json!({"attempt": 1, "worker": "w-1"})),
            ev(
                "progressed",
                json!({"attempt": 1, "current": 2, "total": 4, "message": "halfway"})
            ),
            ev(
                "failed",
                json!({"attempt": 1, "error": {"class": "retryable", "message": "boom\nagain"}, "will_retry": true, "duration_ms": 12})
            ),
            ev(
                "retry_scheduled",
                json!({"next_attempt": 2, "delay_ms": 50, "run_at": "2025-03-01T11:59:59Z"})
            ),
            ev(
                "waiting",
                json!({"attempt": 2, "reason": "concurrency_key", "key": "acct-42"})
            ),
            ev(
                "succeeded",
                json!({"attempt": 2, "result": {"ok": true}, "duration_ms": 1500})
            ),
        ]);
        let out = render(&events, View::Events, now(), 120);
        let l = lines(&out.body);
        assert_eq!(l.len(), 8, "{}", out.body);
        assert!(
            l[1].starts_with("2025-03-01 11:59:58.123  job.submitted"),
            "{}",
            l[1]
        );
        assert!(l[1].ends_with("max 3 attempts, timeout 30s, payload {\"fail_times\":1}"));
        assert!(
            l[2].ends_with("job.started          attempt 1 on w-1"),
            "{}",
            l[2]
        );
        assert!(l[3].ends_with("attempt 1: 2/4 halfway"));
        assert!(l[4].ends_with("attempt 1 in 12ms: retryable: boom again (will retry)"));
        assert!(l[5].ends_with("attempt 2 after 50ms"));
        assert!(l[6].ends_with("attempt 2: concurrency key acct-42 is full"));
        assert!(l[7].ends_with("attempt 2 in 1.5s: result ok: true"));
    }

    #[test]
    fn dead_letters_show_the_error_cut_to_fit() {
        let mut j = job("0195a3c4-0000-7000-8000-000000000009", "failed");
        j["error"] = json!({"class": "fatal", "message": "x".repeat(300)});
        j["finished_at"] = json!("2025-03-01T11:59:59Z");
        let out = render(
            &json!({"items": [j], "next_cursor": null}),
            View::DeadLetters,
            now(),
            100,
        );
        let l = lines(&out.body);
        assert!(
            l.iter().all(|l| console::measure_text_width(l) <= 100),
            "{}",
            out.body
        );
        assert!(l[1].contains("fatal: xxx"), "{}", l[1]);
        assert!(l[1].contains("…  2025-03-01 11:59:59"), "{}", l[1]);
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let mut j = job("x", "running");
        j["kind"] = json!("evil\u{1b}[2Jkind");
        let out = render(&json!({"items": [j]}), View::Jobs, now(), 120);
        assert!(!out.body.contains('\u{1b}'));
        assert!(out.body.contains("evil\\u{1b}[2Jkind"), "{}", out.body);
    }

    #[test]
    fn durations_read_at_a_glance() {
        let ms = TimeDelta::milliseconds;
        let got: Vec<String> = [850, 4_200, 42_000, 185_000, 300_000, 7_620_000, 7_200_000]
            .map(|d| precise(ms(d)))
            .into();
        assert_eq!(got, ["850ms", "4.2s", "42s", "3m05s", "5m", "2h07m", "2h"]);
        let got: Vec<String> = [42_000, 185_000, 7_620_000, 200_000_000]
            .map(|d| coarse(ms(d)))
            .into();
        assert_eq!(got, ["42s", "3m", "2h", "2d"]);
    }
}
