//! patchify and [CLS] join/split against the reference. These are pure copies, so the
//! GPU must match exactly (tolerance 0); the backward is checked as the adjoint of the
//! forward (<dy, F x> = <F* dy, x>, which is what finite differences of a linear map give).

use crate::common::*;
use sop::ops::tokens::*;
use sop_reference::tokens as r;

#[test]
fn patchify_forward_backward() {
    let gpu = gpu();
    let mut rng = rng();
    for &(b, c, s, p) in &[(1, 1, 4, 4), (2, 3, 10, 3), (3, 3, 17, 4), (1, 3, 32, 16)] {
        let img = randn(&mut rng, b * c * s * s);
        let g = s / p;
        let gimg = gpu.upload_f32(&[b, c, s, s], &img).unwrap();
        let poison = gpu.upload_f32(&[b * g * g, c * p * p], &vec![f32::NAN; b * g * g * c * p * p]).unwrap();
        drop(poison); // the next same-size allocation reuses this NaN-filled buffer
        let out = patchify_forward(&gpu, &gimg, p).unwrap();
        let want = r::patchify_forward(&f64s(&img), b, c, s, p);
        assert_close("patchify_forward", &gpu.read_f32(&out).unwrap(), &want, 0.0, 0.0);

        let dp = randn(&mut rng, want.len());
        let gdp = gpu.upload_f32(&out.shape, &dp).unwrap();
        let dimg = patchify_backward(&gpu, &gdp, &[b, c, s, s], p).unwrap();
        let want_d = r::patchify_backward(&f64s(&dp), b, c, s, p);
        assert_close("patchify_backward", &gpu.read_f32(&dimg).unwrap(), &want_d, 0.0, 0.0);
        // Adjoint identity of the reference pair.
        let lhs = sop_reference::dot(&f64s(&dp), &want);
        let rhs = sop_reference::dot(&want_d, &f64s(&img));
        assert!((lhs - rhs).abs() < 1e-9 * (1.0 + lhs.abs()), "{lhs} vs {rhs}");
    }
}

#[test]
fn tokens_join_split_roundtrip() {
    let gpu = gpu();
    let mut rng = rng();
    for &(b, n, d) in &[(1, 1, 1), (3, 4, 7), (2, 196, 65), (5, 3, 257)] {
        let x = randn(&mut rng, b * n * d);
        for shared in [true, false] {
            let cls = randn(&mut rng, if shared { d } else { b * d });
            let gx = gpu.upload_f32(&[b, n, d], &x).unwrap();
            let gcls = gpu.upload_f32(&[cls.len()], &cls).unwrap();
            let joined = tokens_join(&gpu, &gcls, &gx).unwrap();
            let want = r::tokens_join(&f64s(&cls), &f64s(&x), b, n, d);
            assert_close("tokens_join", &gpu.read_f32(&joined).unwrap(), &want, 0.0, 0.0);
            let (c2, x2) = tokens_split(&gpu, &joined).unwrap();
            assert_eq!(x2.shape, vec![b, n, d]);
            assert_close("split rest", &gpu.read_f32(&x2).unwrap(), &f64s(&x), 0.0, 0.0);
            let want_cls: Vec<f64> =
                (0..b).flat_map(|bi| want[bi * (n + 1) * d..bi * (n + 1) * d + d].to_vec()).collect();
            assert_close("split cls", &gpu.read_f32(&c2).unwrap(), &want_cls, 0.0, 0.0);
        }
    }
}
