//! The GPU model against PyTorch/timm outputs (fixtures from `scripts/make-vit-fixtures`):
//! a timm state dict (no `backbone.` prefix, no metadata) loads as a backbone and gives
//! timm's final-norm tokens, and the full sop checkpoint gives the head outputs, masked and
//! at another input size. Relative error (max |diff| / max |torch|) under 1e-4, the bound
//! `sop embed` promises: f32 through a 2-block ViT stays near 1e-6.

use crate::common::fixture;

use sop::checkpoint::{self, HostTensor};
use sop::model::vit::{ForwardOptions, Vit, Weights};
use sop::model::{backbone_specs, param_specs};
use sop::tape::Tape;

fn rel_err(got: &[f32], want: &HostTensor) -> f64 {
    assert_eq!(got.len(), want.data.len());
    let scale = want.data.iter().fold(0f64, |m, &v| m.max((v as f64).abs()));
    got.iter().zip(&want.data).fold(0f64, |m, (&g, &w)| m.max((g as f64 - w as f64).abs())) / scale
}

fn weights(gpu: &sop::Gpu, ck: &checkpoint::Checkpoint, specs: &[sop::model::ParamSpec]) -> Weights {
    let host: Vec<_> = specs
        .iter()
        .map(|s| (s.name.clone(), ck.tensors[&s.name].shape.clone(), ck.tensors[&s.name].data.clone()))
        .collect();
    Weights::upload(gpu, &host).unwrap()
}

fn run(gpu: &sop::Gpu, vit: &Vit, w: &Weights, x: &HostTensor, mask: Option<&HostTensor>, head: bool) -> Vec<f32> {
    let mut tape = Tape::no_grad(gpu);
    let p = w.leaves(&mut tape, false);
    let xv = tape.constant(gpu.upload_f32(&x.shape, &x.data).unwrap());
    let m =
        mask.map(|m| gpu.upload_u32(&m.shape, &m.data.iter().map(|&v| (v != 0.0) as u32).collect::<Vec<_>>()).unwrap());
    let tokens = vit.backbone(&mut tape, &p, &xv, &ForwardOptions { mask: m.as_ref(), drop_path: None }).unwrap();
    let out = if head { vit.head(&mut tape, &p, &tokens).unwrap() } else { tokens };
    gpu.read_f32(&out.value).unwrap()
}

#[test]
fn timm_state_dict_gives_timm_tokens_on_the_gpu() {
    let gpu = sop::Gpu::new(None).unwrap_or_else(|e| panic!("{e}"));
    let cfg = checkpoint::read_config(&fixture("vit_tiny.safetensors")).unwrap().unwrap();
    let io = checkpoint::read(&fixture("vit_tiny_io.safetensors")).unwrap();
    let ck = checkpoint::load_backbone(&fixture("vit_tiny_timm.safetensors"), &backbone_specs(&cfg)).unwrap();
    let vit = Vit::new(cfg.clone());
    let w = weights(&gpu, &ck, &backbone_specs(&cfg));
    let tokens = run(&gpu, &vit, &w, &io.tensors["x"], None, false);
    let e = rel_err(&tokens, &io.tensors["tokens"]);
    eprintln!("timm tokens: relative error {e:.2e}");
    assert!(e < 1e-4, "tokens differ from timm by {e:.3e}");
}

#[test]
fn full_checkpoint_gives_torch_head_outputs_on_the_gpu() {
    let gpu = sop::Gpu::new(None).unwrap_or_else(|e| panic!("{e}"));
    let path = fixture("vit_tiny.safetensors");
    let cfg = checkpoint::read_config(&path).unwrap().unwrap();
    let ck = checkpoint::load(&path, &param_specs(&cfg)).unwrap();
    let io = checkpoint::read(&fixture("vit_tiny_io.safetensors")).unwrap();
    let vit = Vit::new(cfg.clone());
    let w = weights(&gpu, &ck, &param_specs(&cfg));
    let t = &io.tensors;
    for (what, x, mask, want) in [
        ("head", &t["x"], None, &t["head"]),
        ("head_masked", &t["x"], Some(&t["mask"]), &t["head_masked"]),
        ("head24", &t["x24"], None, &t["head24"]),
    ] {
        let got = run(&gpu, &vit, &w, x, mask, true);
        let e = rel_err(&got, want);
        eprintln!("{what}: relative error {e:.2e}");
        assert!(e < 1e-4, "{what} differs from torch by {e:.3e}");
    }
}
