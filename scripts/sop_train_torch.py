#!/usr/bin/env python3
"""A compact PyTorch replica of `sop train` on Fashion-MNIST-sized data, for choosing the
hyper-parameters of small runs quickly on a CPU (OpenBLAS is ~30x faster than a WGSL
matmul on lavapipe) and for cross-checking the engine's training dynamics.

It follows docs/METHOD.md and the engine's defaults (src/train/config.rs): student and EMA teacher
ViT with an MLP head, block masks, the SOP objective of scripts/sop_objective_torch.py with
fresh random draws, AdamW with the cosine schedules, per-tensor clipping, FIFO banks, and
the weighted k-NN protocol on teacher backbone [CLS] features. Augmentations are a close
but not bit-identical port of src/data/augment/ (grey images: crop, flip, brightness /
contrast jitter in random order, blur, solarize), vectorised over the batch.

`--set objective=ibot` swaps the SOP objective for the parametric baseline (DINO/iBOT: a
weight-normalised prototype layer, teacher centering and sharpening; docs/RECIPE.md).
`--set koleo=W` adds W·KoLeo on the student [CLS] head rows of each global view (summed over
the two views, as the engine's `sop.koleo_weight`); `--set sop_center=1` gives the
teacher's [CLS] targets from cos(u - c, d - c), c the batch mean of the teacher [CLS] rows
(a departure from SOP.md, docs/RECIPE.md); `--set warmup_steps=N` states the lr warm-up in steps (-1: warmup_epochs).
Diagnostics (bank cosines, teacher [CLS] batch cosine and effective rank, teacher target
entropy, prototypes receiving mass) are printed every --log-every steps and appended to
--jsonl. One torch thread by default: on a shared 2-core machine two threads ran far slower.
Over 400 lines: one self-contained file (data, model, both objectives, loop) that runs with
torch alone, beside the engine it mirrors.

Usage: sop_train_torch.py [--data assets/fashion-mnist] [--init CHECKPOINT] [--eval-every N]
                          [--jsonl FILE] [--set key=value ...]
"""

import argparse
import gzip
import json
import math
import os
import struct
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULTS = dict(
    dim=64, depth=3, heads=2, patch=7, img=28, head_hidden=128, bottleneck=256, drop_path=0.0,
    batch=64, epochs=30, lr=1e-3, min_lr=1e-6, warmup_epochs=1, wd=0.04, wd_end=0.4, clip=3.0,
    m=0.95, m_end=1.0, cls_bank=2048, patch_bank=2048, cls_P=32, cls_E=5, cls_T=2, patch_P=128,
    patch_E=1, patch_T=1, smoothing=0.1, tau_s=0.1, tau_t=0.04, scale_lo=0.4, scale_hi=1.0,
    blur_lo=0.1, blur_hi=0.5, mask_ratio=0.3, mask_var=0.0, mim=1.0, seed=0, steps=0,
    jitter_p=0.8, solarize_p=0.2, flip_p=0.5, local_crops=0, local_size=14, local_lo=0.05, local_hi=0.4,
    tau_t_warm=0.04, tau_t_warm_epochs=0, objective="sop", ibot_K=1024, center_m=0.9, koleo=0.0, sop_center=0,
    warmup_steps=-1,
)


def read_idx(path):
    with (gzip.open(path) if path.endswith(".gz") else open(path, "rb")) as f:
        data = f.read()
    dims = data[3]
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return torch.frombuffer(bytearray(data[4 + 4 * dims:]), dtype=torch.uint8).reshape(shape)


def load_split(root, prefix):
    def find(stem):
        for name in (stem, stem + ".gz"):
            if os.path.exists(os.path.join(root, name)):
                return os.path.join(root, name)
        raise FileNotFoundError(os.path.join(root, stem))
    return read_idx(find(f"{prefix}-images-idx3-ubyte")), read_idx(find(f"{prefix}-labels-idx1-ubyte")).long()


MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def normalise(x):  # x: (..., 1, H, W) in [0, 1] -> (..., 3, H, W)
    return (x.expand(*x.shape[:-3], 3, *x.shape[-2:]) - MEAN) / STD


def crop_boxes(n, h, w, scale, ratio, g, tries=10):
    """torchvision's RandomResizedCrop boxes for n images, vectorised: `tries` draws of an
    area fraction in `scale` and a log-uniform aspect in `ratio`, the first that fits, else
    the whole image. Returns (top, left, ch, cw) float tensors (n,)."""
    area = h * w * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, generator=g))
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(n, tries, generator=g))
    cw, ch = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    pick = first.clamp_min(0).unsqueeze(1)
    cw = torch.where(first >= 0, cw.gather(1, pick).squeeze(1), torch.full((n,), float(w)))
    ch = torch.where(first >= 0, ch.gather(1, pick).squeeze(1), torch.full((n,), float(h)))
    top = torch.floor(torch.rand(n, generator=g) * (h - ch + 1))
    left = torch.floor(torch.rand(n, generator=g) * (w - cw + 1))
    return top, left, ch, cw


def augment_batch(imgs, size, scale, blur_p, solarize_p, c, g):
    """One view of each image, vectorised (src/data/augment/mod.rs on grey images):
    imgs (n, 1, H, W) in [0, 1] -> (n, 1, size, size). Random resized crop (bicubic),
    flip p `flip_p`, brightness/contrast jitter p `jitter_p` in random order, Gaussian blur
    p `blur_p` (sigma in (blur_lo, blur_hi), truncated at 3 sigma, reflected borders),
    solarize p `solarize_p` (values >= 0.5 inverted). Saturation, hue and greyscale do
    nothing to a grey image."""
    n, _, h, w = imgs.shape
    top, left, ch, cw = crop_boxes(n, h, w, scale, (3 / 4, 4 / 3), g)
    flip = torch.rand(n, generator=g) < c["flip_p"]
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -cw / w, cw / w)
    theta[:, 0, 2] = (2 * left + cw) / w - 1
    theta[:, 1, 1] = ch / h
    theta[:, 1, 2] = (2 * top + ch) / h - 1
    grid = F.affine_grid(theta, (n, 1, size, size), align_corners=False)
    x = F.grid_sample(imgs, grid, mode="bicubic", padding_mode="border", align_corners=False).clamp(0, 1)
    jit = (torch.rand(n, generator=g) < c["jitter_p"]).view(n, 1, 1, 1)
    b = (1 + 0.4 * (2 * torch.rand(n, generator=g) - 1)).view(n, 1, 1, 1)
    k = (1 + 0.4 * (2 * torch.rand(n, generator=g) - 1)).view(n, 1, 1, 1)
    b_first = (torch.rand(n, generator=g) < 0.5).view(n, 1, 1, 1)
    bright = lambda y: (y * b).clamp(0, 1)
    contrast = lambda y: ((y - y.mean((1, 2, 3), keepdim=True)) * k + y.mean((1, 2, 3), keepdim=True)).clamp(0, 1)
    x = torch.where(jit, torch.where(b_first, contrast(bright(x)), bright(contrast(x))), x)
    if blur_p > 0:
        blur = (torch.rand(n, generator=g) < blur_p).view(n, 1, 1)
        sigma = (c["blur_lo"] + (c["blur_hi"] - c["blur_lo"]) * torch.rand(n, generator=g)).view(n, 1)
        r = math.ceil(3 * c["blur_hi"])
        t = torch.arange(-r, r + 1).float().view(1, -1)
        kern = torch.exp(-t * t / (2 * sigma * sigma)) * (t.abs() <= torch.ceil(3 * sigma))
        kern = kern / kern.sum(1, keepdim=True)
        y = F.pad(x.view(1, n, size, size), (r, r, r, r), mode="reflect")
        y = F.conv2d(y, kern.view(n, 1, 1, -1), groups=n)
        y = F.conv2d(y, kern.view(n, 1, -1, 1), groups=n).view(n, 1, size, size)
        x = torch.where(blur.view(n, 1, 1, 1), y, x)
    if solarize_p > 0:
        sol = (torch.rand(n, generator=g) < solarize_p).view(n, 1, 1, 1)
        x = torch.where(sol & (x >= 0.5), 1 - x, x)
    return x


def block_mask(grid, ratio, g):
    """BEiT block mask on a grid x grid patch grid (docs/METHOD.md "Data views")."""
    mask = torch.zeros(grid, grid, dtype=torch.bool)
    target = int(ratio * grid * grid)
    min_area = max(1, (grid // 3) ** 2)
    count = 0
    while count < target:
        added = 0
        for _ in range(10):
            remaining = target - count
            if remaining < min_area:
                break
            area = min_area + (remaining - min_area) * torch.rand((), generator=g).item()
            aspect = math.exp(math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * torch.rand((), generator=g).item())
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if h < grid and w < grid:
                top = torch.randint(0, grid - h + 1, (), generator=g).item()
                left = torch.randint(0, grid - w + 1, (), generator=g).item()
                new = (~mask[top:top + h, left:left + w]).sum().item()
                if 0 < new <= remaining:
                    mask[top:top + h, left:left + w] = True
                    added = new
                    break
        if added == 0:
            break
        count += added
    return mask.flatten()


class Block(nn.Module):
    def __init__(self, d, heads, dp):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads, self.dp = heads, dp

    def drop(self, x):
        if not self.training or self.dp == 0:
            return x
        keep = (torch.rand(x.shape[0], 1, 1) >= self.dp).float() / (1 - self.dp)
        return x * keep

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2]).transpose(1, 2).reshape(b, n, d)
        x = x + self.drop(self.proj(a))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.norm2(x)))))


class Vit(nn.Module):
    def __init__(self, c, drop_path):
        super().__init__()
        d, p = c["dim"], c["patch"]
        self.patch = p
        self.embed = nn.Conv2d(3, d, p, p)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (c["img"] // p) ** 2 + 1, d) * 0.02)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        self.blocks = nn.ModuleList(Block(d, c["heads"], drop_path * i / max(1, c["depth"] - 1)) for i in range(c["depth"]))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        h, o = c["head_hidden"], c["bottleneck"]
        self.head = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, o))
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def backbone(self, x, mask=None):
        t = self.embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        if mask is not None:
            t = torch.where(mask.unsqueeze(-1), self.mask_token.to(t.dtype).expand_as(t), t)
        pos = self.pos
        n = t.shape[1]
        if n + 1 != pos.shape[1]:
            g0, g1 = int(math.sqrt(pos.shape[1] - 1)), int(math.sqrt(n))
            grid = pos[:, 1:].reshape(1, g0, g0, -1).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(g1, g1), mode="bicubic", align_corners=False)
            pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, n, -1)], dim=1)
        x = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + pos
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, x, mask=None):
        return F.normalize(self.head(self.backbone(x, mask)), dim=-1, eps=1e-6)


def prototypes(bank, P, E, smoothing, g):
    """One task's members D (M, W) and vote matrix Y (M, P') from the bank (docs/METHOD.md)."""
    n = bank.shape[0]
    perm = torch.randperm(n, generator=g)
    anchors, pool = bank[perm[:P]], bank[perm[P:]]
    if E > 1:
        sim, idx = (anchors @ pool.t()).topk(E - 1, dim=-1)
        members = torch.cat([pool[idx], anchors.unsqueeze(1)], dim=1)  # (P, E, W)
        weights = torch.cat([sim, torch.full((P, 1), 1 - smoothing)], dim=1)
        keep = torch.randperm(P, generator=g)[: P // 2]
        members, weights = members[keep], weights[keep]
    else:
        members, weights = anchors.unsqueeze(1), torch.full((P, 1), 1 - smoothing)
    Pk = members.shape[0]
    labels = torch.arange(Pk).repeat_interleave(E)
    w = weights.reshape(-1, 1)
    Y = torch.ones(labels.shape[0], Pk) * (1 - w) / (Pk - 1)
    Y.scatter_(1, labels.unsqueeze(1), w)
    return members.reshape(-1, bank.shape[1]), Y / Y.sum(-1, keepdim=True)


def assign(u, D, Y, tau):
    return torch.softmax(u @ D.t() / tau, dim=-1) @ Y


def ce(p, q):  # H(q, p) per row
    return -(q * torch.log(p.clamp_min(1e-30))).sum(-1)


def cosine(step, total, start, end, warm=0, warm_start=0.0):
    if step < warm:
        return warm_start + (start - warm_start) * step / warm
    t = (step - warm) / max(1, total - warm)
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(1.0, t)))


@torch.no_grad()
def features(model, images, batch=500):
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        x = normalise(images[i:i + batch].float().unsqueeze(1) / 255)
        out.append(F.normalize(model.backbone(x)[:, 0], dim=-1))
    return torch.cat(out)


def knn(train_f, train_y, val_f, val_y, k=20, t=0.07):
    correct = 0
    for i in range(0, len(val_f), 1000):
        sim, idx = (val_f[i:i + 1000] @ train_f.t()).topk(k, dim=-1)
        votes = torch.zeros(sim.shape[0], int(train_y.max()) + 1).scatter_add_(1, train_y[idx], (sim / t).exp())
        correct += (votes.argmax(-1) == val_y[i:i + 1000]).sum().item()
    return 100 * correct / len(val_f)


def rank(f):
    s = torch.linalg.svdvals(f - f.mean(0))
    p = s / s.sum()
    return math.exp(-(p * p.clamp_min(1e-12).log()).sum().item())


def load_checkpoint(path):
    """An engine checkpoint (the authors' parameter names) as this module's state dict."""
    from safetensors.torch import load_file
    renames = [("backbone.", ""), ("attn.qkv", "qkv"), ("attn.proj", "proj"), ("mlp.fc", "fc"), ("cls_token", "cls"),
               ("masked_embed", "mask_token"), ("patch_embed.proj", "embed"), ("pos_embed", "pos"), ("head.mlp.", "head.")]
    out = {}
    for name, value in load_file(path).items():
        for a, b in renames:
            name = name.replace(a, b)
        out[name] = value.reshape(1, 1, -1) if name == "mask_token" else value
    return out


def koleo(x, eps=1e-8):
    """KoLeo (DINOv2) on unit rows x (n, W): -mean_i log(||x_i - x_nn(i)|| + eps), nn(i) the
    row of largest dot product with x_i (j != i)."""
    with torch.no_grad():
        dots = x @ x.t()
        dots.fill_diagonal_(-float("inf"))
        nn_ = dots.argmax(1)
    d = (x - x[nn_]).square().sum(-1).sqrt()
    return -torch.log(d + eps).mean()


def offdiag_cos(bank):
    """Mean cosine between distinct unit rows (the engine's cls_bank_cos / patch_bank_cos)."""
    n = bank.shape[0]
    return ((bank.sum(0).square().sum() - n) / (n * (n - 1))).item()


def target_stats(pt):
    """Teacher targets pt (R, P'): mean row entropy (nats) and the effective number of
    prototypes receiving mass, exp H(mean row) (P' when the batch spreads over all)."""
    ent = -(pt * pt.clamp_min(1e-30).log()).sum(-1).mean().item()
    marg = pt.mean(0)
    return ent, math.exp(-(marg * marg.clamp_min(1e-30).log()).sum().item())


class SopObjective:
    """The SOP objective with FIFO banks (docs/METHOD.md), as `sop train` runs it."""

    def __init__(self, c, W, g):
        self.c, self.g = c, g
        self.cls_bank = F.normalize(torch.randn(c["cls_bank"], W, generator=g), dim=-1)
        self.patch_bank = F.normalize(torch.randn(c["patch_bank"], W, generator=g), dim=-1)
        self.cls_ptr = self.patch_ptr = 0

    def parameters(self):
        return []

    def loss(self, s_cls, t_cls, s_patch, t_patch, masks, tau_t, diag):
        c, g = self.c, self.g
        n_views = s_cls.shape[0] // (t_cls.shape[0] // 2)
        loss_cls, ent, used, n_protos = 0.0, [], [], 0
        for _ in range(c["cls_T"]):
            D, Y = prototypes(self.cls_bank, c["cls_P"], c["cls_E"], c["smoothing"], g)
            ps = assign(s_cls, D, Y, c["tau_s"]).chunk(n_views)
            with torch.no_grad():
                # sop_center 1: the teacher's logits are cos(u - c, d - c)/tau_t, c the batch
                # mean of the teacher [CLS] rows (a departure from SOP.md; removes the shared
                # part c and keeps the logits' range), as the engine's `Centring`.
                if c["sop_center"]:
                    mu = t_cls.mean(0, keepdim=True)
                    pt = assign(F.normalize(t_cls - mu, dim=-1, eps=1e-6), F.normalize(D - mu, dim=-1, eps=1e-6), Y, tau_t)
                else:
                    pt = assign(t_cls, D, Y, tau_t)
            if diag:
                e, u = target_stats(pt)
                ent.append(e), used.append(u)
                n_protos = pt.shape[1]
            pt = pt.chunk(2)
            terms = [ce(ps[i], pt[j]).mean() for i in range(n_views) for j in range(2) if i != j]
            loss_cls = loss_cls + sum(terms) / len(terms)
        loss_cls = loss_cls / c["cls_T"]
        loss_mim = torch.zeros(())
        if c["mim"] > 0:
            for _ in range(c["patch_T"]):
                D, Y = prototypes(self.patch_bank, c["patch_P"], c["patch_E"], c["smoothing"], g)
                ps = assign(s_patch, D, Y, c["tau_s"])
                with torch.no_grad():
                    pt = assign(t_patch, D, Y, tau_t)
                per = (ce(ps, pt) * masks).sum(-1) / masks.sum(-1).clamp_min(1)
                loss_mim = loss_mim + per.mean()
            loss_mim = c["mim"] * loss_mim / c["patch_T"]
        d = {}
        if diag:
            d = dict(cls_bank_cos=offdiag_cos(self.cls_bank), patch_bank_cos=offdiag_cos(self.patch_bank),
                     target_entropy=sum(ent) / len(ent), protos_used=sum(used) / len(used), protos=n_protos)
        return loss_cls, loss_mim, d

    @torch.no_grad()
    def after_step(self, t_cls, t_patch, m):
        B, grid2 = t_cls.shape[0] // 2, t_patch.shape[1]
        rows = torch.arange(self.cls_ptr, self.cls_ptr + B) % len(self.cls_bank)
        self.cls_bank[rows] = t_cls[B:]
        self.cls_ptr = (self.cls_ptr + B) % len(self.cls_bank)
        pick = torch.randint(0, grid2, (B,), generator=self.g)
        rows = torch.arange(self.patch_ptr, self.patch_ptr + B) % len(self.patch_bank)
        self.patch_bank[rows] = t_patch[B:][torch.arange(B), pick]
        self.patch_ptr = (self.patch_ptr + B) % len(self.patch_bank)


class IbotObjective:
    """The parametric baseline (DINO/iBOT): a weight-normalised prototype layer of
    `ibot_K` rows (unit rows, as DINO's norm_last_layer) on the head's unit output, shared
    by [CLS] and patches; the teacher's copy follows by EMA; teacher logits are centred
    (centres of [CLS] and patches, EMA `center_m` of the batch means) and sharpened by
    tau_t; [CLS] loss across views, masked-patch loss on masked patches. No banks."""

    def __init__(self, c, W, g):
        self.c = c
        self.v_s = nn.Parameter(torch.empty(c["ibot_K"], W))
        nn.init.trunc_normal_(self.v_s, std=0.02)
        self.v_t = self.v_s.detach().clone()
        self.center_cls = torch.zeros(c["ibot_K"])
        self.center_patch = torch.zeros(c["ibot_K"])

    def parameters(self):
        return [self.v_s]

    def loss(self, s_cls, t_cls, s_patch, t_patch, masks, tau_t, diag):
        c = self.c
        Ws, Wt = F.normalize(self.v_s, dim=-1), F.normalize(self.v_t, dim=-1)
        n_views = s_cls.shape[0] // (t_cls.shape[0] // 2)
        ls = F.log_softmax(s_cls @ Ws.t() / c["tau_s"], dim=-1).chunk(n_views)
        with torch.no_grad():
            self.t_cls_logits = t_cls @ Wt.t()
            pt_all = torch.softmax((self.t_cls_logits - self.center_cls) / tau_t, dim=-1)
        pt = pt_all.chunk(2)
        terms = [-(pt[j] * ls[i]).sum(-1).mean() for i in range(n_views) for j in range(2) if i != j]
        loss_cls = sum(terms) / len(terms)
        loss_mim = torch.zeros(())
        if c["mim"] > 0:
            lsp = F.log_softmax(s_patch @ Ws.t() / c["tau_s"], dim=-1)
            with torch.no_grad():
                self.t_patch_logits = t_patch @ Wt.t()
                ptp = torch.softmax((self.t_patch_logits - self.center_patch) / tau_t, dim=-1)
            per = (-(ptp * lsp).sum(-1) * masks).sum(-1) / masks.sum(-1).clamp_min(1)
            loss_mim = c["mim"] * per.mean()
        d = {}
        if diag:
            e, u = target_stats(pt_all)
            d = dict(target_entropy=e, protos_used=u, protos=c["ibot_K"])
        return loss_cls, loss_mim, d

    @torch.no_grad()
    def after_step(self, t_cls, t_patch, m):
        self.v_t.mul_(m).add_(self.v_s.detach(), alpha=1 - m)
        cm = self.c["center_m"]
        self.center_cls.mul_(cm).add_(self.t_cls_logits.mean(0), alpha=1 - cm)
        if self.c["mim"] > 0:
            self.center_patch.mul_(cm).add_(self.t_patch_logits.mean((0, 1)), alpha=1 - cm)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="assets/fashion-mnist")
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--jsonl", help="append the diagnostics of every logged step and the result here")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared 2-core machine, 2 threads ran ~15x slower than 1)")
    ap.add_argument("--init", help="start from these weights (a `sop train --steps 0` checkpoint)")
    args = ap.parse_args()
    c = dict(DEFAULTS)
    for kv in args.set:
        k, _, v = kv.partition("=")
        if k not in DEFAULTS or not v:
            ap.error(f"--set {kv!r}: expected key=value with key one of {', '.join(sorted(DEFAULTS))}")
        c[k] = type(DEFAULTS[k])(v)
    if c["objective"] not in ("sop", "ibot"):
        ap.error(f"objective {c['objective']!r}: sop or ibot")
    torch.set_num_threads(args.threads)
    torch.manual_seed(c["seed"])
    g = torch.Generator().manual_seed(c["seed"])
    log = open(args.jsonl, "a") if args.jsonl else None

    def emit(rec):
        if log:
            log.write(json.dumps(rec) + "\n")
            log.flush()

    xtr, ytr = load_split(args.data, "train")
    xva, yva = load_split(args.data, "t10k")
    grid = c["img"] // c["patch"]
    student, teacher = Vit(c, c["drop_path"]), Vit(c, 0.0)
    if args.init:
        student.load_state_dict(load_checkpoint(args.init))
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    W = c["bottleneck"]
    obj = (SopObjective if c["objective"] == "sop" else IbotObjective)(c, W, g)
    decay = [p for n, p in student.named_parameters() if p.ndim > 1] + obj.parameters()
    no_decay = [p for n, p in student.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=0, betas=(0.9, 0.999))
    B = c["batch"]
    per_epoch = len(xtr) // B
    total = c["steps"] or c["epochs"] * per_epoch
    sched_total = c["epochs"] * per_epoch
    lr_peak = c["lr"] * B / 256
    tt_warm = c["tau_t_warm_epochs"] * per_epoch
    eval_knn = lambda: knn(features(teacher, xtr), ytr, features(teacher, xva), yva)
    before = eval_knn()
    rank_before = rank(features(teacher, xva))
    print(f"knn before {before:.2f} rank {rank_before:.2f} steps {total} per_epoch {per_epoch}", flush=True)
    emit(dict(step=0, knn=before, feat_rank=rank_before))
    t0 = time.time()
    order = torch.randperm(len(xtr), generator=g)
    for step in range(total):
        if (step % per_epoch) == 0 and step > 0:
            order = torch.randperm(len(xtr), generator=g)
        idx = order[(step % per_epoch) * B:(step % per_epoch + 1) * B]
        imgs = xtr[idx].float().unsqueeze(1) / 255
        scale = (c["scale_lo"], c["scale_hi"])
        views = [augment_batch(imgs, c["img"], scale, [1.0, 0.1][v], [0.0, c["solarize_p"]][v], c, g) for v in range(2)]
        glob = normalise(torch.cat(views))  # (2B, 3, H, W)
        ratio = lambda: c["mask_ratio"] + c["mask_var"] * (2 * torch.rand((), generator=g).item() - 1)
        masks = torch.stack([block_mask(grid, ratio(), g) for _ in range(2 * B)])
        warm = c["warmup_steps"] if c["warmup_steps"] >= 0 else c["warmup_epochs"] * per_epoch
        lr = cosine(step, sched_total, lr_peak, c["min_lr"], warm)
        wd = cosine(step, sched_total, c["wd"], c["wd_end"])
        m = cosine(step, sched_total, c["m"], c["m_end"])
        tau_t = c["tau_t_warm"] + (c["tau_t"] - c["tau_t_warm"]) * step / tt_warm if step < tt_warm else c["tau_t"]
        opt.param_groups[0]["lr"] = opt.param_groups[1]["lr"] = lr
        opt.param_groups[0]["weight_decay"] = wd
        student.train()
        with torch.no_grad():
            t_out = teacher(glob)
        s_out = student(glob, masks)
        s_cls = [s_out[:, 0]]
        if c["local_crops"]:
            loc = [augment_batch(imgs, c["local_size"], (c["local_lo"], c["local_hi"]), 0.5, 0.0, c, g)
                   for _ in range(c["local_crops"])]
            s_cls.append(student(normalise(torch.cat(loc)))[:, 0])
        s_cls = torch.cat(s_cls)
        diag = step % args.log_every == 0 or step == total - 1
        loss_cls, loss_mim, d = obj.loss(s_cls, t_out[:, 0], s_out[:, 1:], t_out[:, 1:], masks, tau_t, diag)
        loss = loss_cls + loss_mim
        if c["koleo"] > 0:
            # w * KoLeo on the student [CLS] head rows of each global view, summed over the two
            # views (DINOv2's convention).
            loss_koleo = sum(koleo(v) for v in s_out[:, 0].chunk(2))
            loss = loss + c["koleo"] * loss_koleo
        opt.zero_grad()
        loss.backward()
        if c["clip"] > 0:
            for p in list(student.parameters()) + obj.parameters():
                if p.grad is not None:
                    torch.nn.utils.clip_grad_norm_([p], c["clip"])
        opt.step()
        with torch.no_grad():
            for ps_, pt_ in zip(student.parameters(), teacher.parameters()):
                pt_.mul_(m).add_(ps_.detach(), alpha=1 - m)
            obj.after_step(t_out[:, 0], t_out[:, 1:], m)
        if diag:
            tc = t_out[:, 0]
            d.update(step=step, loss_cls=loss_cls.item(), loss_mim=loss_mim.item(), lr=lr, momentum=m, tau_t=tau_t,
                     batch_cls_cos=offdiag_cos(tc), batch_rank=rank(tc), secs=time.time() - t0)
            print(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items()), flush=True)
            emit(d)
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < total:
            k_ = eval_knn()
            print(f"  knn {k_:.2f}", flush=True)
            emit(dict(step=step + 1, knn=k_))
    secs = time.time() - t0
    after = eval_knn()
    after_s = knn(features(student, xtr), ytr, features(student, xva), yva)
    rank_after = rank(features(teacher, xva))
    print(f"knn before {before:.2f} after {after:.2f} student {after_s:.2f} rank {rank_after:.2f} "
          f"steps {total} {secs:.0f}s config {' '.join(args.set)}", flush=True)
    emit(dict(step=total, knn=after, knn_student=after_s, feat_rank=rank_after, result=True, before=before,
              after=after, secs=secs, data=args.data, config=args.set))


if __name__ == "__main__":
    main()
