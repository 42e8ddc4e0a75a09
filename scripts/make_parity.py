#!/usr/bin/env python3
"""Regenerate the PyTorch parity vectors of tests/parity from PyTorch itself.

Usage:
    python scripts/make_parity.py --out DIR [--from tests/parity] [--seed 0]

Reads every `.safetensors` file of `--from` (the repository's tests/parity by
default), takes its settings from the metadata (`op`, then the op's own keys,
as docs/parity.md lists them) and its shapes from its tensors, draws new
inputs from a generator seeded by the file name, computes PyTorch's outputs
and gradients in float64, and writes a file of the same name, metadata and
shapes to `--out` (never over the source). The random draws differ from the
originals; what is tested does not. Then run the parity test on them:

    CNN_PARITY_DIR=DIR cargo test --release --test parity

Needs torch, torchvision (the augmentation ops), timm (ConvNeXt), safetensors
and numpy: `pip install torch torchvision timm safetensors numpy`. Made and
checked with the versions docs/parity.md names.
"""
import argparse
import hashlib
import json
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

torch.set_default_dtype(torch.float64)


def generator(name, seed):
    """A torch generator seeded by the file name: each file its own draws."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little"))
    return g


def randn(g, shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def uniform(g, shape, lo=0.0, hi=1.0):
    return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=torch.float64)


def setting(meta, key, default=None):
    """A metadata value: JSON where it parses (lists, numbers, booleans), else the string."""
    if key not in meta:
        return default
    raw = meta[key]
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def pair(meta, key, default):
    v = setting(meta, key, default)
    return list(v) if isinstance(v, list) else [v, v]


def flag(meta, key, default=False):
    v = setting(meta, key, default)
    return v if isinstance(v, bool) else str(v).lower() == "true"


def leaf(t):
    return t.detach().clone().requires_grad_(True)


# --- ops: each takes (meta, shapes, g) and returns {name: tensor} ----------


def op_activation(fn):
    def make(meta, shapes, g):
        x = leaf(randn(g, shapes["x"]))
        y = fn(meta, x)
        dy = randn(g, shapes["dy"])
        y.backward(dy)
        return {"x": x, "y": y, "dy": dy, "dx": x.grad}

    return make


ACTIVATIONS = {
    "relu": lambda m, x: F.relu(x),
    "leaky_relu": lambda m, x: F.leaky_relu(x, float(setting(m, "negative_slope", 0.01))),
    "sigmoid": lambda m, x: torch.sigmoid(x),
    "tanh": lambda m, x: torch.tanh(x),
    "gelu": lambda m, x: F.gelu(x, approximate=setting(m, "approximate", "none")),
}


def op_conv2d(meta, shapes, g):
    x = leaf(randn(g, shapes["x"]))
    w = leaf(randn(g, shapes["weight"]) * 0.3)
    b = leaf(randn(g, shapes["bias"])) if "bias" in shapes else None
    y = F.conv2d(
        x,
        w,
        b,
        stride=pair(meta, "stride", 1),
        padding=pair(meta, "padding", 0),
        dilation=pair(meta, "dilation", 1),
        groups=int(setting(meta, "groups", 1)),
    )
    dy = randn(g, shapes["dy"])
    y.backward(dy)
    out = {"x": x, "weight": w, "y": y, "dy": dy, "dx": x.grad, "dweight": w.grad}
    if b is not None:
        out.update(bias=b, dbias=b.grad)
    return out


def op_pool(kind):
    def make(meta, shapes, g):
        x = leaf(randn(g, shapes["x"]))
        if kind == "global":
            y = F.adaptive_avg_pool2d(x, 1)
        else:
            kernel = pair(meta, "kernel", 2)
            stride = pair(meta, "stride", kernel)
            padding = pair(meta, "padding", 0)
            if kind == "max":
                y = F.max_pool2d(x, kernel, stride, padding)
            else:
                y = F.avg_pool2d(
                    x, kernel, stride, padding,
                    count_include_pad=flag(meta, "count_include_pad", True),
                )
        dy = randn(g, shapes["dy"])
        y.backward(dy)
        return {"x": x, "y": y, "dy": dy, "dx": x.grad}

    return make


def op_linear(meta, shapes, g):
    x, w, b = leaf(randn(g, shapes["x"])), leaf(randn(g, shapes["weight"])), leaf(randn(g, shapes["bias"]))
    y = F.linear(x, w, b)
    dy = randn(g, shapes["dy"])
    y.backward(dy)
    return {"x": x, "weight": w, "bias": b, "y": y, "dy": dy, "dx": x.grad, "dweight": w.grad, "dbias": b.grad}


def op_cross_entropy(meta, shapes, g):
    n, classes = shapes["logits"]
    logits = leaf(randn(g, shapes["logits"]) * 2)
    target = torch.randint(0, classes, (n,), generator=g)
    loss = F.cross_entropy(logits, target, label_smoothing=float(setting(meta, "label_smoothing", 0.0)))
    loss.backward()
    return {"logits": logits, "target": target, "loss": loss.reshape(1), "dlogits": logits.grad}


def norm_case(shapes, g, fn):
    x = leaf(randn(g, shapes["x"]) * 1.5 + 0.3)
    w = leaf(1 + 0.2 * randn(g, shapes["weight"]))
    b = leaf(0.2 * randn(g, shapes["bias"]))
    y = fn(x, w, b)
    dy = randn(g, shapes["dy"])
    y.backward(dy)
    return {"x": x, "weight": w, "bias": b, "y": y, "dy": dy, "dx": x.grad, "dweight": w.grad, "dbias": b.grad}


def op_batch_norm2d(meta, shapes, g):
    c = shapes["weight"][0]
    mean_before = 0.1 * randn(g, [c])
    var_before = uniform(g, [c], 0.5, 1.5)
    rm, rv = mean_before.clone(), var_before.clone()
    train = setting(meta, "mode", "train") == "train"
    eps, momentum = float(setting(meta, "eps", 1e-5)), float(setting(meta, "momentum", 0.1))
    out = norm_case(shapes, g, lambda x, w, b: F.batch_norm(x, rm, rv, w, b, train, momentum, eps))
    out.update(
        running_mean_before=mean_before, running_var_before=var_before,
        running_mean_after=rm, running_var_after=rv,
    )
    return out


def op_group_norm(meta, shapes, g):
    groups, eps = int(setting(meta, "groups", 1)), float(setting(meta, "eps", 1e-5))
    return norm_case(shapes, g, lambda x, w, b: F.group_norm(x, groups, w, b, eps))


def op_instance_norm2d(meta, shapes, g):
    eps = float(setting(meta, "eps", 1e-5))
    return norm_case(shapes, g, lambda x, w, b: F.instance_norm(x, weight=w, bias=b, eps=eps))


def op_layer_norm(meta, shapes, g):
    normalized, eps = list(setting(meta, "normalized_shape")), float(setting(meta, "eps", 1e-5))
    return norm_case(shapes, g, lambda x, w, b: F.layer_norm(x, normalized, w, b, eps))


def op_layer_norm2d(meta, shapes, g):
    eps = float(setting(meta, "eps", 1e-6))

    def ln2d(x, w, b):  # timm's LayerNorm2d: over C for each (n, h, w)
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, eps)
        return y.permute(0, 3, 1, 2)

    return norm_case(shapes, g, ln2d)


def op_optimizer(kind):
    def make(meta, shapes, g):
        steps = shapes["grads"][0]
        before = randn(g, shapes["param_before"])
        grads = randn(g, shapes["grads"])
        p = nn.Parameter(before.clone())
        lr, wd = float(setting(meta, "lr")), float(setting(meta, "weight_decay", 0.0))
        if kind == "sgd":
            opt = torch.optim.SGD(
                [p], lr=lr, momentum=float(setting(meta, "momentum", 0.0)),
                dampening=float(setting(meta, "dampening", 0.0)),
                nesterov=flag(meta, "nesterov"), weight_decay=wd,
            )
        else:
            cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
            opt = cls(
                [p], lr=lr, betas=(float(setting(meta, "beta1")), float(setting(meta, "beta2"))),
                eps=float(setting(meta, "eps")), weight_decay=wd,
            )
        after = []
        for i in range(steps):
            p.grad = grads[i].clone()
            opt.step()
            after.append(p.detach().clone())
        return {"param_before": before, "grads": grads, "params_after_each_step": torch.stack(after)}

    return make


def op_warmup_cosine(meta, shapes, g):
    base, total = float(setting(meta, "base_lr")), int(setting(meta, "total_steps"))
    warmup, start = int(setting(meta, "warmup_steps")), float(setting(meta, "warmup_start_factor"))
    min_lr = float(setting(meta, "min_lr"))
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=base)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=start, total_iters=warmup),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=min_lr),
        ],
        milestones=[warmup],
    )
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return {"lr": torch.tensor(lrs)}


def op_augment(kind):
    def make(meta, shapes, g):
        import torchvision.transforms.v2.functional as TF

        image = uniform(g, shapes["image"])
        if kind == "hflip":
            out = TF.horizontal_flip(image)
        elif kind == "brightness":
            out = TF.adjust_brightness(image, float(setting(meta, "factor")))
        elif kind == "contrast":
            out = TF.adjust_contrast(image, float(setting(meta, "factor")))
        elif kind == "saturation":
            out = TF.adjust_saturation(image, float(setting(meta, "factor")))
        elif kind == "hue":
            out = TF.adjust_hue(image, float(setting(meta, "factor")))
        elif kind == "normalize":
            out = TF.normalize(image, list(setting(meta, "mean")), list(setting(meta, "std")))
        elif kind == "erase":
            out = TF.erase(
                image, int(setting(meta, "top")), int(setting(meta, "left")),
                int(setting(meta, "height")), int(setting(meta, "width")),
                torch.tensor(float(setting(meta, "value"))),
            )
        elif kind == "pad_crop":
            padded = TF.pad(image, [int(setting(meta, "pad"))], fill=float(setting(meta, "fill")))
            out = TF.crop(
                padded, int(setting(meta, "top")), int(setting(meta, "left")),
                int(setting(meta, "height")), int(setting(meta, "width")),
            )
        elif kind == "resized_crop":
            out = TF.resized_crop(
                image, int(setting(meta, "top")), int(setting(meta, "left")),
                int(setting(meta, "height")), int(setting(meta, "width")),
                list(setting(meta, "size")),
                interpolation=TF.InterpolationMode.BILINEAR, antialias=flag(meta, "antialias"),
            )
        else:
            raise ValueError(kind)
        return {"image": image, "out": out}

    return make


# --- whole models ------------------------------------------------------------

# torchvision's BasicBlock with its keys (conv1, bn1, conv2, bn2, downsample.0/1):
# the speed comparison's block (benches/torch/torch_resnet.py), the same module.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benches", "torch"))
from torch_resnet import Block  # noqa: E402


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (6n + 2) with torchvision's keys, as cnn_models::cifar_resnet."""

    def __init__(self, depth, widths, num_classes):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(Block(cin, w, 2 if i > 0 and j == 0 else 1))
                cin = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def op_model(meta, shapes, g):
    arch = meta["arch"]
    torch.manual_seed(int(generator(arch, 0).initial_seed() % (2**31)))
    if arch == "convnext":
        import timm.models.convnext as cx

        net = cx.ConvNeXt(
            in_chans=shapes["input"][1],
            num_classes=int(setting(meta, "num_classes", 10)),
            depths=list(setting(meta, "depths")),
            dims=list(setting(meta, "dims")),
            conv_mlp=flag(meta, "conv_mlp"),
            drop_path_rate=0.0,
        ).double()
        with torch.no_grad():
            for name, p in net.named_parameters():
                if name.endswith("gamma"):  # layer scale near 0.5, so every block counts
                    p.copy_(0.5 + 0.05 * randn(g, p.shape))
    else:
        depth = int(arch.removeprefix("resnet").removesuffix("_cifar"))
        classes = shapes["param.fc.weight"][0]
        net = CifarResNet(depth, (16, 32, 64), classes).double()
        with torch.no_grad():  # non-trivial BatchNorm affines and running statistics
            for name, t in net.state_dict().items():
                if name.endswith(("bn1.weight", "bn2.weight", "downsample.1.weight")) or name == "bn1.weight":
                    t.copy_(1 + 0.2 * randn(g, t.shape))
                elif name.endswith(("bn1.bias", "bn2.bias", "downsample.1.bias")):
                    t.copy_(0.1 * randn(g, t.shape))
                elif name.endswith("running_mean"):
                    t.copy_(0.1 * randn(g, t.shape))
                elif name.endswith("running_var"):
                    t.copy_(uniform(g, t.shape, 0.5, 1.5))
    params = {f"param.{k}": v.detach().clone() for k, v in net.state_dict().items()}
    missing = [k for k in shapes if k.startswith("param.") and k not in params]
    if missing:
        raise ValueError(f"{arch}: the file has keys the model lacks: {missing[:5]}")
    x = randn(g, shapes["input"])
    classes = shapes["logits_train"][1]
    target = torch.randint(0, classes, (shapes["input"][0],), generator=g)
    net.train()
    logits = net(x)
    loss = F.cross_entropy(logits, target)
    loss.backward()
    out = {"input": x, "target": target, "logits_train": logits, "loss": loss.reshape(1)}
    out.update(params)
    out.update({f"grad.{k}": p.grad for k, p in net.named_parameters()})
    if any(k.startswith("after_train.") for k in shapes):
        out.update({
            f"after_train.{k}": v.detach().clone()
            for k, v in net.state_dict().items() if k.endswith(("running_mean", "running_var"))
        })
    net.eval()
    with torch.no_grad():
        out["logits_eval"] = net(x)
    return out


OPS = {
    "conv2d": op_conv2d,
    "max_pool2d": op_pool("max"),
    "avg_pool2d": op_pool("avg"),
    "global_avg_pool2d": op_pool("global"),
    "linear": op_linear,
    "cross_entropy": op_cross_entropy,
    "batch_norm2d": op_batch_norm2d,
    "group_norm": op_group_norm,
    "instance_norm2d": op_instance_norm2d,
    "layer_norm": op_layer_norm,
    "layer_norm2d": op_layer_norm2d,
    "sgd": op_optimizer("sgd"),
    "adam": op_optimizer("adam"),
    "adamw": op_optimizer("adamw"),
    "warmup_cosine": op_warmup_cosine,
    "model": op_model,
    **{name: op_activation(fn) for name, fn in ACTIVATIONS.items()},
    **{name: op_augment(name) for name in [
        "hflip", "brightness", "contrast", "saturation", "hue", "normalize", "erase", "pad_crop", "resized_crop",
    ]},
}


def regenerate(path, out_dir, seed):
    name = os.path.basename(path)
    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata() or {})
        shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    op = meta.get("op")
    if op not in OPS:
        raise ValueError(f"{name}: unknown op {op!r}")
    tensors = OPS[op](meta, shapes, generator(name, seed))
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    wrong = {k: (list(v.shape), shapes.get(k)) for k, v in tensors.items() if list(v.shape) != shapes.get(k)}
    extra, missing = set(tensors) - set(shapes), set(shapes) - set(tensors)
    if wrong or extra or missing:
        raise ValueError(f"{name}: shapes {wrong}, extra {sorted(extra)}, missing {sorted(missing)}")
    meta["generator"] = f"scripts/make_parity.py seed {seed}, torch {torch.__version__}"
    save_file(tensors, os.path.join(out_dir, name), metadata=meta)
    return op


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="src", default=os.path.join(here, "..", "tests", "parity"))
    ap.add_argument("--out", required=True, help="where the regenerated files go (not the source)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if os.path.realpath(args.src) == os.path.realpath(args.out):
        sys.exit("error: --out must not be the source directory")
    os.makedirs(args.out, exist_ok=True)
    files = sorted(f for f in os.listdir(args.src) if f.endswith(".safetensors"))
    failed = []
    for i, f in enumerate(files, 1):
        try:
            op = regenerate(os.path.join(args.src, f), args.out, args.seed)
            print(f"[{i}/{len(files)}] {f}: {op}")
        except Exception as e:  # one bad file must not hide the others
            failed.append(f)
            print(f"error: {f}: {e}", file=sys.stderr)
    versions = f"torch {torch.__version__}"
    try:
        import torchvision, timm
        versions += f", torchvision {torchvision.__version__}, timm {timm.__version__}"
    except ImportError:
        pass
    if failed:
        sys.exit(f"{len(failed)} of {len(files)} files failed: {', '.join(failed)}")
    print(f"{len(files)} files regenerated into {args.out} ({versions}); "
          f"check them: CNN_PARITY_DIR={args.out} cargo test --release --test parity")


if __name__ == "__main__":
    main()
