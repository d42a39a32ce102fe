//! The results: one row per measured quantity, with our samples, Serf's, the target and a verdict;
//! printed as a table and written as JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::bench::proc::Machine;
use crate::bench::stats::{summarize, Summary};
use crate::bench::Kind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unit {
    Ms,
    MiB,
    /// Percent of one CPU core.
    PctCore,
    /// CPU cores kept busy (CPU seconds per second).
    Cores,
    KbitPerSec,
    Count,
    /// A relative change, in percent.
    Pct,
}

impl Unit {
    fn label(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::MiB => "MiB",
            Unit::PctCore => "% core",
            Unit::Cores => "cores",
            Unit::KbitPerSec => "kbit/s",
            Unit::Count => "",
            Unit::Pct => "%",
        }
    }

    fn format(self, v: f64) -> String {
        match self {
            Unit::Ms | Unit::Count => format!("{v:.0}"),
            Unit::MiB => format!("{v:.1}"),
            Unit::PctCore | Unit::Cores => format!("{v:.2}"),
            Unit::KbitPerSec | Unit::Pct => format!("{v:.1}"),
        }
    }
}

/// Our median must stay under (or, for counts, at most) this.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Target {
    pub max: f64,
    /// `true`: the value must be <= max (zero false removals); `false`: strictly below.
    pub inclusive: bool,
}

impl Target {
    pub fn below(max: f64) -> Option<Target> {
        Some(Target {
            max,
            inclusive: false,
        })
    }

    pub fn at_most(max: f64) -> Option<Target> {
        Some(Target {
            max,
            inclusive: true,
        })
    }
}

/// Samples of one implementation, and the repetitions that failed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Samples {
    pub values: Vec<f64>,
    pub failures: Vec<String>,
}

impl Samples {
    pub fn summary(&self) -> Option<Summary> {
        summarize(&self.values)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub unit: Unit,
    pub target: Option<Target>,
    pub ours: Samples,
    /// `None`: nothing comparable on Serf's side.
    pub serf: Option<Samples>,
    pub notes: Vec<String>,
}

impl Row {
    /// The samples of one implementation (Serf's are created if the row had none).
    pub fn samples_mut(&mut self, kind: Kind) -> &mut Samples {
        match kind {
            Kind::Ours => &mut self.ours,
            Kind::Serf => self.serf.get_or_insert_with(Samples::default),
        }
    }

    pub fn verdict(&self) -> Verdict {
        let (Some(target), Some(ours)) = (self.target, self.ours.summary()) else {
            return Verdict::NoTarget;
        };
        let met = if target.inclusive {
            ours.median <= target.max
        } else {
            ours.median < target.max
        };
        if met {
            Verdict::Met
        } else {
            Verdict::Missed {
                by: ours.median - target.max,
            }
        }
    }

    fn ratio(&self) -> Option<f64> {
        let ours = self.ours.summary()?;
        let serf = self.serf.as_ref()?.summary()?;
        (serf.median > 0.0).then(|| ours.median / serf.median)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Met,
    Missed { by: f64 },
    NoTarget,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub command: String,
    pub repetitions: usize,
    pub binaries: serde_json::Value,
    pub rows: Vec<Row>,
    pub elapsed_s: f64,
}

impl Report {
    /// Adds (or returns) the row for `scenario`/`metric`.
    pub fn row(
        &mut self,
        scenario: &str,
        metric: &str,
        unit: Unit,
        target: Option<Target>,
        compared: bool,
    ) -> &mut Row {
        let i = match self
            .rows
            .iter()
            .position(|r| r.scenario == scenario && r.metric == metric)
        {
            Some(i) => i,
            None => {
                self.rows.push(Row {
                    scenario: scenario.to_string(),
                    metric: metric.to_string(),
                    unit,
                    target,
                    ours: Samples::default(),
                    serf: compared.then(Samples::default),
                    notes: Vec::new(),
                });
                self.rows.len() - 1
            }
        };
        &mut self.rows[i]
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let header = [
            "scenario",
            "metric",
            "ours median [min-max] n",
            "serf median [min-max] n",
            "ours/serf",
            "target",
            "verdict",
        ];
        let mut lines: Vec<[String; 7]> = vec![header.map(str::to_string)];
        for row in &self.rows {
            let unit = row.unit.label();
            let metric = if unit.is_empty() {
                row.metric.clone()
            } else {
                format!("{} ({unit})", row.metric)
            };
            let cell = |s: Option<&Samples>| match s {
                None => "-".to_string(),
                Some(s) => match s.summary() {
                    Some(sum) => format!(
                        "{} [{}-{}] {}{}",
                        row.unit.format(sum.median),
                        row.unit.format(sum.min),
                        row.unit.format(sum.max),
                        sum.n,
                        if s.failures.is_empty() {
                            String::new()
                        } else {
                            format!(" ({} failed)", s.failures.len())
                        }
                    ),
                    None if !s.failures.is_empty() => format!("failed x{}", s.failures.len()),
                    None => "-".to_string(),
                },
            };
            let target = match row.target {
                Some(t) => format!(
                    "{}{} {unit}",
                    if t.inclusive { "<=" } else { "<" },
                    row.unit.format(t.max)
                )
                .trim_end()
                .to_string(),
                None => "-".into(),
            };
            let verdict = match row.verdict() {
                Verdict::Met => "met".to_string(),
                Verdict::Missed { by } => format!(
                    "MISSED by {}{}",
                    row.unit.format(by),
                    if unit.is_empty() {
                        String::new()
                    } else {
                        format!(" {unit}")
                    }
                ),
                Verdict::NoTarget => "-".into(),
            };
            lines.push([
                row.scenario.clone(),
                metric,
                cell(Some(&row.ours)),
                cell(row.serf.as_ref()),
                row.ratio()
                    .map(|r| format!("{r:.2}"))
                    .unwrap_or_else(|| "-".into()),
                target,
                verdict,
            ]);
        }
        let mut widths = [0usize; 7];
        for line in &lines {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for (i, line) in lines.iter().enumerate() {
            let mut text = String::new();
            for (cell, w) in line.iter().zip(widths) {
                let _ = write!(text, "{cell:<w$}  ");
            }
            out.push_str(text.trim_end());
            out.push('\n');
            if i == 0 {
                let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
                out.push_str(&"-".repeat(total));
                out.push('\n');
            }
        }
        let notes: Vec<String> = self
            .rows
            .iter()
            .flat_map(|r| {
                let failures = r.ours.failures.iter().map(|f| format!("ours: {f}")).chain(
                    r.serf
                        .iter()
                        .flat_map(|s| s.failures.iter().map(|f| format!("serf: {f}"))),
                );
                r.notes
                    .iter()
                    .cloned()
                    .chain(failures)
                    .map(move |n| format!("{} / {}: {n}", r.scenario, r.metric))
            })
            .collect();
        if !notes.is_empty() {
            out.push_str("\nnotes:\n");
            for n in notes {
                out.push_str(&format!("- {n}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            machine: Machine::read(),
            command: "bench".into(),
            repetitions: 3,
            binaries: serde_json::Value::Null,
            rows: Vec::new(),
            elapsed_s: 0.0,
        }
    }

    #[test]
    fn verdicts_ratios_and_table() {
        let mut r = report();
        let row = r.row("crash", "to LB", Unit::Ms, Target::below(1500.0), true);
        row.ours.values = vec![900.0, 1000.0, 1100.0];
        row.serf.as_mut().unwrap().values = vec![8000.0];
        assert_eq!(row.verdict(), Verdict::Met);
        assert_eq!(row.ratio(), Some(0.125));
        let row = r.row("leave", "to LB", Unit::Ms, Target::below(300.0), true);
        row.ours.values = vec![400.0];
        row.serf.as_mut().unwrap().failures.push("timed out".into());
        assert_eq!(row.verdict(), Verdict::Missed { by: 100.0 });
        let row = r.row(
            "soak",
            "false removals",
            Unit::Count,
            Target::at_most(0.0),
            true,
        );
        row.ours.values = vec![0.0];
        assert_eq!(row.verdict(), Verdict::Met);
        // The same key adds to the existing row.
        assert_eq!(
            r.row("crash", "to LB", Unit::Ms, None, true)
                .ours
                .values
                .len(),
            3
        );
        assert_eq!(r.rows.len(), 3);
        let table = r.table();
        assert!(table.contains("1000 [900-1100] 3"), "{table}");
        assert!(table.contains("MISSED by 100 ms"), "{table}");
        assert!(table.contains("failed x1"), "{table}");
        assert!(table.contains("serf: timed out"), "{table}");
    }
}
