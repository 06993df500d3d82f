//! Reference GELU, exact erf form: y = x·Φ(x), Φ(x) = 0.5·(1 + erf(x/√2)), and an f64 erf
//! (the standard library has none).

/// erf(x) to about 1e-16 absolute, from the series with positive terms
///   erf(x) = 2/√π · e^(−x²) · Σ_{n≥0} 2ⁿ x^(2n+1) / (1·3·5···(2n+1)),
/// which converges for every x without cancellation (about x² + 40 terms). |x| ≥ 6 returns
/// ±1 (erfc(6) = 2e-17).
pub fn erf(x: f64) -> f64 {
    if x.abs() >= 6.0 {
        return x.signum();
    }
    let x2 = x * x;
    let mut term = x;
    let mut sum = x;
    let mut n = 0.0;
    while term.abs() > 1e-17 * sum.abs() {
        n += 1.0;
        term *= 2.0 * x2 / (2.0 * n + 1.0);
        sum += term;
    }
    2.0 / std::f64::consts::PI.sqrt() * (-x2).exp() * sum
}

/// Φ(x), the standard normal CDF.
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

pub fn gelu_forward(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| v * normal_cdf(v)).collect()
}

/// dx = dy·(Φ(x) + x·φ(x)), φ(x) = e^(−x²/2)/√(2π).
pub fn gelu_backward(x: &[f64], dy: &[f64]) -> Vec<f64> {
    let c = 1.0 / (2.0 * std::f64::consts::PI).sqrt();
    x.iter().zip(dy).map(|(&v, &g)| g * (normal_cdf(v) + v * c * (-0.5 * v * v).exp())).collect()
}
