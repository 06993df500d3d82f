//! Schedules as functions of the optimiser step (DINO/iBOT's `cosine_scheduler`):
//! a linear warm-up from `start` to `base` over `warmup` steps, then a cosine from `base`
//! to `end` over the remaining steps. A pure function of the step, so resuming needs only
//! the step count.

/// The schedule's value at `step` of `total`.
pub fn cosine(step: usize, total: usize, warmup: usize, start: f64, base: f64, end: f64) -> f64 {
    let warmup = warmup.min(total);
    if step < warmup {
        return start + (base - start) * step as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup);
    if span <= 1 {
        return if step >= total { end } else { base };
    }
    let t = ((step - warmup) as f64 / (span - 1) as f64).min(1.0);
    end + 0.5 * (base - end) * (1.0 + (std::f64::consts::PI * t).cos())
}

/// Linear warm-up then constant (the teacher temperature).
pub fn linear_then_constant(step: usize, warmup: usize, start: f64, value: f64) -> f64 {
    if step >= warmup || warmup == 0 {
        value
    } else {
        start + (value - start) * step as f64 / warmup as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_endpoints_and_monotone_decay() {
        let (total, warm) = (100, 10);
        assert_eq!(cosine(0, total, warm, 0.0, 1.0, 0.1), 0.0);
        assert!((cosine(5, total, warm, 0.0, 1.0, 0.1) - 0.5).abs() < 1e-12);
        assert!((cosine(10, total, warm, 0.0, 1.0, 0.1) - 1.0).abs() < 1e-12);
        assert!((cosine(99, total, warm, 0.0, 1.0, 0.1) - 0.1).abs() < 1e-12);
        let v: Vec<f64> = (10..100).map(|s| cosine(s, total, warm, 0.0, 1.0, 0.1)).collect();
        assert!(v.windows(2).all(|w| w[1] <= w[0] + 1e-15));
        // Teacher momentum rises 0.996 -> 1 the same way.
        assert!((cosine(99, total, 0, 0.0, 0.996, 1.0) - 1.0).abs() < 1e-12);
        assert_eq!(linear_then_constant(3, 0, 0.04, 0.07), 0.07);
        assert!((linear_then_constant(5, 10, 0.04, 0.06) - 0.05).abs() < 1e-12);
    }
}
