"""The classifier registry: every model is a trunk, a neck and a head, built by name.

    model = create_model("vgg", dropout=0.3)
    logits = model(x)          # x: normalised [B, 1, 28, 28] -> [B, num_classes]
    emb = model.features(x)    # penultimate features [B, model.feature_dim] (the metric stage embeds with these)
    fmap = model.trunk(x)      # feature map [B, model.trunk_channels, h, w] (detect / metric stages build on it)

Each family is one plain constructor function whose keyword arguments are its options (sizes, activation,
dropout, width); MODELS registers named variants of the families with default options, as timm does.
``model.name`` and ``model.options`` (every option resolved, num_classes included) record how a model was
built, so ``create_model(m.name, **m.options)`` rebuilds the same architecture from a checkpoint. The one
exception is the initial-weights option ``weights``: options record it as ``none`` (the checkpoint holds the
weights; rebuilding must not download or read the original file again) and ``model.pretrained`` keeps it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from fashionkit.errors import UserError

IMAGE_SIZE = 28  # Fashion-MNIST; the flattening necks (mlp, lenet, simple) are sized for it


# ----------------------------------------------------------------------------------------------------------
# building blocks

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU, "selu": nn.SELU, "tanh": nn.Tanh,
               "gelu": nn.GELU, "silu": nn.SiLU}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UserError(f"unknown activation {name!r}: choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def conv_bn_act(cin: int, cout: int, k: int, activation: str, stride: int = 1) -> nn.Sequential:
    # no conv bias: the BatchNorm shift that follows makes it redundant
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout),
                         make_activation(activation))


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


class Classifier(nn.Module):
    """trunk (image -> feature map) -> neck (feature map -> feature vector) -> head (Linear -> logits)."""

    def __init__(self, trunk: nn.Module, neck: nn.Module, head: nn.Linear, trunk_channels: int):
        super().__init__()
        self.trunk, self.neck, self.head = trunk, neck, head
        self.trunk_channels = trunk_channels  # C of the trunk's [B, C, h, w] output
        self.feature_dim = head.in_features  # D of features(x)
        self.num_classes = head.out_features
        self.name: str = ""  # set by create_model
        self.options: dict = {}
        self.pretrained: str = "none"  # where the initial weights came from (resnet18-transfer's `weights`)
        # whether the net takes images of other sizes (a global pool before the head); progressive resizing
        # trains only such nets on smaller images
        self.any_size = True

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.trunk(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ----------------------------------------------------------------------------------------------------------
# option checks: a bad value from a config or a hyperparameter search gets a one-line UserError, not a
# shape error deep inside torch

def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _ints(name: str, value, lo: int, hi: int) -> list[int]:
    """A list of lo..hi positive ints (an option like hidden=[256, 128])."""
    values = [value] if isinstance(value, int) else value
    ok = isinstance(values, list | tuple) and lo <= len(values) <= hi
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    _check(ok, f"option {name}={value!r}: give a list of {lo} to {hi} positive integers")
    return list(values)


def _fixed_size(model: Classifier) -> Classifier:
    model.any_size = False
    return model


def _common(activation: str, dropout: float, width: float) -> None:
    make_activation(activation)
    _check(isinstance(dropout, int | float) and 0 <= dropout < 1,
           f"option dropout={dropout!r}: give a number in [0, 1)")
    _check(isinstance(width, int | float) and width > 0,
           f"option width={width!r}: give a positive channel multiplier")


# ----------------------------------------------------------------------------------------------------------
# families

def mlp(num_classes: int = 10, *, hidden=(256, 128, 64), activation: str = "relu", dropout: float = 0.2,
        width: float = 1.0) -> Classifier:
    """Dense layers on the flattened image; the trunk is the identity (trunk_channels = 1)."""
    _common(activation, dropout, width)
    sizes = [IMAGE_SIZE * IMAGE_SIZE] + [scaled(h, width) for h in _ints("hidden", hidden, 1, 3)]
    neck = [nn.Flatten()]
    for d_in, d_out in zip(sizes, sizes[1:]):
        neck += [nn.Linear(d_in, d_out), make_activation(activation), nn.Dropout(dropout)]
    return _fixed_size(Classifier(nn.Identity(), nn.Sequential(*neck), nn.Linear(sizes[-1], num_classes),
                                  trunk_channels=1))


def lenet(num_classes: int = 10, *, activation: str = "relu", dropout: float = 0.5, width: float = 1.0) -> Classifier:
    """LeNet-style: three 5x5 conv + max-pool stages (16, 32, 64), then Dense128 and Dense256, each after
    dropout. 'same' padding lets three pools fit 28 -> 14 -> 7 -> 3; at width 1 that is 173,962 parameters."""
    _common(activation, dropout, width)
    c1, c2, c3 = (scaled(c, width) for c in (16, 32, 64))
    act = lambda: make_activation(activation)  # noqa: E731
    trunk = nn.Sequential(
        nn.Conv2d(1, c1, 5, padding=2), act(), nn.MaxPool2d(2),  # 28 -> 14
        nn.Conv2d(c1, c2, 5, padding=2), act(), nn.MaxPool2d(2),  # 14 -> 7
        nn.Conv2d(c2, c3, 5, padding=2), act(), nn.MaxPool2d(2),  # 7 -> 3 (floor)
    )
    neck = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(c3 * 3 * 3, 128), act(),
                         nn.Dropout(dropout), nn.Linear(128, 256), act())
    return _fixed_size(Classifier(trunk, neck, nn.Linear(256, num_classes), trunk_channels=c3))


def vgg(num_classes: int = 10, *, channels=(64, 128, 256), convs=2, fc_layers: int = 1, fc_dim: int = 512,
        activation: str = "relu", dropout: float = 0.4, width: float = 1.0, whiten: bool = False,
        pool_early: bool = False, pool_grid: int = 1) -> Classifier:
    """VGG-style: per stage `convs` 3x3 conv+BN+act at `channels[i] * width` (one number for every stage, or
    one per stage); max-pool 2 + dropout between stages; global max pool (the report's 7x7 max pool,
    size-independent); `fc_layers` - 1 hidden dense layers of `fc_dim` with dropout, then the Dense head.
    Defaults are the report's net: 1,147,722 parameters (no conv biases: BN follows every conv). `whiten`: the
    first convolution is frozen and, before training, set to whiten the data's 3x3 patches
    (``whiten_first_conv``). `pool_early`: each stage's max-pool comes straight after its last convolution, before
    that convolution's BatchNorm and activation (airbench's order). `pool_grid`: the neck max-pools the last
    feature map to a grid of this side (1: global) and flattens it, so the head sees where a feature is (2 on
    vgg-fast's default run: validation with TTA +0.08 points on the mean of six seeds, short of the +0.1 that would
    make it the default; BENCHMARKS.md step 52)."""
    _common(activation, dropout, width)
    # 28 -> 14 -> 7 -> 3: more than four stages would pool a 3x3 map away
    channels = [scaled(c, width) for c in _ints("channels", channels, 1, 4)]
    per_stage = [convs] * len(channels) if isinstance(convs, int) and not isinstance(convs, bool) else convs
    _check(isinstance(per_stage, list | tuple) and len(per_stage) == len(channels)
           and all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 4 for n in per_stage),
           f"option convs={convs!r}: give 1 to 4 convolutions per stage, as one number or one per stage "
           f"({len(channels)} stages)")
    _check(isinstance(fc_layers, int) and 1 <= fc_layers <= 3, f"option fc_layers={fc_layers!r}: give 1, 2 or 3")
    _ints("fc_dim", fc_dim, 1, 1)
    _check(isinstance(pool_early, bool), f"option pool_early={pool_early!r}: give true or false")
    stages, c_in = [], 1
    for i, c in enumerate(channels):
        stage = [conv_bn_act(c_in if j == 0 else c, c, 3, activation) for j in range(per_stage[i])]
        if i < len(channels) - 1:
            if pool_early:
                # max-pool commutes with a per-channel increasing map (BN with a positive scale in eval mode, then
                # ReLU), so this is the same kind of net, with the last BN + activation of the stage (and, after a
                # frozen whitening conv, the whole backward pass at full size) on a quarter of the pixels: vgg-fast's
                # default run takes 8-10% less wall clock, but scored lower on validation, so it is an option
                # (BENCHMARKS.md step 32)
                conv, norm, act = stage[-1]
                stage[-1] = nn.Sequential(conv, nn.MaxPool2d(2), norm, act)
            else:
                stage.append(nn.MaxPool2d(2))
            stage.append(nn.Dropout(dropout))
        stages.append(nn.Sequential(*stage))
        c_in = c
    _check(isinstance(whiten, bool), f"option whiten={whiten!r}: give true or false")
    if whiten:
        stages[0][0][0].weight.requires_grad_(False)  # trainers leave it out; whiten_first_conv fills it in
    _check(isinstance(pool_grid, int) and not isinstance(pool_grid, bool) and 1 <= pool_grid <= 3,
           f"option pool_grid={pool_grid!r}: give 1, 2 or 3")
    neck, d = [nn.AdaptiveMaxPool2d(pool_grid), nn.Flatten()], c_in * pool_grid ** 2
    for _ in range(fc_layers - 1):
        neck += [nn.Linear(d, fc_dim), make_activation(activation), nn.Dropout(dropout)]
        d = fc_dim
    return Classifier(nn.Sequential(*stages), nn.Sequential(*neck), nn.Linear(d, num_classes), trunk_channels=c_in)


@torch.no_grad()
def whiten_first_conv(model: Classifier, images: torch.Tensor, eps: float = 5e-4) -> None:
    """The airbench trick (Jordan 2024) for a grey image: set the trunk's first k x k convolution to a whitening
    filter bank of the training images' patches, a pair of filters +-v / sqrt(lambda + eps) per eigenvector v
    (eigenvalue lambda) of the patch covariance, largest first; filters past 2 k^2 keep their random init.
    Decorrelated, equal-variance inputs let the layers after it learn at a high rate from the first step.
    ``images``: normalised ``[N, 1, H, W]``."""
    conv = next(m for m in model.trunk.modules() if isinstance(m, nn.Conv2d))
    k = conv.kernel_size[0]
    patches = F.unfold(images.float(), k, padding=conv.padding).transpose(1, 2).reshape(-1, k * k)
    eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(patches.T.double()))  # ascending
    filters = (eigenvectors.T / (eigenvalues.clamp_min(0) + eps).sqrt().unsqueeze(1)).flip(0).float()
    filters = torch.cat([filters, -filters])[: conv.out_channels]
    conv.weight[: len(filters)] = filters.view(-1, 1, k, k).to(conv.weight)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv+BN, identity (or 1x1 conv+BN projection) shortcut, activation after the sum."""

    def __init__(self, c_in: int, c_out: int, stride: int, activation: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.act2 = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


def resnet(num_classes: int = 10, *, stages=(1, 1, 1, 1), activation: str = "relu", dropout: float = 0.0,
           width: float = 1.0) -> Classifier:
    """ResNet with basic blocks: `stages[i]` blocks at 64 * 2**i * width channels, stride 2 from the second
    stage on. The stem is one 3x3 conv without max-pool: a 28x28 image cannot afford ImageNet's 4x stem.
    Default (1, 1, 1, 1) is ResNet-10 (28 -> 28 -> 14 -> 7 -> 4)."""
    _common(activation, dropout, width)
    blocks = _ints("stages", stages, 3, 4)
    chans = [scaled(64 * 2**i, width) for i in range(len(blocks))]
    layers = [conv_bn_act(1, chans[0], 3, activation)]
    c_in = chans[0]
    for i, (n, c) in enumerate(zip(blocks, chans)):
        layers.append(nn.Sequential(*[BasicBlock(c_in if j == 0 else c, c, 2 if i > 0 and j == 0 else 1, activation)
                                      for j in range(n)]))
        c_in = c
    neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
    return Classifier(nn.Sequential(*layers), neck, nn.Linear(c_in, num_classes), trunk_channels=c_in)


class DenseLayer(nn.Module):
    """DenseNet-BC layer: BN-act-Conv1x1(4k)-BN-act-Conv3x3(k); its k new maps are concatenated to its input."""

    def __init__(self, c_in: int, growth: int, activation: str):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in), make_activation(activation), nn.Conv2d(c_in, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), make_activation(activation),
            nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


def densenet(num_classes: int = 10, *, blocks=(6, 12, 16), growth: int = 12, compression: float = 0.5,
             activation: str = "relu", dropout: float = 0.0, width: float = 1.0) -> Classifier:
    """DenseNet-BC: a 3x3 stem conv to 2k maps, `blocks[i]` bottleneck dense layers per block (growth rate
    k = growth * width), between blocks a transition BN-act-Conv1x1 (keeping `compression` of the maps) +
    avg-pool 2, and a final BN-act before global average pooling."""
    _common(activation, dropout, width)
    layers_per_block = _ints("blocks", blocks, 3, 4)
    _check(isinstance(compression, int | float) and 0 < compression <= 1,
           f"option compression={compression!r}: give a fraction in (0, 1]")
    k = scaled(_ints("growth", growth, 1, 1)[0], width)
    c = 2 * k
    layers = [nn.Conv2d(1, c, 3, padding=1, bias=False)]
    for i, n in enumerate(layers_per_block):
        for _ in range(n):
            layers.append(DenseLayer(c, k, activation))
            c += k
        if i < len(layers_per_block) - 1:
            c_out = max(1, int(c * compression))
            layers += [nn.Sequential(nn.BatchNorm2d(c), make_activation(activation), nn.Conv2d(c, c_out, 1, bias=False),
                                     nn.AvgPool2d(2))]
            c = c_out
    # the pre-activation layout leaves the last block's output un-normalised: DenseNet closes with BN-act
    layers += [nn.BatchNorm2d(c), make_activation(activation)]
    neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
    return Classifier(nn.Sequential(*layers), neck, nn.Linear(c, num_classes), trunk_channels=c)


class InceptionModule(nn.Module):
    """GoogLeNet module: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max-pool -> 1x1 branches, concatenated.
    Every conv has BN (as in Inception v2): without it the small net trains slowly."""

    def __init__(self, c_in: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int, activation: str):
        super().__init__()
        self.b1 = conv_bn_act(c_in, c1, 1, activation)
        self.b3 = nn.Sequential(conv_bn_act(c_in, c3r, 1, activation), conv_bn_act(c3r, c3, 3, activation))
        self.b5 = nn.Sequential(conv_bn_act(c_in, c5r, 1, activation), conv_bn_act(c5r, c5, 5, activation))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn_act(c_in, cp, 1, activation))
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


# GoogLeNet's modules 3a, 3b, 4a, 4b and 5a at half width: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj);
# None marks a 2x max-pool (28 -> 14 -> 7)
_INCEPTION_PLAN = [(32, 48, 64, 8, 16, 16), (64, 64, 96, 16, 48, 32), None,
                   (96, 48, 104, 8, 24, 32), (80, 56, 112, 12, 32, 32), None,
                   (128, 80, 160, 16, 64, 64)]


def inception(num_classes: int = 10, *, activation: str = "relu", dropout: float = 0.4,
              width: float = 1.0) -> Classifier:
    """A small GoogLeNet: a 3x3 stem conv (64), five inception modules over three resolutions, global average
    pooling and dropout before the head, as in GoogLeNet."""
    _common(activation, dropout, width)
    c = scaled(64, width)
    layers = [conv_bn_act(1, c, 3, activation)]
    for spec in _INCEPTION_PLAN:
        if spec is None:
            layers.append(nn.MaxPool2d(2))
            continue
        module = InceptionModule(c, *(scaled(s, width) for s in spec), activation)
        layers.append(module)
        c = module.out_channels
    neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
    return Classifier(nn.Sequential(*layers), neck, nn.Linear(c, num_classes), trunk_channels=c)


def simple(num_classes: int = 10, *, channels=(32,), dense: int = 100, activation: str = "relu",
           dropout: float = 0.0, width: float = 1.0) -> Classifier:
    """Small baseline CNNs: per entry of `channels` a 3x3 'same' conv + act + max-pool 2, then one dense
    layer and the head. One conv of 32 with Dense100 is the classic baseline; the fan-in/fan-out variants
    stack three convs whose channels shrink or grow with depth."""
    _common(activation, dropout, width)
    channels = [scaled(c, width) for c in _ints("channels", channels, 1, 4)]
    dense = _ints("dense", dense, 1, 1)[0]
    layers, c_in, size = [], 1, IMAGE_SIZE
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, padding=1), make_activation(activation), nn.MaxPool2d(2)]
        c_in, size = c, size // 2
    neck = nn.Sequential(nn.Flatten(), nn.Linear(c_in * size * size, dense), make_activation(activation),
                         nn.Dropout(dropout))
    return _fixed_size(Classifier(nn.Sequential(*layers), neck, nn.Linear(dense, num_classes), trunk_channels=c_in))


class GrayToImageNet(nn.Module):
    """[B, 1, 28, 28] normalised with Fashion-MNIST statistics -> [B, 3, size, size] normalised with ImageNet's,
    the input torchvision's pretrained weights expect."""

    def __init__(self, size: int):
        super().__init__()
        from fashionkit.data.loader import MEAN, STD

        self.size, self.mean, self.std = size, MEAN, STD
        # buffers, not parameters: they move with .to(device) and are never trained
        self.register_buffer("in_mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = x * self.std + self.mean  # back to [0, 1]
        return (x.expand(-1, 3, -1, -1) - self.in_mean) / self.in_std


def _resnet18_state_dict(weights: str) -> dict | None:
    """The ImageNet state dict to start from, or None for random init. `weights`: none, DEFAULT or a path."""
    if weights is None or str(weights).lower() == "none":
        return None
    if str(weights).upper() == "DEFAULT":
        from torchvision.models import ResNet18_Weights

        try:
            return ResNet18_Weights.DEFAULT.get_state_dict(progress=False)
        except Exception as e:  # URLError, OSError, HTTP errors: anything that stops the download
            raise UserError(f"resnet18-transfer: could not download torchvision's ImageNet weights ({e}); "
                            "pass weights=PATH to a local resnet18 state dict, or weights=none") from None
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"resnet18-transfer: weights file {weights} not found; pass a resnet18 state dict path, "
                        "DEFAULT or none") from None
    except Exception as e:
        raise UserError(f"resnet18-transfer: cannot read weights file {weights} ({e}); "
                        "save it with torch.save(model.state_dict(), path)") from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    _check(isinstance(state, dict), f"resnet18-transfer: {weights} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def resnet18_transfer(num_classes: int = 10, *, size: int = 112, weights: str = "none",
                      dropout: float = 0.0) -> Classifier:
    """torchvision's resnet18 with a new head. The trunk upsamples the gray 28x28 image to `size` and repeats
    it to 3 channels (at 28 px layer4 would see a 1x1 map). `weights`: none (random init), DEFAULT
    (torchvision's ImageNet weights, downloaded) or a PATH to a resnet18 state dict; its fc is not used."""
    from torchvision.models import resnet18

    _common("relu", dropout, 1.0)
    _check(isinstance(size, int) and size >= 32, f"option size={size!r}: give an image size of at least 32 pixels")
    net = resnet18(weights=None)
    state = _resnet18_state_dict(weights)
    if state is not None:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the 1000-way ImageNet head
        try:
            missing, unexpected = net.load_state_dict(state, strict=False)
        except RuntimeError as e:  # a tensor of the wrong shape
            missing, unexpected = [str(e).splitlines()[-1].strip()], []
        missing = [k for k in missing if not k.startswith("fc.")]
        _check(not missing and not unexpected,
               f"resnet18-transfer: {weights} is not a torchvision resnet18 state dict "
               f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    trunk = nn.Sequential(GrayToImageNet(size), net.conv1, net.bn1, net.relu, net.maxpool,
                          net.layer1, net.layer2, net.layer3, net.layer4)
    neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
    # it resizes every input to `size` itself: a smaller training image would only be blurred
    return _fixed_size(Classifier(trunk, neck, nn.Linear(net.fc.in_features, num_classes),
                                  trunk_channels=net.fc.in_features))


# ----------------------------------------------------------------------------------------------------------
# the registry

@dataclass(frozen=True)
class ModelSpec:
    family: Callable[..., Classifier]
    defaults: dict = field(default_factory=dict)
    description: str = ""

    def option_names(self) -> list[str]:
        return [p for p in inspect.signature(self.family).parameters if p != "num_classes"]


MODELS: dict[str, ModelSpec] = {}


def register(name: str, family: Callable[..., Classifier], description: str, **defaults) -> None:
    MODELS[name] = ModelSpec(family, defaults, description)


register("mlp", mlp, "dense net on the flat image, hidden 256-128-64")
register("lenet", lenet, "LeNet-style: 3 conv5x5+pool (16-32-64), dropout + Dense128, Dense256")
register("simple", simple, "baseline: one conv3x3 (32) + max-pool, Dense100")
register("simple-fanin", simple, "3 conv3x3+pool, channels shrinking 64-32-16, LeakyReLU, Dense128",
         channels=[64, 32, 16], dense=128, activation="leaky_relu", dropout=0.25)
register("simple-fanout", simple, "3 conv3x3+pool, channels growing 16-32-64, LeakyReLU, Dense128",
         channels=[16, 32, 64], dense=128, activation="leaky_relu", dropout=0.25)
# vgg-small is the fast default: at this size dropout 0.4 between stages under-fits a 25-epoch run (measured:
# 92.8% vs 94.2% test accuracy with 0.1, see BENCHMARKS.md).
register("vgg-small", vgg, "VGG-style, conv pairs at 32-64-128 + BN, global max pool, dropout 0.1",
         channels=[32, 64, 128], dropout=0.1)
# vgg-fast is the time-to-accuracy default (BENCHMARKS.md, "Time to accuracy"): a frozen whitening conv on
# the 28 px image, then one stage of two convs per halving, no dropout (a 16-epoch run under-fits rather than
# over-fits), about 40% of vgg-small's FLOPs
register("vgg-fast", vgg, "VGG-style for time to accuracy: whitened frozen conv 24, conv pairs at 48-96 + BN",
         channels=[24, 48, 96], convs=[1, 2, 2], dropout=0.0, whiten=True)
# vgg-fast-wide is vgg-fast at twice the width (4x the FLOPs) for the 60-minute CPU recipe (BENCHMARKS.md, "Best CPU
# recipe within 60 minutes"): with a longer run the width pays where vgg-fast's 157k parameters saturate
register("vgg-fast-wide", vgg, "vgg-fast at twice the width: whitened frozen conv 48, conv pairs at 96-192 + BN",
         channels=[48, 96, 192], convs=[1, 2, 2], dropout=0.0, whiten=True)
register("vgg", vgg, "VGG-style, conv pairs at 64-128-256 + BN, global max pool (the report's, 1.15M)")
register("vgg-large", vgg, "VGG-style, conv pairs at 96-192-384 + BN, global max pool, Dense512 + dropout",
         width=1.5, fc_layers=2)
register("resnet", resnet, "ResNet-10: basic blocks 1-1-1-1 at 64-128-256-512")
register("resnet-wide", resnet, "wide ResNet: basic blocks 1-1-1 at 128-256-512", stages=[1, 1, 1], width=2.0)
register("densenet", densenet, "DenseNet-BC, 3 dense blocks 6-12-16, growth 12")
register("densenet4", densenet, "DenseNet-BC, 4 dense blocks 6-12-24-16, growth 12", blocks=[6, 12, 24, 16])
register("inception", inception, "small GoogLeNet: 5 inception modules (1x1, 3x3, 5x5, pool branches)")
register("resnet18-transfer", resnet18_transfer,
         "torchvision resnet18, input resized to 112 px and repeated to RGB, new 10-way head")


def _plain(value):
    """Tuples -> lists, so options survive a YAML/JSON round trip unchanged."""
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


def create_model(name: str, num_classes: int = 10, **options) -> Classifier:
    """Build the registered model `name`; `options` override its defaults (see MODELS[name].option_names())."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    spec = MODELS[name]
    valid = spec.option_names()
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise UserError(f"unknown option {unknown[0]!r} for model {name}: valid options are {', '.join(valid)}")
    _check(isinstance(num_classes, int) and num_classes >= 2, f"num_classes={num_classes!r}: give an integer >= 2")
    bound = inspect.signature(spec.family).bind(num_classes=num_classes, **{**spec.defaults, **options})
    bound.apply_defaults()
    model = spec.family(**bound.arguments)
    # every option resolved, so a checkpoint rebuilds this architecture even if the defaults change later;
    # initial weights are not architecture: a checkpoint brings its own, and rebuilding must not need the
    # network or the original file again, so options say weights=none and `pretrained` says where they came from
    options = {k: _plain(v) for k, v in bound.arguments.items()}
    model.pretrained = options.get("weights", "none")
    if "weights" in options:
        options["weights"] = "none"
    model.name, model.options = name, options
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_mflops(model: nn.Module) -> float:
    """Forward MFLOPs for one 28x28 image, by torch's FlopCounterMode: matmuls and convolutions only, a
    multiply-add counted as 2 FLOPs (BN, activations and pooling are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE, device=next(model.parameters()).device))
    model.train(was_training)
    return counter.get_total_flops() / 1e6


def model_table() -> list[dict]:
    """One row per registered model at its default options: name, params, mflops, description."""
    rows = []
    for name, spec in MODELS.items():
        model = create_model(name)
        rows.append({"name": name, "params": count_params(model), "mflops": round(count_mflops(model), 2),
                     "description": spec.description})
    return rows
