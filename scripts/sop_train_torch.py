#!/usr/bin/env python3
"""A compact PyTorch replica of `sop train` on Fashion-MNIST-sized data, for choosing the
hyper-parameters of small runs quickly on a CPU (OpenBLAS is ~30x faster than a WGSL
matmul on lavapipe) and for cross-checking the engine's training dynamics.

It follows docs/METHOD.md and the engine's defaults (src/train/config.rs): student and EMA teacher
ViT with an MLP head, block masks, the SOP objective of scripts/sop_objective_torch.py with
fresh random draws, AdamW with the cosine schedules, per-tensor clipping, FIFO banks, and
the weighted k-NN protocol on teacher backbone [CLS] features. Augmentations are a close
but not bit-identical port of src/data/augment.rs (grey images: crop, flip, brightness /
contrast jitter, blur, solarize).

Usage: sop_train_torch.py [--data assets/fashion-mnist] [--init CHECKPOINT] [--eval-every N] [--set key=value ...]
"""

import argparse
import gzip
import math
import os
import struct
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

DEFAULTS = dict(
    dim=64, depth=3, heads=2, patch=7, img=28, head_hidden=128, bottleneck=256, drop_path=0.0,
    batch=64, epochs=30, lr=1e-3, min_lr=1e-6, warmup_epochs=1, wd=0.04, wd_end=0.4, clip=3.0,
    m=0.95, m_end=1.0, cls_bank=2048, patch_bank=2048, cls_P=32, cls_E=5, cls_T=2, patch_P=128,
    patch_E=1, patch_T=1, smoothing=0.1, tau_s=0.1, tau_t=0.04, scale_lo=0.4, scale_hi=1.0,
    blur_lo=0.1, blur_hi=0.5, mask_ratio=0.3, mask_var=0.0, mim=1.0, seed=0, steps=0,
    jitter_p=0.8, solarize_p=0.2, local_crops=0, local_size=14, local_lo=0.05, local_hi=0.4,
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


def random_crop(img, size, scale, g):
    """Random resized crop (area fraction in `scale`, log-uniform aspect 3/4..4/3), bicubic."""
    h, w = img.shape[-2:]
    for _ in range(10):
        area = h * w * (scale[0] + (scale[1] - scale[0]) * torch.rand((), generator=g).item())
        aspect = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand((), generator=g).item())
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top = torch.randint(0, h - ch + 1, (), generator=g).item()
            left = torch.randint(0, w - cw + 1, (), generator=g).item()
            break
    else:
        top, left, ch, cw = 0, 0, h, w
    return TF.resized_crop(img, top, left, ch, cw, [size, size], interpolation=TF.InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)


def augment(img, size, scale, blur_p, solarize_p, c, g):
    x = random_crop(img, size, scale, g)
    if torch.rand((), generator=g) < 0.5:
        x = x.flip(-1)
    if torch.rand((), generator=g) < c["jitter_p"]:
        b = 1 + 0.4 * (2 * torch.rand((), generator=g).item() - 1)
        k = 1 + 0.4 * (2 * torch.rand((), generator=g).item() - 1)
        x = (x * b).clamp(0, 1)
        x = ((x - x.mean()) * k + x.mean()).clamp(0, 1)
    if torch.rand((), generator=g) < blur_p:
        sigma = c["blur_lo"] + (c["blur_hi"] - c["blur_lo"]) * torch.rand((), generator=g).item()
        ks = 2 * math.ceil(3 * sigma) + 1
        x = TF.gaussian_blur(x, [ks, ks], [sigma, sigma])
    if torch.rand((), generator=g) < solarize_p:
        x = torch.where(x >= 0.5, 1 - x, x)
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="assets/fashion-mnist")
    ap.add_argument("--set", nargs="*", default=[])
    ap.add_argument("--eval-every", type=int, default=0)
    ap.add_argument("--init", help="start from these weights (a `sop train --steps 0` checkpoint)")
    args = ap.parse_args()
    c = dict(DEFAULTS)
    for kv in args.set:
        k, _, v = kv.partition("=")
        if k not in DEFAULTS or not v:
            ap.error(f"--set {kv!r}: expected key=value with key one of {', '.join(sorted(DEFAULTS))}")
        c[k] = type(DEFAULTS[k])(v)
    torch.manual_seed(c["seed"])
    g = torch.Generator().manual_seed(c["seed"])
    xtr, ytr = load_split(args.data, "train")
    xva, yva = load_split(args.data, "t10k")
    grid = c["img"] // c["patch"]
    student, teacher = Vit(c, c["drop_path"]), Vit(c, 0.0)
    if args.init:
        student.load_state_dict(load_checkpoint(args.init))
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    decay = [p for n, p in student.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in student.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=0, betas=(0.9, 0.999))
    W = c["bottleneck"]
    cls_bank = F.normalize(torch.randn(c["cls_bank"], W, generator=g), dim=-1)
    patch_bank = F.normalize(torch.randn(c["patch_bank"], W, generator=g), dim=-1)
    cls_ptr = patch_ptr = 0
    B = c["batch"]
    per_epoch = len(xtr) // B
    total = c["steps"] or c["epochs"] * per_epoch
    sched_total = c["epochs"] * per_epoch
    lr_peak = c["lr"] * B / 256
    before = knn(features(teacher, xtr), ytr, features(teacher, xva), yva)
    print(f"knn before {before:.2f} rank {rank(features(teacher, xva)):.2f}", flush=True)
    t0 = time.time()
    order = torch.randperm(len(xtr), generator=g)
    for step in range(total):
        if (step % per_epoch) == 0 and step > 0:
            order = torch.randperm(len(xtr), generator=g)
        idx = order[(step % per_epoch) * B:(step % per_epoch + 1) * B]
        imgs = xtr[idx].float().unsqueeze(1) / 255
        views = [[], []]
        locals_ = [[] for _ in range(c["local_crops"])]
        for im in imgs:
            for v in range(2):
                views[v].append(augment(im, c["img"], (c["scale_lo"], c["scale_hi"]), [1.0, 0.1][v], [0.0, c["solarize_p"]][v], c, g))
            for l in range(c["local_crops"]):
                locals_[l].append(augment(im, c["local_size"], (c["local_lo"], c["local_hi"]), 0.5, 0.0, c, g))
        glob = normalise(torch.cat([torch.stack(v) for v in views]))  # (2B, 3, H, W)
        ratio = lambda: c["mask_ratio"] + c["mask_var"] * (2 * torch.rand((), generator=g).item() - 1)
        masks = torch.stack([block_mask(grid, ratio(), g) for _ in range(2 * B)])
        lr = cosine(step, sched_total, lr_peak, c["min_lr"], c["warmup_epochs"] * per_epoch)
        wd = cosine(step, sched_total, c["wd"], c["wd_end"])
        m = cosine(step, sched_total, c["m"], c["m_end"])
        opt.param_groups[0]["lr"] = opt.param_groups[1]["lr"] = lr
        opt.param_groups[0]["weight_decay"] = wd
        student.train()
        with torch.no_grad():
            t_out = teacher(glob)
        s_out = student(glob, masks)
        s_cls = [s_out[:, 0]]
        if c["local_crops"]:
            loc = normalise(torch.cat([torch.stack(v) for v in locals_]))
            s_cls.append(student(loc)[:, 0])
        s_cls = torch.cat(s_cls)
        n_views = 2 + c["local_crops"]
        loss_cls = 0.0
        for _ in range(c["cls_T"]):
            D, Y = prototypes(cls_bank, c["cls_P"], c["cls_E"], c["smoothing"], g)
            ps = assign(s_cls, D, Y, c["tau_s"]).chunk(n_views)
            with torch.no_grad():
                pt = assign(t_out[:, 0], D, Y, c["tau_t"]).chunk(2)
            terms = [ce(ps[i], pt[j]).mean() for i in range(n_views) for j in range(2) if i != j]
            loss_cls = loss_cls + sum(terms) / len(terms)
        loss_cls = loss_cls / c["cls_T"]
        loss_mim = torch.zeros(())
        if c["mim"] > 0:
            for _ in range(c["patch_T"]):
                D, Y = prototypes(patch_bank, c["patch_P"], c["patch_E"], c["smoothing"], g)
                ps = assign(s_out[:, 1:], D, Y, c["tau_s"])
                with torch.no_grad():
                    pt = assign(t_out[:, 1:], D, Y, c["tau_t"])
                per = (ce(ps, pt) * masks).sum(-1) / masks.sum(-1).clamp_min(1)
                loss_mim = loss_mim + per.mean()
            loss_mim = c["mim"] * loss_mim / c["patch_T"]
        loss = loss_cls + loss_mim
        opt.zero_grad()
        loss.backward()
        if c["clip"] > 0:
            for p in student.parameters():
                if p.grad is not None:
                    torch.nn.utils.clip_grad_norm_([p], c["clip"])
        opt.step()
        with torch.no_grad():
            for ps_, pt_ in zip(student.parameters(), teacher.parameters()):
                pt_.mul_(m).add_(ps_.detach(), alpha=1 - m)
            second = t_out[B:]
            rows = torch.arange(cls_ptr, cls_ptr + B) % len(cls_bank)
            cls_bank[rows] = second[:, 0]
            cls_ptr = (cls_ptr + B) % len(cls_bank)
            pick = torch.randint(0, grid * grid, (B,), generator=g)
            rows = torch.arange(patch_ptr, patch_ptr + B) % len(patch_bank)
            patch_bank[rows] = second[torch.arange(B), 1 + pick]
            patch_ptr = (patch_ptr + B) % len(patch_bank)
        if step % 20 == 0 or step == total - 1:
            print(f"step {step} loss_cls {loss_cls.item():.4f} loss_mim {loss_mim.item():.4f} lr {lr:.2e} "
                  f"bank_cos {(cls_bank @ cls_bank.t()).mean().item():.3f} {time.time() - t0:.0f}s", flush=True)
        if args.eval_every and (step + 1) % args.eval_every == 0:
            print(f"  knn {knn(features(teacher, xtr), ytr, features(teacher, xva), yva):.2f}", flush=True)
    after = knn(features(teacher, xtr), ytr, features(teacher, xva), yva)
    after_s = knn(features(student, xtr), ytr, features(student, xva), yva)
    print(f"knn before {before:.2f} after {after:.2f} student {after_s:.2f} rank {rank(features(teacher, xva)):.2f} "
          f"steps {total} {time.time() - t0:.0f}s config {' '.join(args.set)}", flush=True)


if __name__ == "__main__":
    main()
