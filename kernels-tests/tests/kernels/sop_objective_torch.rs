//! The f64 CPU reference of the SOP objective against an independent PyTorch
//! implementation written after the authors' code (scripts/sop_objective_torch.py), on the
//! fixtures in kernels-tests/fixtures/ (regenerate with scripts/make-objective-fixtures).
//! Both read the same input file; both compute in f64, so they agree to round-off.
//!
//! Tolerance: relative error under 1e-6 on each loss; on gradients 1e-6 relative to the
//! element plus 1e-6 of the tensor's largest magnitude (elements near zero have no useful
//! relative error). Any misreading of docs/METHOD.md (pairs, averaging, Y, keep order, masks)
//! changes the values by far more than that.

use crate::common::fixture;
use sop::sop::objective_io::{ObjectiveInputs, ObjectiveOutputs};
use sop_reference::sop_objective::sop_objective;

fn close(what: &str, got: f64, want: f64) {
    let rel = (got - want).abs() / want.abs();
    assert!(rel < 1e-6, "{what}: reference {got} vs torch {want} (relative error {rel:e})");
}

/// Returns the worst |got − want| / scale, for the log.
fn close_all(what: &str, got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{what}: torch gradient is all zero");
    let mut worst = 0.0f64;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-6 * (w.abs() + scale), "{what}[{i}]: reference {g} vs torch {w} (scale {scale})");
        worst = worst.max((g - w).abs() / scale);
    }
    worst
}

fn check(name: &str) {
    let inputs = ObjectiveInputs::load(fixture(&format!("{name}.inputs.safetensors"))).unwrap();
    let torch = ObjectiveOutputs::load(fixture(&format!("{name}.torch.safetensors")), &inputs).unwrap();
    let ours = sop_objective(&inputs.to_reference());
    eprintln!(
        "{name}: loss_cls {} / {}, loss_mim {} / {}",
        ours.loss_cls, torch.loss_cls, ours.loss_mim, torch.loss_mim
    );
    close(&format!("{name} loss_cls"), ours.loss_cls, torch.loss_cls);
    close(&format!("{name} loss_mim"), ours.loss_mim, torch.loss_mim);
    close(&format!("{name} loss"), ours.loss, torch.loss);
    let e_cls = close_all(&format!("{name} dstudent_cls"), &ours.dstudent_cls, &torch.dstudent_cls);
    let e_patch = close_all(&format!("{name} dstudent_patch"), &ours.dstudent_patch, &torch.dstudent_patch);
    eprintln!("{name}: worst gradient difference / max |gradient|: dstudent_cls {e_cls:e}, dstudent_patch {e_patch:e}");
}

#[test]
fn one_expert_no_local_views_matches_torch() {
    let inputs = ObjectiveInputs::load(fixture("sop_objective_e1.inputs.safetensors")).unwrap();
    assert_eq!((inputs.cls.experts, inputs.patch.experts, inputs.local_views), (1, 1, 0));
    check("sop_objective_e1");
}

#[test]
fn several_experts_with_local_views_matches_torch() {
    let inputs = ObjectiveInputs::load(fixture("sop_objective_e4_local.inputs.safetensors")).unwrap();
    assert!(inputs.cls.experts > 1 && inputs.patch.experts > 1 && inputs.local_views > 0);
    // An image without a masked patch and one fully masked (make_objective_inputs.py).
    let t = inputs.tokens;
    assert!(inputs.masks[..t].iter().all(|&m| m == 0));
    check("sop_objective_e4_local");
}
