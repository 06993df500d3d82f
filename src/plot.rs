//! `sop plot`: a run's curves as one PNG, drawn from its `metrics.jsonl` with the plotters
//! crate (bitmap backend). Eight panels against the optimiser step: the loss terms, k-NN
//! top-1, the bank cosines with the student–teacher agreement, the teacher [CLS] effective
//! rank, the teacher targets' entropy, the prototypes that receive mass, the learning rate
//! and the teacher momentum. A metric a run did not log (an older run, `--no-eval`, a bank
//! diagnostic of the `ibot` objective) leaves its panel with a "not logged" note.
//!
//! Text uses DejaVu Sans Mono, embedded from assets/fonts/ (plotters' `ab_glyph` feature),
//! so drawing needs no system font library (fontconfig) and gives the same picture anywhere.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::error::{Result, SopError};

/// Width and height of the picture, pixels.
pub const SIZE: (u32, u32) = (1200, 1400);

static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSansMono.ttf");

/// plotters looks fonts up by family; every family this module names maps to the one font.
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for family in ["sans-serif", "monospace"] {
            // The embedded file is a valid TrueType font, so registration cannot fail.
            let _ = plotters::style::register_font(family, FontStyle::Normal, FONT);
        }
    });
}

/// One panel: a title and the metrics.jsonl keys drawn in it, one line each.
struct Panel {
    title: &'static str,
    keys: &'static [&'static str],
}

const PANELS: [Panel; 8] = [
    Panel { title: "loss", keys: &["loss", "loss_cls", "loss_mim"] },
    Panel { title: "k-NN top-1 (%)", keys: &["knn_top1"] },
    Panel { title: "bank mean cosine, agreement", keys: &["cls_bank_cos", "patch_bank_cos", "agreement_cls"] },
    Panel { title: "teacher [CLS] effective rank", keys: &["teacher_cls_erank"] },
    Panel { title: "teacher target entropy (nats)", keys: &["target_entropy"] },
    Panel { title: "prototypes receiving mass", keys: &["prototypes_effective", "prototypes_used"] },
    Panel { title: "learning rate", keys: &["lr"] },
    Panel { title: "teacher momentum", keys: &["momentum"] },
];

/// Per metric key, its (step, value) points.
pub type Series = Vec<(&'static str, Vec<(f64, f64)>)>;

/// (step, value) pairs of every key the panels draw, read from a metrics.jsonl text. A line
/// that is not a JSON object, or has no whole `step`, is an error naming the file and line.
pub fn series(path: &Path, text: &str) -> Result<Series> {
    let keys: Vec<&'static str> = PANELS.iter().flat_map(|p| p.keys.iter().copied()).collect();
    let mut out: Series = keys.iter().map(|&k| (k, Vec::new())).collect();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |why: &str| SopError::file(path, format!("line {}: {why}", i + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&format!("not JSON ({e})")))?;
        let obj = v.as_object().ok_or_else(|| bad("not a JSON object"))?;
        let step = obj.get("step").and_then(|s| s.as_u64()).ok_or_else(|| bad("no whole-number \"step\""))?;
        for (key, points) in out.iter_mut() {
            if let Some(y) = obj.get(*key).and_then(|y| y.as_f64()).filter(|y| y.is_finite()) {
                points.push((step as f64, y));
            }
        }
    }
    Ok(out)
}

/// Draw `run`'s metrics.jsonl (`run` is a run folder or the file itself) into the PNG `out`.
pub fn plot_run(run: &Path, out: &Path) -> Result<()> {
    let path = if run.is_dir() { run.join(crate::train::state::METRICS) } else { run.to_path_buf() };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SopError::file(&path, "not found: `sop plot --run` takes a run folder written by `sop train`"))
        }
        Err(e) => return Err(SopError::file(&path, e)),
    };
    let data = series(&path, &text)?;
    if data.iter().all(|(_, p)| p.is_empty()) {
        return Err(SopError::file(&path, "holds no step metrics to plot"));
    }
    let title = format!("{}", run.display());
    draw(&data, &title, out).map_err(|e| SopError::file(out, format!("could not draw the plot: {e}")))
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn draw(data: &Series, title: &str, out: &Path) -> DrawResult {
    register_font();
    let root = BitMapBackend::new(out, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let cells = root.split_evenly((4, 2));
    let max_step = data.iter().flat_map(|(_, p)| p.iter().map(|q| q.0)).fold(1.0f64, f64::max);
    for (panel, area) in PANELS.iter().zip(cells.iter()) {
        let lines: Vec<(&str, &[(f64, f64)])> = panel
            .keys
            .iter()
            .filter_map(|k| data.iter().find(|(n, _)| n == k))
            .filter(|(_, p)| !p.is_empty())
            .map(|(n, p)| (*n, p.as_slice()))
            .collect();
        draw_panel(area, panel, &lines, max_step)?;
    }
    root.present()?;
    Ok(())
}

/// y range with a margin; a flat series gets a band around its value.
fn y_range(lines: &[(&str, &[(f64, f64)])]) -> (f64, f64) {
    let ys = lines.iter().flat_map(|(_, p)| p.iter().map(|q| q.1));
    let (lo, hi) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 0.5f64.max(0.05 * hi.abs()) };
    (lo - pad, hi + pad)
}

const COLOURS: [RGBColor; 3] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44)];

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    panel: &Panel,
    lines: &[(&str, &[(f64, f64)])],
    max_step: f64,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let (lo, hi) = y_range(lines);
    let mut chart = ChartBuilder::on(area);
    chart.caption(panel.title, ("sans-serif", 18)).margin(12).x_label_area_size(30).y_label_area_size(70);
    let mut c = chart.build_cartesian_2d(0f64..max_step, lo..hi)?;
    mesh(&mut c).y_label_formatter(&y_label).draw()?;
    draw_lines(area, &mut c, lines)
}

/// A y tick: small magnitudes (learning rates) in scientific notation, others with up to
/// three decimals.
fn y_label(y: &f64) -> String {
    if *y != 0.0 && y.abs() < 1e-2 {
        format!("{y:.1e}")
    } else {
        let s = format!("{y:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The grid, with whole step numbers on the x axis.
fn mesh<
    'a,
    'b,
    DB: DrawingBackend + 'a,
    Y: Ranged<ValueType = f64> + plotters::coord::ranged1d::ValueFormatter<f64>,
>(
    c: &'b mut ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
) -> plotters::chart::MeshStyle<'a, 'b, plotters::coord::types::RangedCoordf64, Y, DB> {
    let mut m = c.configure_mesh();
    m.x_desc("step").label_style(("sans-serif", 13)).x_label_formatter(&|x| format!("{x:.0}"));
    m
}

/// The panel's lines with a legend, or a "not logged" note when it has none.
fn draw_lines<'a, DB: DrawingBackend + 'a, Y: Ranged<ValueType = f64>>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    c: &mut ChartContext<'a, DB, Cartesian2d<plotters::coord::types::RangedCoordf64, Y>>,
    lines: &[(&str, &[(f64, f64)])],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    if lines.is_empty() {
        area.draw_text("not logged", &("sans-serif", 16).into_text_style(area), (160, 150))?;
        return Ok(());
    }
    for (i, (name, pts)) in lines.iter().enumerate() {
        let col = COLOURS[i % COLOURS.len()];
        let shown: Vec<(f64, f64)> = pts.to_vec();
        // Width 1: plotters joins wider lines with mitres, which spike out of the panel on
        // a noisy series. A series of a few points (k-NN evaluations) is marked as well as joined.
        if shown.len() <= 40 {
            c.draw_series(shown.iter().map(|&p| Circle::new(p, 4, col.filled())))?;
        }
        let style = ShapeStyle { color: col.to_rgba(), filled: true, stroke_width: 1 };
        c.draw_series(LineSeries::new(shown, style))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], col));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}
