//! Multi-crop augmentation: crop boxes within the scale and ratio ranges, colour ops
//! against hand-computed pixels, blur and resampling against their definitions, and
//! reproducibility of the views.

use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sop::data::augment::{random_resized_crop_box, resize_bicubic, Augmenter, Image};
use sop::data::{AugmentConfig, MaskConfig};

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

/// Two pixels: (0.2, 0.4, 0.6) and (0.9, 0.5, 0.1).
fn two_pixels() -> Image {
    Image { width: 2, height: 1, data: vec![0.2, 0.4, 0.6, 0.9, 0.5, 0.1] }
}

fn colourful(w: u32, h: u32, seed: u64) -> RgbImage {
    let mut rng = StdRng::seed_from_u64(seed);
    let (a, b) = (rng.random_range(1..7) as f32, rng.random_range(1..7) as f32);
    RgbImage::from_fn(w, h, |x, y| {
        let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
        Rgb([
            (255.0 * u) as u8,
            (255.0 * (0.5 + 0.5 * (a * v * 6.3).sin())) as u8,
            (255.0 * (0.5 + 0.5 * (b * u * v * 6.3).cos())) as u8,
        ])
    })
}

#[test]
fn crop_boxes_respect_scale_and_ratio() {
    let mut rng = StdRng::seed_from_u64(1);
    for (w, h, scale) in
        [(500usize, 400usize, (0.14, 1.0)), (500, 400, (0.05, 0.4)), (64, 48, (0.25, 1.0)), (33, 97, (0.14, 1.0))]
    {
        let (ratio, area) = ((3.0 / 4.0, 4.0 / 3.0), (w * h) as f64);
        let (mut min_s, mut max_s, mut min_r, mut max_r, mut fallbacks) = (f64::MAX, 0.0f64, f64::MAX, 0.0f64, 0);
        let draws = 20_000;
        for _ in 0..draws {
            let b = random_resized_crop_box(&mut rng, w, h, scale, ratio);
            assert!(b.w >= 1 && b.h >= 1 && b.x + b.w <= w && b.y + b.h <= h, "{b:?} outside {w}x{h}");
            if b.fallback {
                fallbacks += 1;
                continue;
            }
            // w and h are rounded from real sides whose product is in scale * area and
            // whose ratio is in range: allow half a pixel on each side.
            let (bw, bh) = (b.w as f64, b.h as f64);
            assert!(
                (bw - 0.5) * (bh - 0.5) <= scale.1 * area && (bw + 0.5) * (bh + 0.5) >= scale.0 * area,
                "{b:?} scale"
            );
            assert!((bw + 0.5) / (bh - 0.5).max(1e-9) >= ratio.0 && (bw - 0.5) / (bh + 0.5) <= ratio.1, "{b:?} ratio");
            min_s = min_s.min(bw * bh / area);
            max_s = max_s.max(bw * bh / area);
            min_r = min_r.min(bw / bh);
            max_r = max_r.max(bw / bh);
        }
        // The whole ranges are visited (else the draw is not uniform over them), and the
        // fallback is rare for images of ordinary shape.
        let span = scale.1 - scale.0;
        assert!(min_s < scale.0 + 0.05 * span, "{w}x{h} {scale:?}: smallest scale {min_s}");
        if w >= 64 {
            assert!(max_s > scale.1 - 0.05 * span, "{w}x{h} {scale:?}: largest scale {max_s}");
            assert!(min_r < 0.8 && max_r > 1.25, "{w}x{h}: ratios {min_r}..{max_r}");
        }
        assert!(fallbacks < draws / 100 || w < 64, "{w}x{h} {scale:?}: {fallbacks} fallbacks");
    }
}

#[test]
fn crop_fallback_is_torchvisions_central_crop() {
    let mut rng = StdRng::seed_from_u64(2);
    // A 1000 x 10 strip cannot hold 90% of its area at an aspect of at most 4/3: every try
    // fails and the fallback is the centre crop of width round(10 * 4/3) = 13.
    let b = random_resized_crop_box(&mut rng, 1000, 10, (0.9, 1.0), (3.0 / 4.0, 4.0 / 3.0));
    assert!(b.fallback);
    assert_eq!((b.x, b.y, b.w, b.h), (493, 0, 13, 10));
    // Tall: height round(10 / (3/4)) = 13, centred.
    let b = random_resized_crop_box(&mut rng, 10, 1000, (0.9, 1.0), (3.0 / 4.0, 4.0 / 3.0));
    assert_eq!((b.x, b.y, b.w, b.h, b.fallback), (0, 493, 10, 13, true));
}

#[test]
fn colour_ops_match_hand_computed_pixels() {
    let tol = 1e-6; // f32 arithmetic on values of order 1
    let mut x = two_pixels();
    x.adjust_brightness(1.5);
    assert!(close(&x.data, &[0.3, 0.6, 0.9, 1.0, 0.75, 0.15], tol), "brightness {:?}", x.data);

    // Luma 0.2989 R + 0.587 G + 0.114 B: 0.36298 and 0.57391; mean 0.468445.
    let mut x = two_pixels();
    x.grayscale();
    assert!(close(&x.data, &[0.36298, 0.36298, 0.36298, 0.57391, 0.57391, 0.57391], tol), "grayscale {:?}", x.data);

    let mut x = two_pixels();
    x.adjust_contrast(0.5); // 0.5 x + 0.5 * 0.468445
    let m = 0.5 * 0.468445;
    assert!(close(&x.data, &[0.1 + m, 0.2 + m, 0.3 + m, 0.45 + m, 0.25 + m, 0.05 + m], tol), "contrast {:?}", x.data);

    let mut x = two_pixels();
    x.adjust_saturation(2.0); // 2 x - luma, clamped
    assert!(close(&x.data, &[0.03702, 0.43702, 0.83702, 1.0, 0.42609, 0.0], tol), "saturation {:?}", x.data);

    // (0.9, 0.5, 0.1) has hue 1/12 (30 degrees), s = 8/9, v = 0.9. +1/4 turn gives hue
    // 1/3, pure green at that s and v: (0.1, 0.9, 0.1). -1/2 turn gives hue 7/12:
    // sector 3 at f = 0.5, (p, q, v) = (0.1, 0.9 (1 - 4/9), 0.9) = (0.1, 0.5, 0.9).
    let mut x = two_pixels();
    x.adjust_hue(0.25);
    assert!(close(&x.data[3..], &[0.1, 0.9, 0.1], tol), "hue +0.25 {:?}", x.data);
    let mut x = two_pixels();
    x.adjust_hue(-0.5);
    assert!(close(&x.data[3..], &[0.1, 0.5, 0.9], tol), "hue -0.5 {:?}", x.data);
    let mut g = Image { width: 1, height: 1, data: vec![0.3, 0.3, 0.3] };
    g.adjust_hue(0.37);
    assert!(close(&g.data, &[0.3, 0.3, 0.3], tol), "hue of gray {:?}", g.data);

    let mut x = two_pixels();
    x.solarize(0.5); // values >= 0.5 become 1 - x
    assert!(close(&x.data, &[0.2, 0.4, 0.4, 0.1, 0.5, 0.1], tol), "solarize {:?}", x.data);

    let mut x = Image { width: 3, height: 1, data: vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9] };
    x.hflip();
    assert_eq!(x.data, vec![0.7, 0.8, 0.9, 0.4, 0.5, 0.6, 0.1, 0.2, 0.3]);

    // Normalisation to (3, H, W): (x - mean) / std per channel.
    let chw = two_pixels().normalized_chw(&[0.485, 0.456, 0.406], &[0.229, 0.224, 0.225]);
    let want = [
        (0.2 - 0.485) / 0.229,
        (0.9 - 0.485) / 0.229,
        (0.4 - 0.456) / 0.224,
        (0.5 - 0.456) / 0.224,
        (0.6 - 0.406) / 0.225,
        (0.1 - 0.406) / 0.225,
    ];
    assert!(close(&chw, &want, 1e-5), "normalise {chw:?}");
    let back = Image::from_normalized_chw(&chw, 2, 1, &[0.485, 0.456, 0.406], &[0.229, 0.224, 0.225]);
    assert!(close(&back.data, &two_pixels().data, 1e-6));
}

#[test]
fn gaussian_blur_matches_its_kernel() {
    // sigma 1: radius 3, k_d = exp(-d^2 / 2) / sum, sum = 1 + 2 (e^-0.5 + e^-2 + e^-4.5).
    let sum = 1.0 + 2.0 * ((-0.5f64).exp() + (-2.0f64).exp() + (-4.5f64).exp());
    let k = |d: i32| ((-(d * d) as f64 / 2.0).exp() / sum) as f32;
    let tol = 1e-6;

    // Impulse in the middle of a 15 x 15 image: the output is the outer product k k^T.
    let mut img = Image { width: 15, height: 15, data: vec![0.0; 15 * 15 * 3] };
    img.data[(7 * 15 + 7) * 3..][..3].fill(1.0);
    let out = img.gaussian_blur(1.0);
    for (dy, dx) in [(0, 0), (0, 1), (1, 1), (3, 2), (-2, 3)] {
        let p = ((7 + dy) * 15 + (7 + dx)) as usize * 3;
        assert!((out.data[p] - k(dy) * k(dx)).abs() < tol, "({dy}, {dx}): {}", out.data[p]);
    }
    assert!((out.data.iter().sum::<f32>() - 3.0).abs() < 1e-4, "mass not preserved");
    assert_eq!(out.data[(7 * 15 + 11) * 3], 0.0, "kernel reaches past 3 sigma");

    // Borders are reflected without repeating the edge: an impulse at x = 1 of a 5 x 1
    // row reaches x = 0 directly (d = -1) and through the mirror (d = +1): 2 k_1.
    let mut row = Image { width: 5, height: 1, data: vec![0.0; 15] };
    row.data[3..6].fill(1.0);
    let out = row.gaussian_blur(1.0);
    assert!((out.data[0] - 2.0 * k(1)).abs() < tol, "reflect: {}", out.data[0]);
    assert!((out.data[3] - (k(0) + k(2))).abs() < tol, "reflect: {}", out.data[3]);

    let flat = Image { width: 6, height: 4, data: vec![0.25; 72] };
    assert!(close(&flat.gaussian_blur(1.7).data, &flat.data, 1e-6));
}

#[test]
fn bicubic_resize_copies_antialiases_and_keeps_constants() {
    let src = colourful(23, 17, 3);
    // Same size: the kernel is 1 at 0 and 0 at the other integers, an exact copy.
    let same = resize_bicubic(&src, [0.0, 0.0, 23.0, 17.0], 23, 17);
    assert!(close(&same.data, &Image::from_rgb8(&src).data, 1e-6));
    // A crop at integer offsets, same size: the crop's pixels.
    let crop = resize_bicubic(&src, [5.0, 3.0, 10.0, 8.0], 10, 8);
    let want = Image::from_rgb8(&image::imageops::crop_imm(&src, 5, 3, 10, 8).to_image());
    assert!(close(&crop.data, &want.data, 1e-6));

    // Shrinking a 1-pixel checkerboard 96 -> 30: PIL widens the kernel by the shrink
    // factor (3.2), so the result is gray (0.49..0.51 by the same formula in f64); plain
    // 4-tap bicubic sampling aliases into values from 0.03 to 0.97.
    let checker = RgbImage::from_fn(96, 96, |x, y| if (x + y) % 2 == 0 { Rgb([255; 3]) } else { Rgb([0; 3]) });
    let small = resize_bicubic(&checker, [0.0, 0.0, 96.0, 96.0], 30, 30);
    for y in 2..28 {
        for x in 2..28 {
            let v = small.data[(y * 30 + x) * 3];
            assert!((v - 0.5).abs() < 0.02, "({x}, {y}) = {v}: aliasing");
        }
    }
    let constant = RgbImage::from_pixel(40, 30, Rgb([10, 100, 200]));
    for (bx, o) in [([0.0, 0.0, 40.0, 30.0], 7), ([3.0, 2.0, 11.5, 9.0], 50)] {
        let r = resize_bicubic(&constant, bx, o, o);
        let want: Vec<f32> = (0..o * o).flat_map(|_| [10.0 / 255.0, 100.0 / 255.0, 200.0 / 255.0]).collect();
        assert!(close(&r.data, &want, 1e-5), "constant image not constant after resize");
    }
}

fn small_config() -> AugmentConfig {
    AugmentConfig {
        global_size: 32,
        local_size: 16,
        local_crops: 3,
        mask: MaskConfig { patch_size: 4, ..MaskConfig::default() },
        ..AugmentConfig::default()
    }
}

#[test]
fn views_have_their_shapes_and_are_reproducible() {
    let cfg = small_config();
    let aug = Augmenter::new(&cfg).unwrap();
    let img = colourful(80, 60, 4);
    let a = aug.views(&img, 7, 2, 11);
    assert_eq!(a.globals.len(), 2 * 3 * 32 * 32);
    assert_eq!(a.locals.len(), 3 * 3 * 16 * 16);
    assert_eq!(a.masks.len(), 2 * 8 * 8);
    assert!(a.masks.iter().all(|&m| m <= 1) && a.masks.contains(&1));
    assert!(
        a.globals.iter().chain(&a.locals).all(|v| v.is_finite() && *v >= -2.2 && *v <= 2.7),
        "not normalised [0, 1] data"
    );
    assert_eq!(a, aug.views(&img, 7, 2, 11), "same (seed, epoch, index), different views");
    for (seed, epoch, index) in [(8, 2, 11), (7, 3, 11), (7, 2, 12)] {
        let b = aug.views(&img, seed, epoch, index);
        assert_ne!(a.globals, b.globals, "({seed}, {epoch}, {index}) gave the same views");
    }
    // Each view has its own RNG stream: the number of local crops changes no global view.
    let fewer = Augmenter::new(&AugmentConfig { local_crops: 1, ..cfg.clone() }).unwrap().views(&img, 7, 2, 11);
    assert_eq!(fewer.globals, a.globals);
    assert_eq!(fewer.masks, a.masks);
    assert_eq!(fewer.locals[..], a.locals[..3 * 16 * 16]);
}

#[test]
fn grayscale_and_flip_happen_at_their_rates() {
    // Only flips: a horizontal ramp either rises or falls left to right.
    let ramp = RgbImage::from_fn(64, 64, |x, _| Rgb([(x * 4) as u8, 128, 255 - (x * 4) as u8]));
    // Everything else off, and crops of the whole image.
    let only = |flip_p: f64, grayscale_p: f64| {
        Augmenter::new(&AugmentConfig {
            ratio: (1.0, 1.0),
            flip_p,
            jitter: sop::data::JitterConfig { p: 0.0, ..Default::default() },
            grayscale_p,
            ..small_config()
        })
        .unwrap()
    };
    let n = 2000;
    let flipper = only(0.5, 0.0);
    let mut rng = StdRng::seed_from_u64(5);
    let flipped = (0..n)
        .filter(|_| {
            let v = flipper.view(&ramp, 16, (1.0, 1.0), 0.0, 0.0, &mut rng);
            v.data[0] > v.data[(16 - 1) * 3]
        })
        .count();
    // Binomial(2000, p): standard deviation below 0.012; 4 of them.
    assert!((flipped as f64 / n as f64 - 0.5).abs() < 0.045, "flip rate {flipped}/{n}");

    let grayer = only(0.0, 0.2);
    let gray = (0..n)
        .filter(|_| {
            let v = grayer.view(&ramp, 16, (1.0, 1.0), 0.0, 0.0, &mut rng);
            v.data.chunks(3).all(|p| p[0] == p[1] && p[1] == p[2])
        })
        .count();
    assert!((gray as f64 / n as f64 - 0.2).abs() < 0.036, "grayscale rate {gray}/{n}");
}

#[test]
fn config_round_trips_through_json_with_defaults() {
    let cfg = small_config();
    let json = serde_json::to_string(&cfg).unwrap();
    let back: AugmentConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, cfg);
    let partial: AugmentConfig = serde_json::from_str(r#"{"global_size": 64, "mask": {"patch_size": 8}}"#).unwrap();
    assert_eq!(partial.global_size, 64);
    assert_eq!(partial.mask.patch_size, 8);
    assert_eq!(partial.local_size, 96);
    assert_eq!(partial.global_blur_p, [1.0, 0.1]);
    assert_eq!(partial.global_solarize_p, [0.0, 0.2]);
    assert!(serde_json::from_str::<AugmentConfig>(r#"{"global_sise": 64}"#).is_err(), "typo accepted");
    assert!(Augmenter::new(&AugmentConfig { global_size: 30, ..cfg.clone() }).is_err(), "30 px with patch 4");
    assert!(Augmenter::new(&AugmentConfig { global_scale: (0.5, 0.2), ..cfg.clone() }).is_err());
    assert!(Augmenter::new(&AugmentConfig { flip_p: 1.5, ..cfg }).is_err());
}

#[test]
fn eval_view_is_resize_then_centre_crop() {
    use sop::data::augment::eval_view;
    use sop::data::EvalConfig;
    // 40 x 20, size 10, crop_fraction 1: the short side goes to 10 (40 x 20 -> 20 x 10),
    // then the centre 10 x 10 of that, columns 5..15, which is source box [10, 0, 20, 20].
    let img = colourful(40, 20, 6);
    let v = eval_view(&img, &EvalConfig { size: 10, crop_fraction: 1.0, ..EvalConfig::default() });
    assert_eq!(v, resize_bicubic(&img, [10.0, 0.0, 20.0, 20.0], 10, 10));
    // crop_fraction 0.5: short side to 20 (no resize here), centre 10 x 10 at (15, 5).
    let v = eval_view(&img, &EvalConfig { size: 10, crop_fraction: 0.5, ..EvalConfig::default() });
    let want = Image::from_rgb8(&image::imageops::crop_imm(&img, 15, 5, 10, 10).to_image());
    assert!(close(&v.data, &want.data, 1e-6));
}
