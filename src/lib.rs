//! sop: Self-Organizing Visual Prototypes (SOP) pre-training of Vision Transformers on any
//! GPU through hand-written WGSL compute shaders on wgpu.
//!
//! # A tour, from the device up
//!
//! - `gpu`: the runtime. Adapter choice and a device with the adapter's limits (`context`),
//!   pooled tensors and views with upload and readback (`buffers`), flat tensor sets
//!   (`flat`), reads that do not wait (`readback`), the pipeline cache keyed by shader and
//!   entry point (`pipelines`), dispatch counters and per-kernel timing, and the device
//!   memory an adapter offers (`memory`). Start at
//!   `gpu/mod.rs`, then `Gpu` in `context.rs`.
//! - `ops`: one op family per file (matmul, layernorm, attention, softmax, soft_assign, …),
//!   each with its shape checks, one `Kernel` constant per WGSL entry point of
//!   `shaders/<op>.wgsl` recorded through `ops::launch`, and its backward with the
//!   derivation. Start at `ops/launch.rs`, then `ops/layernorm.rs` as a typical pair. Ops
//!   with variants choose one per adapter (rule, autotune, on-disk cache, env override, a
//!   resumed run's pin; the shared part in `ops/variant.rs`): `ops/matmul.rs`,
//!   `ops/attention_variant.rs`, and `ops/soft_assign_variant.rs` for the SOP soft
//!   assignment (`soft_assign.rs` on stored logits, `soft_assign_flash.rs` fused).
//! - `tape`: the autograd tape (`tape.rs`): one `Op` enum, one reverse loop whose arms carry
//!   their derivatives, saved tensors freed as soon as the backward used them. Read
//!   `Tape::backward`.
//! - `model`: the ViT backbone and the SOP head. `config.rs` holds the architecture,
//!   `params.rs` the parameters under the authors' names and PyTorch layouts, `pos_embed.rs`
//!   the position-embedding interpolation, and `vit.rs` the forward pass on the tape
//!   (`Vit::backbone`, `Vit::head`): start there.
//! - `sop`: the method of docs/METHOD.md. Memory banks (`bank.rs`), the prototypes built on
//!   the device from a bank (`prototypes.rs`), the [CLS] and SOP-MIM losses with their
//!   gradients (`objective.rs`, start at `sop_objective`), the file format that replays
//!   the objective against PyTorch (`objective_io.rs`, `replay.rs`), the iBOT baseline of
//!   `--objective ibot` (`ibot.rs`) and the per-step diagnostics of collapse and crowding
//!   (`diagnostics.rs`).
//! - `data`: everything between files and uploaded batches: datasets (image folders, IDX),
//!   the multi-crop augmentation (`data/augment/`), block masks, the prefetching loader and
//!   the preview grid, and generated ImageNet-sized JPEGs (`synthetic.rs`). Start at
//!   `data/mod.rs`, then `Augmenter::views`.
//! - `train`: `sop train`. Configuration (TOML) and the named recipes it starts from
//!   (`recipe.rs`: `small`, `paper`; `--set key=value`), the memory plan that sizes and
//!   checks a batch (`memory.rs`), schedules, AdamW with clipping (all on the device), the
//!   resumable training state, the step's metrics on their way back (`scalars`, `inflight`:
//!   nothing in a step waits for the device) and the loop itself; `train/mod.rs` lists one
//!   optimiser step in order: start there.
//! - `eval`: frozen features, weighted k-NN and a linear probe (`eval/mod.rs`).
//! - `checkpoint`: safetensors checkpoints under the authors' names with the architecture in
//!   the metadata, written atomically; `CheckpointError` names the file and the tensor.
//! - `dist`: data-parallel training over MPI (`--features mpi`): the ranks of a run, the
//!   MPI thread, the gradients' deterministic mean in buckets (started during the backward,
//!   `device::OverlappedMean`, as `Tape::backward_watching` finishes their parameters), bank
//!   rows all-gathered in rank order, and how a global batch is sharded (`layout.rs`);
//!   `train/distributed.rs` places the exchanges in the run. Without the feature (or without `mpirun`) it is one rank.
//! - `cli`: one file per subcommand of the `sop` binary, each an argument struct and `run`.
//! - `plot`: `sop plot`, a run's metrics.jsonl drawn as one PNG of curves (plotters).
//! - `bench`: the validate-then-time harness behind `sop bench` and `cargo bench`, one file
//!   per op family; `loader.rs` times the data path (decode + augmentation) without a GPU.
//! - `rng`: every random stream of a run by name (per training step and purpose, per data
//!   sample and view), all from one SplitMix64, so draws never depend on scheduling.
//! - `error`: `SopError`, structured variants naming the op, file or tensor that failed.
//!
//! # Shape legend
//!
//! Every shape comment uses these letters (they agree with docs/METHOD.md "Notation"):
//!
//! ```text
//! B     images per batch                     L     local crops per image
//! C     image channels (3, `in_chans`)
//! S     global crop side, pixels             S_l   local crop side, pixels
//! p     patch side, pixels (`patch_size`)    G     patches per side = S / p
//! N     patches per image = G²
//! T     tokens per image = 1 + N ([CLS] first)
//! D     backbone width                       H     attention heads
//! Dh    width of one attention head = D / H  W     head output width = bank row width
//! R     rows of a row-major input, e.g. (2+L)·B [CLS] rows or 2B·N patch rows
//! N_C   rows of the [CLS] bank               N_P   rows of the patch bank
//! N_b   rows of the bank in use (N_C or N_P)
//! P     anchors per task                     E     members per prototype, anchor included
//! P′    prototypes kept (P/2 when E > 1)     M     member rows = P′·E
//! ```
//!
//! Capital letters that name a matrix in a formula (D and Y, the prototypes' member and vote
//! matrices; Q the targets) are values, not sizes: a shape in parentheses holds sizes only.
//! A matrix product is written in lowercase, "matmul m×k · k×n → m×n", so that its sizes
//! are never read as M member rows or N patches. The patch side is a lowercase p so that it
//! is never read as P anchors; the depth and the number of tasks are written out (`depth`,
//! `tasks`). Rows are view-major: row v·B + b is view v of image b, the global views first.

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod dist;
pub mod error;
pub mod eval;
pub mod gpu;
pub mod model;
pub mod ops;
pub mod plot;
pub mod rng;
pub mod sop;
pub mod tape;
pub mod train;

pub use error::{Result, SopError};
pub use gpu::{Gpu, Tensor};
