//! gather_rows and scatter_rows_ring against the reference. Both move 32-bit words
//! unchanged, so the comparison is exact (tolerance zero) for f32 and u32 data.

use crate::common::*;
use rand::Rng;
use sop::gpu::{DType, Gpu};
use sop::ops::gather::{gather_rows, gather_rows_host, scatter_rows_ring};
use sop_reference::gather as reference;

fn poison_pool(gpu: &Gpu, shape: &[usize]) {
    let t = gpu.empty(shape, DType::F32).unwrap();
    gpu.fill_f32(&t, f32::NAN).unwrap();
}

#[test]
fn gather_rows_awkward_shapes() {
    let gpu = gpu();
    let mut rng = rng();
    for &(n, c, r) in &[(1, 1, 1), (5, 3, 7), (257, 65, 63), (65, 20, 257), (3, 256, 65)] {
        let src = randn(&mut rng, n * c);
        let idx: Vec<u32> = (0..r).map(|_| rng.random_range(0..n as u32)).collect();
        let gsrc = gpu.upload_f32(&[n, c], &src).unwrap();
        let gidx = gpu.upload_u32(&[r], &idx).unwrap();
        poison_pool(&gpu, &[r, c]);
        let out = gather_rows(&gpu, &gsrc, &gidx).unwrap();
        assert_eq!((out.shape.clone(), out.dtype), (vec![r, c], DType::F32));
        assert_eq!(gpu.read_f32(&out).unwrap(), reference::gather_rows(&src, n, c, &idx), "gather N {n} C {c} R {r}");

        poison_pool(&gpu, &[r, c]);
        let out = gather_rows_host(&gpu, &gsrc, &idx).unwrap();
        assert_eq!(
            gpu.read_f32(&out).unwrap(),
            reference::gather_rows(&src, n, c, &idx),
            "gather_rows_host N {n} C {c} R {r}"
        );
    }
}

#[test]
fn gather_rows_u32_and_clamped_indices() {
    let gpu = gpu();
    let mut rng = rng();
    let (n, c) = (9, 5);
    let src: Vec<u32> = (0..n * c).map(|_| rng.random()).collect();
    // Out-of-range indices on the GPU read row N − 1 instead of out of bounds.
    let idx = [0, 8, 9, 100, u32::MAX, 3];
    let gsrc = gpu.upload_u32(&[n, c], &src).unwrap();
    let out = gather_rows(&gpu, &gsrc, &gpu.upload_u32(&[idx.len()], &idx).unwrap()).unwrap();
    assert_eq!(out.dtype, DType::U32);
    assert_eq!(gpu.read_u32(&out).unwrap(), reference::gather_rows(&src, n, c, &idx));
    // On the host they are an error.
    let err = gather_rows_host(&gpu, &gsrc, &idx).unwrap_err().to_string();
    assert!(err.contains("idx[2] = 9 is out of range"), "{err}");
}

#[test]
fn scatter_rows_ring_wraps() {
    let gpu = gpu();
    let mut rng = rng();
    // (N, C, R, start): no wrap, wrap, the whole ring, start beyond N (taken mod N).
    for &(n, c, r, start) in &[
        (1, 1, 1, 0),
        (7, 3, 5, 4),
        (7, 3, 7, 0),
        (7, 3, 7, 5),
        (63, 5, 63, 10),
        (257, 65, 65, 250),
        (10, 4, 3, 23),
        (65, 256, 1, 64),
    ] {
        let mut dst = randn(&mut rng, n * c);
        let src = randn(&mut rng, r * c);
        let gdst = gpu.upload_f32(&[n, c], &dst).unwrap();
        let gsrc = gpu.upload_f32(&[r, c], &src).unwrap();
        scatter_rows_ring(&gpu, &gdst, &gsrc, start).unwrap();
        reference::scatter_rows_ring(&mut dst, n, c, &src, start);
        assert_eq!(gpu.read_f32(&gdst).unwrap(), dst, "scatter N {n} C {c} R {r} start {start}");
    }
}

#[test]
fn scatter_rows_ring_rejects_bad_arguments() {
    let gpu = gpu();
    let dst = gpu.zeros(&[4, 3], DType::F32).unwrap();
    let too_many = gpu.zeros(&[5, 3], DType::F32).unwrap();
    let wrong_width = gpu.zeros(&[2, 4], DType::F32).unwrap();
    let wrong_dtype = gpu.zeros(&[2, 3], DType::U32).unwrap();
    assert!(scatter_rows_ring(&gpu, &dst, &too_many, 0).unwrap_err().to_string().contains("R > N"));
    assert!(scatter_rows_ring(&gpu, &dst, &wrong_width, 0).is_err());
    assert!(scatter_rows_ring(&gpu, &dst, &wrong_dtype, 0).is_err());
    assert!(scatter_rows_ring(&gpu, &dst, &dst, 0).is_err());
    let idx_f32 = gpu.zeros(&[2], DType::F32).unwrap();
    assert!(gather_rows(&gpu, &dst, &idx_f32).is_err());
}
