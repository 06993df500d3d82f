//! `sop plot`: a small metrics.jsonl becomes a PNG of the promised size with curves on it;
//! a missing or malformed file is refused with its name and the line at fault.

use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sop-plot-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Eight step lines with every plotted metric, a k-NN line before and after.
fn metrics() -> String {
    let mut s = String::from("{\"step\": 0, \"knn_top1\": 40.0, \"knn_top5\": 80.0}\n");
    for k in 1..=8 {
        let x = k as f64;
        s.push_str(&format!(
            "{{\"step\": {k}, \"loss\": {}, \"loss_cls\": {}, \"loss_mim\": {}, \"lr\": {}, \"momentum\": {}, \
             \"agreement_cls\": 0.5, \"cls_bank_cos\": {}, \"patch_bank_cos\": 0.1, \"teacher_cls_erank\": {}, \
             \"target_entropy\": {}, \"prototypes_used\": {}, \"skipped_images\": 0}}\n",
            8.0 - 0.3 * x,
            4.0 - 0.2 * x,
            4.0 - 0.1 * x,
            1e-4 * x,
            0.95 + 0.005 * x,
            0.01 * x,
            2.0 + x,
            3.0 - 0.1 * x,
            10 + k,
        ));
    }
    s.push_str("{\"step\": 8, \"knn_top1\": 55.0, \"knn_top5\": 90.0, \"final\": true}\n");
    s
}

#[test]
fn a_small_run_gives_a_png_of_the_right_size_with_curves() {
    let dir = tmp("ok");
    std::fs::write(dir.join("metrics.jsonl"), metrics()).unwrap();
    let out = dir.join("plot.png");
    sop::plot::plot_run(&dir, &out).unwrap();
    let img = image::open(&out).unwrap().to_rgb8();
    assert_eq!((img.width(), img.height()), sop::plot::SIZE);
    // Curves are drawn in colour; the white background, black text and grey grid are not.
    let coloured = img.pixels().filter(|p| p.0.iter().max().unwrap() - p.0.iter().min().unwrap() > 60).count();
    assert!(coloured > 2000, "only {coloured} coloured pixels: the curves are missing");
    let non_white = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    assert!(non_white > 20_000, "only {non_white} non-background pixels");
    // Every plotted key was read, with its step.
    let text = metrics();
    let series = sop::plot::series(&dir.join("metrics.jsonl"), &text).unwrap();
    let get = |k: &str| series.iter().find(|(n, _)| *n == k).unwrap().1.clone();
    assert_eq!(get("knn_top1"), vec![(0.0, 40.0), (8.0, 55.0)]);
    assert_eq!(get("prototypes_used").len(), 8);
    assert_eq!(get("teacher_cls_erank")[2], (3.0, 5.0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_or_malformed_file_is_named() {
    let dir = tmp("bad");
    let out = dir.join("plot.png");
    let e = sop::plot::plot_run(&dir, &out).unwrap_err().to_string();
    assert!(e.contains("metrics.jsonl") && e.contains("not found"), "{e}");
    let file = dir.join("metrics.jsonl");
    std::fs::write(&file, "{\"step\": 1, \"loss\": 2.0}\n{\"step\": 2, \"loss\": \n").unwrap();
    let e = sop::plot::plot_run(&dir, &out).unwrap_err().to_string();
    assert!(e.contains(&file.display().to_string()) && e.contains("line 2") && e.contains("not JSON"), "{e}");
    std::fs::write(&file, "{\"loss\": 2.0}\n").unwrap();
    let e = sop::plot::plot_run(&file, &out).unwrap_err().to_string();
    assert!(e.contains("line 1") && e.contains("step"), "{e}");
    std::fs::write(&file, "\n").unwrap();
    let e = sop::plot::plot_run(&dir, &out).unwrap_err().to_string();
    assert!(e.contains("no step metrics"), "{e}");
    assert!(!out.exists(), "nothing is drawn from a bad file");
    std::fs::remove_dir_all(&dir).unwrap();
}
