#!/usr/bin/env python3
"""An independent PyTorch implementation of the SOP objective, for checking `sop objective`
and the f64 CPU reference (kernels-tests/src/sop_objective.rs).

It is written the way the authors' iBOT-based training code computes the objective (a
memory-bank module whose forward returns, per task, the student and teacher partition
probabilities, then a [CLS] cross-entropy over view pairs and a masked patch cross-entropy),
with the random draws of each step (torch.randperm, torch.multinomial) replaced by the
ones stored in the input file, everything in float64, and gradients from autograd.

Deliberate differences from the authors' code, each one what docs/METHOD.md describes:
- top-(E-1) uses a stable descending sort, so that equal similarities go to the lower pool
  position (torch.topk leaves the order of ties unspecified);
- the kept anchors come from `*_keep` instead of torch.multinomial;
- one teacher temperature for both banks, as the authors' training loop passes it.

Usage: sop_objective_torch.py --inputs IN.safetensors --out OUT.safetensors [--dtype float32]
The outputs are loss_cls, loss_mim, loss (shape []) and dstudent_cls, dstudent_patch
(float64 by default, float32 with --dtype float32 as `sop objective` writes them).
"""

import argparse
import os

import torch
from safetensors import safe_open
from safetensors.torch import save_file

DTYPE = torch.float64

META_INT = ["global_views", "local_views", "cls_anchors", "cls_experts", "cls_tasks",
            "patch_anchors", "patch_experts", "patch_tasks"]
META_FLOAT = ["smoothing", "student_temp", "teacher_temp"]


class ReplayedMemoryBank:
    """A FIFO bank of unit vectors stored as (C, K) columns, as in the authors' code; its
    forward builds the self-organizing prototypes of every task and returns the student's
    and the teacher's distributions over them."""

    def __init__(self, bank, perm, keep, partition_size, num_experts_per_concept, smoothing):
        self.queue = bank.t().contiguous()  # (C, K)
        self.K = self.queue.shape[1]
        self.perm = perm.long()  # (tasks, K)
        self.keep = keep.long()  # (tasks, P/2)
        self.partition_size = partition_size
        self.num_experts_per_concept = num_experts_per_concept
        self.smoothing = smoothing
        self.num_tasks = perm.shape[0]

    def partition_and_memory_indices(self, task):
        # Replaces torch.randperm(K).split((P, K - P)).
        indices = self.perm[task]
        return indices[: self.partition_size], indices[self.partition_size:]

    def forward(self, student_embeds, teacher_embeds, student_temp, teacher_temp):
        memory_embeds = self.queue
        student_probs_list, teacher_probs_list = [], []
        for task in range(self.num_tasks):
            partition_indices, memory_block_indices = self.partition_and_memory_indices(task)
            partition_embeds = memory_embeds[:, partition_indices]  # (C, P) anchors
            memory_block_embeds = memory_embeds[:, memory_block_indices]  # (C, K-P) pool

            similarities = partition_embeds.t() @ memory_block_embeds  # (P, K-P)
            k = self.num_experts_per_concept - 1
            sorted_scores, sorted_indices = torch.sort(similarities, dim=-1, descending=True, stable=True)
            neigh_scores, neigh_indices = sorted_scores[:, :k], sorted_indices[:, :k]

            # Columns of cat(pool, anchors): each prototype's SEs, then its anchor.
            pool_size = memory_block_embeds.shape[1]
            anchor_columns = torch.arange(pool_size, pool_size + self.partition_size).unsqueeze(1)
            indices_ = torch.cat((neigh_indices, anchor_columns), dim=1)  # (P, E)
            scores_ = torch.cat(
                (neigh_scores, torch.full((self.partition_size, 1), 1.0 - self.smoothing, dtype=DTYPE)), dim=1)

            partition_size = self.partition_size
            if self.num_experts_per_concept > 1:
                # "low energy" anchor subsampling; the draw replaces torch.multinomial.
                partition_size = partition_size // 2
                kept = self.keep[task]
                indices_ = indices_[kept]
                scores_ = scores_[kept]

            embeds_ = torch.cat((memory_block_embeds, partition_embeds), dim=1)
            members = embeds_[:, indices_.flatten()]  # (C, M), prototype-major

            labels = torch.arange(partition_size).repeat_interleave(self.num_experts_per_concept)
            weights = scores_.flatten().unsqueeze(1)  # (M, 1)
            label_matrix = torch.ones((labels.shape[0], partition_size), dtype=DTYPE) * (1.0 - weights) / (partition_size - 1)
            label_matrix.scatter_(1, labels.unsqueeze(1), weights)
            label_matrix = label_matrix / label_matrix.sum(-1, keepdim=True)  # (M, P')

            student_logits = student_embeds @ members / student_temp
            teacher_logits = teacher_embeds @ members / teacher_temp
            student_probs_list.append(torch.softmax(student_logits, dim=-1) @ label_matrix)
            teacher_probs_list.append(torch.softmax(teacher_logits, dim=-1) @ label_matrix)
        return student_probs_list, teacher_probs_list


def cross_entropy(p, q):
    """H(q, p) = -sum q log p per row (p the student's mixture), mean over rows."""
    return torch.mean(torch.sum(torch.log(p ** (-q)), dim=-1))


def cls_consistency(student_views, teacher_views):
    total, count = 0.0, 0
    for i in range(len(student_views)):
        for j in range(len(teacher_views)):
            if i == j:
                continue
            total = total + cross_entropy(student_views[i], teacher_views[j])
            count += 1
    return total / count


def patch_cross_entropy(p, q, mask):
    """Per image: sum of H over masked patches / max(1, #masked); mean over images."""
    per_patch = torch.sum(torch.log(p ** (-q)), dim=-1)  # (B, T)
    per_image = torch.sum(per_patch * mask.to(DTYPE), dim=-1) / mask.sum(dim=-1).clamp(min=1.0)
    return per_image.mean()


def patch_consistency(student_views, teacher_views, masks):
    total, count = 0.0, 0
    for i in range(len(student_views)):
        for j in range(len(teacher_views)):
            if i == j:
                total = total + patch_cross_entropy(student_views[i], teacher_views[j], masks[i])
                count += 1
    return total / count


def read_inputs(path):
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    args = {key: int(meta[key]) for key in META_INT}
    args.update({key: float(meta[key]) for key in META_FLOAT})
    return tensors, args


def sop_objective(tensors, a):
    g, n_views = a["global_views"], a["global_views"] + a["local_views"]
    student_cls = tensors["student_cls"].to(DTYPE).requires_grad_(True)
    student_patch = tensors["student_patch"].to(DTYPE).requires_grad_(True)
    teacher_cls = tensors["teacher_cls"].to(DTYPE)
    teacher_patch = tensors["teacher_patch"].to(DTYPE)
    masks = tensors["masks"].bool()

    class_bank = ReplayedMemoryBank(tensors["cls_bank"].to(DTYPE), tensors["cls_perm"], tensors["cls_keep"],
                                    a["cls_anchors"], a["cls_experts"], a["smoothing"])
    patch_bank = ReplayedMemoryBank(tensors["patch_bank"].to(DTYPE), tensors["patch_perm"], tensors["patch_keep"],
                                    a["patch_anchors"], a["patch_experts"], a["smoothing"])
    assert class_bank.num_tasks == a["cls_tasks"] and patch_bank.num_tasks == a["patch_tasks"]

    student_list, teacher_list = class_bank.forward(student_cls, teacher_cls, a["student_temp"], a["teacher_temp"])
    cls_ce = 0.0
    for student_probs, teacher_probs in zip(student_list, teacher_list):
        cls_ce = cls_ce + cls_consistency(student_probs.chunk(n_views), teacher_probs.detach().chunk(g))
    cls_ce = cls_ce / len(student_list)

    student_list, teacher_list = patch_bank.forward(student_patch, teacher_patch, a["student_temp"], a["teacher_temp"])
    patch_ce = 0.0
    for student_probs, teacher_probs in zip(student_list, teacher_list):
        patch_ce = patch_ce + patch_consistency(student_probs.chunk(g), teacher_probs.detach().chunk(g), masks.chunk(g))
    patch_ce = patch_ce / len(student_list)

    loss = cls_ce + patch_ce
    loss.backward()
    return cls_ce.detach(), patch_ce.detach(), loss.detach(), student_cls.grad, student_patch.grad


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    args = parser.parse_args()
    tensors, meta = read_inputs(args.inputs)
    loss_cls, loss_mim, loss, dcls, dpatch = sop_objective(tensors, meta)
    out_dtype = torch.float64 if args.dtype == "float64" else torch.float32
    outputs = {
        "loss_cls": loss_cls.reshape(()),
        "loss_mim": loss_mim.reshape(()),
        "loss": loss.reshape(()),
        "dstudent_cls": dcls,
        "dstudent_patch": dpatch,
    }
    outputs = {k: v.to(out_dtype).contiguous() for k, v in outputs.items()}
    tmp = f"{args.out}.tmp{os.getpid()}"
    save_file(outputs, tmp)
    os.replace(tmp, args.out)
    print(f"loss_cls {loss_cls.item():.17g} loss_mim {loss_mim.item():.17g} loss {loss.item():.17g}")


if __name__ == "__main__":
    main()
