//! Repeated measurements, their median and spread, and the table they are printed in.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The samples of one figure, in the order measured.
#[derive(Debug, Default, Clone)]
pub(crate) struct Samples(pub(crate) Vec<f64>);

impl Samples {
    pub(crate) fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    pub(crate) fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    fn spread(&self) -> Option<(f64, f64)> {
        (self.0.len() > 1).then(|| {
            let min = self.0.iter().copied().fold(f64::INFINITY, f64::min);
            let max = self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (min, max)
        })
    }

    /// `median` with the range of the runs, in `unit`, with `decimals`.
    pub(crate) fn show(&self, decimals: usize, unit: &str) -> String {
        if self.0.is_empty() {
            return "–".into();
        }
        let f = |v: f64| format!("{v:.decimals$}");
        match self.spread() {
            Some((lo, hi)) => format!("{}{unit} ({}–{})", f(self.median()), f(lo), f(hi)),
            None => format!("{}{unit}", f(self.median())),
        }
    }
}

/// Every figure of a run, by name.
#[derive(Debug, Default)]
pub(crate) struct Results(pub(crate) BTreeMap<String, Samples>);

impl Results {
    pub(crate) fn add(&mut self, key: &str, v: f64) {
        self.0.entry(key.to_owned()).or_default().push(v);
    }

    pub(crate) fn get(&self, key: &str) -> Samples {
        self.0.get(key).cloned().unwrap_or_default()
    }

    pub(crate) fn median(&self, key: &str) -> f64 {
        self.get(key).median()
    }
}

/// A markdown table, built row by row.
#[derive(Debug, Default)]
pub(crate) struct Table {
    rows: Vec<[String; 5]>,
}

impl Table {
    pub(crate) fn row(
        &mut self,
        figure: &str,
        value: String,
        limit: String,
        ratio: String,
        target: &str,
    ) {
        self.rows
            .push([figure.into(), value, limit, ratio, target.into()]);
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::from(
            "| figure | conveyor | limit or peer | ratio | target |\n|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                r[0], r[1], r[2], r[3], r[4]
            );
        }
        out
    }
}

/// `a / b` as a percentage.
pub(crate) fn pct(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.0}%", 100.0 * a / b)
    } else {
        "–".into()
    }
}
