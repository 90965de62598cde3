"""PIE-Bench's LPIPS over the background: the LPIPS spatial map of (output with the source's
pixels inside M_e, source), averaged over the pixels outside M_e.

The convolutions' receptive fields reach across M_e's border; with the source's own pixels
inside M_e on both sides (``base.source_inside``) they see only background changes, so an
output that leaves the background exact scores 0 exactly (the oracle). Difference from
PIE-Bench: its script zeroes M_e in both images (an artificial edge both sides see) and averages
LPIPS over the whole image, so the score depends on the mask's size; here the map is averaged
over background pixels only.

LPIPS is implemented here, the way the ``lpips`` package (v0.1) computes it with
``spatial=True``, so no extra package and no download is needed:

1. inputs in [-1, 1] (``x / 127.5 - 1``), then the scaling layer ``(x - shift) / scale`` with
   shift ``(-.030, -.088, -.188)`` and scale ``(.458, .448, .450)``;
2. backbone features at the package's taps (AlexNet relu1..relu5, VGG16 relu1_2..relu5_3,
   SqueezeNet 1.1 relu1..relu7), each unit-normalised over channels (``x / (||x|| + 1e-10)``);
3. per tap: squared difference, the learned 1x1 convolution without bias (``lin{k}``), bilinear
   upsampling (``align_corners=False``) to the input size; the sum over taps is the HxW map.

Inputs stay at their native resolution (LPIPS is fully convolutional); the network runs in float32.

``--lpips-weights`` (a local path, or ``owner/repo/file`` in the Hugging Face cache):

* one file (``.pth``/``.safetensors``) holding the whole state dict: ``net.slice*`` (the backbone,
  as the ``lpips`` package names it) + ``lin*.model.1.weight`` — e.g. ``torch.save(lpips.LPIPS(
  net='alex').state_dict(), 'lpips_alex.pth')``; or
* a folder holding the package's linear layers (``weights/v0.1/alex.pth``: ``lin*`` keys only)
  and torchvision's backbone weights (``alexnet-owt-7be5be79.pth``: ``features.*`` keys).

The network (alex, vgg, squeeze) is recognised from the linear layers' channel counts.
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["NETS", "build_lpips", "LPIPS", "mean_over"]

# net -> (torchvision constructor, feature slices [start, end), channels per tap)
NETS: Dict[str, Tuple[str, Tuple[Tuple[int, int], ...], Tuple[int, ...]]] = {
    "alex": ("alexnet", ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)), (64, 192, 384, 256, 256)),
    "vgg": ("vgg16", ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)), (64, 128, 256, 512, 512)),
    "squeeze": ("squeezenet1_1", ((0, 2), (2, 5), (5, 8), (8, 10), (10, 11), (11, 12), (12, 13)),
                (64, 128, 256, 384, 384, 512, 512)),
}
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10


def mean_over(values: np.ndarray, mask: np.ndarray) -> float:
    """Mean of ``values`` over ``mask`` in float64 (NaN when the mask is empty)."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        return math.nan
    return float(np.asarray(values, dtype=np.float64)[m].mean())


def build_lpips(net: str = "alex") -> Any:
    """The LPIPS module with random weights, parameter names as in the ``lpips`` package."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    if net not in NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; known: {', '.join(NETS)}")
    ctor, slices, chns = NETS[net]
    features = _features(net)
    for mod in features.modules():
        if isinstance(mod, nn.ReLU):
            mod.inplace = False

    class ScalingLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
            self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

        def forward(self, x: Any) -> Any:
            return (x - self.shift) / self.scale

    class Backbone(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.n_slices = len(slices)
            for k, (a, b) in enumerate(slices, start=1):
                s = nn.Sequential()
                for i in range(a, b):
                    s.add_module(str(i), features[i])
                setattr(self, f"slice{k}", s)

        def forward(self, x: Any) -> List[Any]:
            outs = []
            for k in range(1, self.n_slices + 1):
                x = getattr(self, f"slice{k}")(x)
                outs.append(x)
            return outs

    class NetLinLayer(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, stride=1, padding=0, bias=False))

        def forward(self, x: Any) -> Any:
            return self.model(x)

    class LPIPSNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net_type = net
            self.scaling_layer = ScalingLayer()
            self.net = Backbone()
            self.n_taps = len(chns)
            for k, c in enumerate(chns):
                setattr(self, f"lin{k}", NetLinLayer(c))

        def forward(self, a: Any, b: Any) -> Any:
            """a, b: (n, 3, H, W) in [-1, 1] -> (n, H, W) spatial LPIPS maps."""
            fa, fb = self.net(self.scaling_layer(a)), self.net(self.scaling_layer(b))
            total = None
            for k in range(self.n_taps):
                na = fa[k] / (torch.sqrt(torch.sum(fa[k] ** 2, dim=1, keepdim=True)) + EPS)
                nb = fb[k] / (torch.sqrt(torch.sum(fb[k] ** 2, dim=1, keepdim=True)) + EPS)
                d = getattr(self, f"lin{k}")((na - nb) ** 2)
                d = F.interpolate(d, size=a.shape[-2:], mode="bilinear", align_corners=False)
                total = d if total is None else total + d
            return total[:, 0]

    return LPIPSNet().eval()


def _features(net: str) -> Any:
    """torchvision's ``features`` of the backbone (same layer indices), without its classifier:
    AlexNet's and VGG16's are written out (their classifiers hold 58M / 120M parameters we would
    only initialise to throw away), SqueezeNet 1.1's come from torchvision."""
    from torch import nn

    if net == "alex":
        return nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
    if net == "vgg":
        layers: List[Any] = []
        c_in = 3
        for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU()]
                c_in = int(v)
        return nn.Sequential(*layers)
    import torchvision

    return torchvision.models.squeezenet1_1(weights=None).features


_LIN = re.compile(r"^lin(\d+)\.model\.1\.weight$")


def _net_from_lins(sd: Dict[str, Any]) -> Optional[str]:
    lins = sorted(((int(m.group(1)), v) for k, v in sd.items() for m in [_LIN.match(k)] if m))
    chns = tuple(int(v.shape[1]) for _, v in lins)
    for name, (_, _, c) in NETS.items():
        if chns == c:
            return name
    return None


def _backbone_keys(sd: Dict[str, Any], net: str) -> Dict[str, Any]:
    """torchvision ``features.{i}.*`` keys -> the package's ``net.slice{k}.{i}.*``."""
    _, slices, _ = NETS[net]
    out = {}
    for key, v in sd.items():
        m = re.match(r"^features\.(\d+)\.(.+)$", key)
        if not m:
            continue
        i = int(m.group(1))
        for k, (a, b) in enumerate(slices, start=1):
            if a <= i < b:
                out[f"net.slice{k}.{i}.{m.group(2)}"] = v
    return out


class LPIPS:
    """``maps(list of (a, b) uint8 HxWx3 pairs) -> list of HxW float32 LPIPS maps``."""

    def __init__(self, module: Any, device: Any = "cpu", batch_size: int = 8, details: Optional[Dict[str, Any]] = None):
        import torch

        self.module = module.eval().float().to(device)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.details = dict(details or {})

    @classmethod
    def load(cls, spec: str, device: Any = "cpu", local_files_only: bool = True) -> "LPIPS":
        """LPIPS from ``--lpips-weights`` (see the module docstring); ``ModelError`` when unusable."""
        import torch

        from refcoco_edit.models import ModelError, load_state_dict, model_details, resolve_weights_file

        what = "--lpips-weights"
        path, hub_id = resolve_weights_file(spec, what, local_files_only)
        files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file() and
                                                     p.suffix in (".pth", ".pt", ".safetensors", ".bin"))
        lin: Dict[str, Any] = {}
        backbone: Dict[str, Any] = {}
        full: Dict[str, Any] = {}
        for f in files:
            sd = load_state_dict(f, what)
            if any(k.startswith("net.slice") for k in sd):
                full.update({k: v for k, v in sd.items() if k.startswith("net.") or _LIN.match(k)})  # not lins.*: duplicates
            elif any(k.startswith("features.") for k in sd):
                backbone = sd
            elif any(_LIN.match(k) for k in sd):
                lin.update({k: v for k, v in sd.items() if _LIN.match(k)})
        if full:
            sd = full
        elif lin and backbone:
            net = _net_from_lins(lin)
            if net is None:
                raise ModelError(f"{what} {spec}: the linear layers match no LPIPS net ({', '.join(NETS)})")
            sd = {**_backbone_keys(backbone, net), **lin}
        elif lin:
            raise ModelError(f"{what} {spec}: holds LPIPS's linear layers only; give a folder holding them and the "
                               "torchvision backbone weights (e.g. alexnet-owt-7be5be79.pth), or one file with the "
                               "whole lpips.LPIPS state dict")
        else:
            raise ModelError(f"{what} {spec}: no LPIPS weights found (expected net.slice* + lin* keys, or a folder "
                               "with lin* and features.* files)")
        net = _net_from_lins(sd)
        if net is None:
            raise ModelError(f"{what} {spec}: the linear layers match no LPIPS net ({', '.join(NETS)})")
        module = build_lpips(net)
        want = {k for k in module.state_dict() if not k.startswith("scaling_layer.")}
        have = {k for k in sd if not k.startswith("scaling_layer.")}
        if want != have:
            missing, extra = sorted(want - have), sorted(have - want)
            raise ModelError(f"{what} {spec}: not an LPIPS-{net} state dict (missing {missing[:5]}, "
                               f"unexpected {extra[:5]})")
        try:
            module.load_state_dict({k: v.float() for k, v in sd.items() if k in want}, strict=False)
        except RuntimeError as e:
            raise ModelError(f"{what} {spec}: shapes differ from LPIPS-{net}: "
                               f"{(str(e).strip().splitlines() or [''])[-1].strip()}") from None
        details = model_details(spec, path, hub_id, net=net, version="0.1", spatial=True,
                                device=str(torch.device(device)), dtype="float32",
                                files=[f.name for f in files])
        return cls(module, device=device, details=details)

    def describe(self) -> Dict[str, Any]:
        return dict(self.details)

    def maps(self, pairs: Sequence[Tuple[np.ndarray, np.ndarray]]) -> List[np.ndarray]:
        """LPIPS spatial maps of (a, b) pairs (same-shape pairs are batched)."""
        import torch

        out: List[Optional[np.ndarray]] = [None] * len(pairs)
        by_shape: Dict[Tuple[int, ...], List[int]] = {}
        for i, (a, _) in enumerate(pairs):
            by_shape.setdefault(tuple(a.shape), []).append(i)

        def tensor(arrs: List[np.ndarray]) -> Any:
            x = torch.from_numpy(np.stack(arrs)).to(self.device).permute(0, 3, 1, 2).float()
            return x / 127.5 - 1.0

        for idx in by_shape.values():
            for k in range(0, len(idx), self.batch_size):
                part = idx[k:k + self.batch_size]
                with torch.inference_mode():
                    m = self.module(tensor([pairs[i][0] for i in part]), tensor([pairs[i][1] for i in part]))
                for i, mm in zip(part, m.cpu().numpy()):
                    out[i] = mm
        return out  # type: ignore[return-value]
