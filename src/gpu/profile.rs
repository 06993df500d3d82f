//! An opt-in per-kernel profile: with it on, every dispatch is submitted and waited for on
//! its own and its wall time is added to its shader entry point's row. This serialises the
//! device (so totals exceed a normal run's time), but the shares show where a step goes.
//! `sop train --profile-kernels` turns it on and prints the table at the end.

use std::collections::HashMap;
use std::time::Duration;

/// Wall time and dispatch count per `file:entry`.
#[derive(Default)]
pub struct KernelProfile {
    rows: HashMap<String, (u64, Duration)>,
}

impl KernelProfile {
    pub fn add(&mut self, file: &str, entry: &str, took: Duration) {
        let row = self.rows.entry(format!("{file}:{entry}")).or_default();
        row.0 += 1;
        row.1 += took;
    }

    /// Rows sorted by total time, slowest first: `(kernel, dispatches, total)`.
    pub fn rows(&self) -> Vec<(String, u64, Duration)> {
        let mut rows: Vec<_> = self.rows.iter().map(|(k, &(n, t))| (k.clone(), n, t)).collect();
        rows.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        rows
    }

    /// The table `sop train --profile-kernels` prints.
    pub fn table(&self) -> String {
        let rows = self.rows();
        let total: Duration = rows.iter().map(|r| r.2).sum();
        let w = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0).max("all kernels".len());
        let mut s =
            format!("{:<w$} {:>10} {:>10} {:>7} {:>10}\n", "kernel", "dispatches", "total ms", "share", "µs each");
        for (k, n, t) in rows {
            let share = 100.0 * t.as_secs_f64() / total.as_secs_f64().max(1e-12);
            let each = t.as_secs_f64() * 1e6 / n.max(1) as f64;
            s += &format!("{k:<w$} {n:>10} {:>10.1} {share:>6.1}% {each:>10.1}\n", t.as_secs_f64() * 1e3);
        }
        s += &format!("{:<w$} {:>10} {:>10.1}\n", "all kernels", "", total.as_secs_f64() * 1e3);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_add_up_and_sort_slowest_first() {
        let mut p = KernelProfile::default();
        p.add("a.wgsl", "f", Duration::from_millis(2));
        p.add("b.wgsl", "g", Duration::from_millis(5));
        p.add("a.wgsl", "f", Duration::from_millis(4));
        let rows = p.rows();
        assert_eq!(rows[0], ("a.wgsl:f".to_string(), 2, Duration::from_millis(6)));
        assert_eq!(rows[1], ("b.wgsl:g".to_string(), 1, Duration::from_millis(5)));
        assert!(p.table().contains("all kernels"));
    }
}
