//! Reference gradient-clipping factors and the non-finite check of a training step, in f64.

/// How the factors are made: none, per tensor, or one global norm (threshold c).
#[derive(Clone, Copy, Debug)]
pub enum Rule {
    None,
    PerTensor(f64),
    Global(f64),
}

/// Per tensor t with Σ g² = sq[t]: min(1, c / (‖g_t‖ + 1e-6)) per tensor, or with the global
/// norm sqrt(Σ_t sq[t]); 1 without clipping.
pub fn clip_scales(sq: &[f64], rule: Rule) -> Vec<f64> {
    let global = sq.iter().sum::<f64>().sqrt();
    sq.iter()
        .map(|&s| match rule {
            Rule::None => 1.0,
            Rule::PerTensor(c) => (c / (s.sqrt() + 1e-6)).min(1.0),
            Rule::Global(c) => (c / (global + 1e-6)).min(1.0),
        })
        .collect()
}

/// Whether any value is NaN or ±Inf.
pub fn any_non_finite(values: &[f64]) -> bool {
    values.iter().any(|v| !v.is_finite())
}
