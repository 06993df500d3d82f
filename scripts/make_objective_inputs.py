#!/usr/bin/env python3
"""Writes a random, valid `sop objective --inputs` file (format: src/sop/objective_io.rs).

Banks and embeddings are unit vectors drawn around a few cluster centres, so that support
embeddings have clearly positive similarities to their anchor, as in a trained bank. The
first image of the first global view has no masked patch, the first image of the second
global view has all of them masked; every other image has at least one masked patch.

Example: make_objective_inputs.py --seed 1 --cls 24,6,1,2 --patch 20,4,1,1 --out in.safetensors
(--cls and --patch are N,P,E,tasks: bank rows, anchors, experts, tasks).
"""

import argparse

import numpy as np
from safetensors.numpy import save_file

WIDTH = 256


def unit_rows(rng, centres, n):
    rows = centres[rng.integers(0, len(centres), size=n)] + 0.6 * rng.standard_normal((n, WIDTH))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def bank_draws(rng, n, anchors, experts, tasks):
    perm = np.stack([rng.permutation(n) for _ in range(tasks)]).astype(np.int32)
    keep = np.stack([rng.permutation(anchors)[: anchors // 2] for _ in range(tasks)]).astype(np.int32)
    return perm, keep


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--tokens", type=int, default=4)
    p.add_argument("--local-views", type=int, default=0)
    p.add_argument("--cls", required=True, help="N,P,E,tasks of the [CLS] bank")
    p.add_argument("--patch", required=True, help="N,P,E,tasks of the patch bank")
    p.add_argument("--smoothing", type=float, default=0.1)
    p.add_argument("--student-temp", type=float, default=0.1)
    p.add_argument("--teacher-temp", type=float, default=0.04)
    p.add_argument("--clusters", type=int, default=4)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    rng = np.random.default_rng(a.seed)
    b, t, l, g = a.batch, a.tokens, a.local_views, 2
    # Centre and noise of similar norms: rows of one cluster have similarities near 0.7.
    centres = rng.standard_normal((a.clusters, WIDTH))
    cls = [int(x) for x in a.cls.split(",")]
    patch = [int(x) for x in a.patch.split(",")]

    masks = (rng.random((g * b, t)) < 0.4).astype(np.uint8)
    masks[np.arange(g * b), rng.integers(0, t, size=g * b)] = 1  # at least one masked patch ...
    masks[0, :] = 0  # ... except in this image
    masks[b, :] = 1
    cls_perm, cls_keep = bank_draws(rng, cls[0], cls[1], cls[2], cls[3])
    patch_perm, patch_keep = bank_draws(rng, patch[0], patch[1], patch[2], patch[3])
    f32 = lambda x: np.ascontiguousarray(x, dtype=np.float32)
    tensors = {
        "student_cls": f32(unit_rows(rng, centres, (g + l) * b)),
        "teacher_cls": f32(unit_rows(rng, centres, g * b)),
        "student_patch": f32(unit_rows(rng, centres, g * b * t).reshape(g * b, t, WIDTH)),
        "teacher_patch": f32(unit_rows(rng, centres, g * b * t).reshape(g * b, t, WIDTH)),
        "masks": masks,
        "cls_bank": f32(unit_rows(rng, centres, cls[0])),
        "patch_bank": f32(unit_rows(rng, centres, patch[0])),
        "cls_perm": cls_perm,
        "patch_perm": patch_perm,
        "cls_keep": cls_keep,
        "patch_keep": patch_keep,
    }
    metadata = {
        "global_views": str(g),
        "local_views": str(l),
        "cls_anchors": str(cls[1]),
        "cls_experts": str(cls[2]),
        "cls_tasks": str(cls[3]),
        "patch_anchors": str(patch[1]),
        "patch_experts": str(patch[2]),
        "patch_tasks": str(patch[3]),
        "smoothing": repr(a.smoothing),
        "student_temp": repr(a.student_temp),
        "teacher_temp": repr(a.teacher_temp),
    }
    save_file(tensors, a.out, metadata=metadata)


if __name__ == "__main__":
    main()
