"""The detection model: a YOLO backbone that starts from a trained classifier's convolutional trunk.

The classifier (a VGG-family ``classify`` run) saw normalised grey 28x28 items; the detector sees RGB frames in
[0, 1] with items 1.5-6x that size. ``detector_yaml`` writes an ultralytics model YAML whose backbone repeats the
classifier's trunk layer for layer (Conv = Conv2d + BN + act with the same shapes, the same max-pools, the
classifier's activation for the whole net) behind a stem that shrinks the frame first:

* ``stem=2``: the trunk's first convolution becomes a ``Focus`` layer (2x2 space-to-depth, then the
  conv on 12 channels). Spreading the classifier's 1-channel kernel evenly over the 12 channels makes it, at
  initialisation, exactly the classifier's conv on the 2x2-average-pooled grey image: the trunk sees items at
  0.75-3x its training scale instead of 1.5-6x, and it costs a quarter of the FLOPs. Fine-tuning may then use
  the colour and the sub-pixel detail the average threw away.
* ``stem=4`` (``detect train``'s default): a 2x2 average pool before that Focus layer (a sixteenth of stem 1's
  trunk FLOPs; 1.93 GFLOPs for the whole vgg-small detector at 320x320 against 3.7 with stem 2). Items reach the
  trunk at 0.375-1.5x its training scale; on 15-60 CPU-minute budgets it beat stem 2 (BENCHMARKS.md).
* ``stem=1``: no stem; the first conv's kernel is spread over the 3 colour channels.

The classifier's input normalisation ``(x - MEAN) / STD`` is folded into the weights: the spread kernel is divided
by ``STD`` and the constant ``-MEAN / STD * sum(w)`` (convs have no bias) moves into the following BatchNorm's
running mean. The transferred BatchNorms keep the classifier's eps (ultralytics' default is 1e-3), so away from the
zero padding of the borders the backbone computes exactly the classifier's trunk on a grey frame.

Past the trunk, new stride-2 ``Conv`` + ``C2f`` stages reach strides 16 and 32 (P4, P5), ``SPPF`` closes the
backbone, and a YOLOv8 neck (FPN + PAN with C2f) feeds a ``Detect`` head at strides 8/16/32. Everything is made of
ultralytics' own modules, so the trainer, loss, EMA, checkpoints, export and even restricted
(``ULTRALYTICS_SAFE_LOAD``) loading treat it as any YOLO model.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashionkit.errors import UserError

STEMS = (1, 2, 4)
LEVELS = (8, 16, 32)  # strides of P3, P4, P5
NECK_CHANNELS = {8: 64, 16: 128, 32: 256}  # YOLOv8n's neck widths, times --width
YAML_KEY = "fashionkit"  # our entry in the model YAML: where the backbone came from, BN eps to restore


# ---- ultralytics, offline and side-effect free ---------------------------------------------------------------

def config_dir() -> Path:
    """Where ultralytics keeps settings.json and fonts for fashionkit: a private temp dir, not the home dir."""
    return Path(tempfile.gettempdir()) / f"fashionkit-ultralytics-{os.getuid() if hasattr(os, 'getuid') else 0}"


def use_ultralytics():
    """Import ultralytics so that it never goes online and writes nothing to the home directory.

    Must run before the first ``import ultralytics`` to take full effect (both variables are read at import):
    ``YOLO_OFFLINE`` skips the DNS probe, so no download or pip-install is ever tried; ``YOLO_CONFIG_DIR`` puts its
    settings.json in a temp dir (a user's own ``YOLO_CONFIG_DIR`` is respected, and a settings file that is not ours
    is never changed). Plots and label mosaics need a TrueType font that ultralytics would download as Arial.ttf;
    matplotlib's bundled DejaVu Sans is registered under that name instead (this also works when ultralytics was
    imported earlier).
    """
    config_dir().mkdir(mode=0o700, exist_ok=True)
    if "ultralytics" not in sys.modules:
        os.environ.setdefault("YOLO_OFFLINE", "1")
        os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir()))
    import ultralytics
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    if USER_CONFIG_DIR == config_dir() / "Ultralytics":  # only ever change our own settings file
        # no analytics, no experiment-tracker integrations (they would write mlruns/ etc. into the cwd)
        quiet = {k: False for k in ("sync", "clearml", "comet", "dvc", "hub", "mlflow", "neptune", "raytune",
                                    "tensorboard", "wandb", "vscode_msg", "openvino_msg") if SETTINGS.get(k)}
        if quiet:
            SETTINGS.update(quiet)
    _register_font()
    return ultralytics


def _register_font() -> None:
    """DejaVu Sans as Arial.ttf in our config dir (never in a config dir ultralytics found by itself, such as
    ~/.config/Ultralytics), added to matplotlib's font list where check_font() also looks."""
    import matplotlib
    from matplotlib import font_manager

    target = config_dir() / "Ultralytics" / "Arial.ttf"
    if not target.exists():
        target.parent.mkdir(exist_ok=True)
        source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        try:
            tmp = target.with_name(f".Arial.{os.getpid()}.ttf")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        except OSError:
            return  # an unwritable config dir: plots then fall back to ultralytics' own handling
    if not any(f.fname == str(target) for f in font_manager.fontManager.ttflist):
        font_manager.fontManager.addfont(str(target))  # check_font() also searches matplotlib's list by file name


# ---- the classifier's trunk as a list of layers --------------------------------------------------------------

@dataclass
class TrunkConv:
    conv: Any  # nn.Conv2d
    bn: Any  # nn.BatchNorm2d
    act: Any  # activation module


@dataclass
class TrunkPool:
    kernel: int
    stride: int


def trunk_layers(classifier) -> list[TrunkConv | TrunkPool]:
    """The classifier's trunk flattened to conv+BN+act units and max-pools (dropout is left out: detection
    fine-tuning has augmentation instead). Other layer types raise a UserError naming the model."""
    from torch import nn

    layers: list[TrunkConv | TrunkPool] = []

    def unsupported(what: str) -> UserError:
        return UserError(f"the {classifier.name or type(classifier).__name__} classifier's trunk has {what}, which the "
                         f"YOLO backbone cannot copy; use a VGG-family classify run (vgg-small, vgg, vgg-large)")

    def add_conv(conv, norm, act) -> None:
        k = conv.kernel_size[0]
        if (conv.bias is not None or conv.groups != 1 or conv.dilation != (1, 1) or conv.kernel_size != (k, k)
                or conv.padding != (k // 2, k // 2) or conv.stride[0] != conv.stride[1] or k % 2 == 0):
            raise unsupported(f"a convolution {conv}")
        layers.append(TrunkConv(conv, norm, act))

    def add_pool(pool) -> None:
        k, s = pool.kernel_size, pool.stride
        if not (isinstance(k, int) and isinstance(s, int) and pool.padding == 0 and k == s):
            raise unsupported(f"a max-pool {pool}")
        layers.append(TrunkPool(k, s))

    def begins(children, length: int, *kinds) -> bool:
        return len(children) == length and all(isinstance(c, k) for c, k in zip(children, kinds))

    def walk(module) -> None:
        children = list(module.children())
        if isinstance(module, nn.Sequential) and begins(children, 3, nn.Conv2d, nn.BatchNorm2d):
            add_conv(*children)
        elif isinstance(module, nn.Sequential) and begins(children, 4, nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d):
            # vgg's pool_early order (conv, pool, BN, act): a YOLO Conv is conv, BN, act, so the copy pools after
            # the activation; in eval mode that is the same function wherever BN's scale is positive, as max-pool
            # commutes with a per-channel increasing map
            add_conv(children[0], children[2], children[3])
            add_pool(children[1])
        elif isinstance(module, nn.Sequential):
            for child in children:
                walk(child)
        elif isinstance(module, nn.MaxPool2d):
            add_pool(module)
        elif isinstance(module, nn.Dropout):
            pass
        else:
            raise unsupported(f"a {type(module).__name__} layer")

    walk(classifier.trunk)
    convs = [layer for layer in layers if isinstance(layer, TrunkConv)]
    if not convs or convs[0].conv.in_channels != 1:
        raise unsupported("no convolution on the grey image")
    if len({type(c.act) for c in convs}) != 1 or len({repr(c.act) for c in convs}) != 1:
        raise unsupported("mixed activations")
    for c in convs:
        if c.conv.out_channels % 8:  # ultralytics rounds channels up to multiples of 8
            raise unsupported(f"{c.conv.out_channels}-channel convolutions (YOLO layers need multiples of 8)")
    return layers


# ---- the model YAML ------------------------------------------------------------------------------------------

def detector_yaml(classifier, nc: int = 10, stem: int = 2, width: float = 1.0, source: str = "") -> dict:
    """The ultralytics model YAML (as a dict) of a detector whose backbone copies ``classifier``'s trunk.

    ``yaml[YAML_KEY]["transfer"]`` lists, per trunk conv, the index of its YOLO layer, so the weights can be
    copied (``transfer_weights``) and the BatchNorm eps restored after a rebuild (``build_model``)."""
    from fashionkit.data.loader import MEAN, STD

    if stem not in STEMS:
        raise UserError(f"--stem {stem}: use one of {', '.join(map(str, STEMS))}")
    if not 0 < width <= 4:
        raise UserError(f"--width {width}: give a channel multiplier in (0, 4]")
    layers = trunk_layers(classifier)
    act = next(layer.act for layer in layers if isinstance(layer, TrunkConv))
    rows: list[list] = []
    strides: list[int] = []  # output stride of each row
    channels: list[int] = []
    transfer: list[int] = []
    stride = 1
    if stem == 4:
        rows.append([-1, 1, "nn.AvgPool2d", [2, 2]])
        stride = 2
        strides.append(stride)
        channels.append(3)
    first = True
    for layer in layers:
        if isinstance(layer, TrunkPool):
            stride *= layer.stride
            rows.append([-1, 1, "nn.MaxPool2d", [layer.kernel, layer.stride]])
            channels.append(channels[-1])
        else:
            c, k, s = layer.conv.out_channels, layer.conv.kernel_size[0], layer.conv.stride[0]
            if first and stem >= 2:
                rows.append([-1, 1, "Focus", [c, k, s]])
                s *= 2
            else:
                rows.append([-1, 1, "Conv", [c, k, s]])
            first = False
            stride *= s
            transfer.append(len(rows) - 1)
            channels.append(c)
        strides.append(stride)
    trunk_end = len(rows) - 1
    if stride > LEVELS[-1]:
        raise UserError(f"the trunk reaches stride {stride} with --stem {stem}; the detector needs P5 at stride 32: "
                        f"use a smaller --stem")
    if not any(strides[i] <= LEVELS[0] for i in range(len(rows))):
        raise UserError(f"--stem {stem} leaves no trunk layer at stride {LEVELS[0]} or finer for P3")

    def ch(level: int) -> int:
        return max(8, int(round(NECK_CHANNELS[level] * width / 8)) * 8)

    # P3/P4/P5: the last trunk layer at that stride, else new stride-2 stages (YOLOv8's Conv + C2f) on top
    feature: dict[int, int] = {}
    for level in LEVELS:
        at = [i for i in range(trunk_end + 1) if strides[i] == level and rows[i][2] != "nn.MaxPool2d"]
        if at:
            feature[level] = at[-1]
            continue
        if stride > level:  # the trunk skipped this stride (a pool of 4): not expected from VGG trunks
            raise UserError(f"the trunk has no layer at stride {level}; use another --stem")
        while stride < level:
            stride *= 2
            rows.append([-1, 1, "Conv", [ch(stride) if stride in NECK_CHANNELS else channels[-1], 3, 2]])
            channels.append(rows[-1][3][0])
        rows.append([-1, 1, "C2f", [ch(level), True]])
        channels.append(ch(level))
        feature[level] = len(rows) - 1
    rows.append([-1, 1, "SPPF", [channels[feature[32]], 5]])  # spatial pyramid pooling on P5, as in YOLOv8
    feature[32] = len(rows) - 1
    backbone = rows

    # YOLOv8 neck: top-down FPN, then bottom-up PAN; indices continue after the backbone
    head: list[list] = []
    n = len(backbone)

    def add(row: list) -> int:
        head.append(row)
        return n + len(head) - 1

    add([-1, 1, "nn.Upsample", [None, 2, "nearest"]])
    add([[-1, feature[16]], 1, "Concat", [1]])
    h4 = add([-1, 1, "C2f", [ch(16)]])
    add([-1, 1, "nn.Upsample", [None, 2, "nearest"]])
    add([[-1, feature[8]], 1, "Concat", [1]])
    p3 = add([-1, 1, "C2f", [ch(8)]])
    add([-1, 1, "Conv", [ch(8), 3, 2]])
    add([[-1, h4], 1, "Concat", [1]])
    p4 = add([-1, 1, "C2f", [ch(16)]])
    add([-1, 1, "Conv", [ch(16), 3, 2]])
    add([[-1, feature[32]], 1, "Concat", [1]])
    p5 = add([-1, 1, "C2f", [ch(32)]])
    add([[p3, p4, p5], 1, "Detect", ["nc"]])

    bn_eps = [float(layer.bn.eps) for layer in layers if isinstance(layer, TrunkConv)]
    return {
        "nc": nc,
        "activation": "nn." + repr(act),  # the classifier's, for every Conv of the model
        "backbone": backbone,
        "head": head,
        YAML_KEY: {"source": source, "classifier": classifier.name, "classifier_options": classifier.options,
                   "stem": stem, "width": width, "transfer": transfer, "trunk_end": trunk_end, "bn_eps": bn_eps,
                   "input_mean": MEAN, "input_std": STD},
    }


def build_model(cfg: dict | str, nc: int | None = None, verbose: bool = False):
    """``DetectionModel`` from a model YAML (dict or file/name such as yolov8n.yaml), random init. For our YAMLs,
    the transferred layers get their BatchNorm eps back (ultralytics' init sets every eps to 1e-3)."""
    use_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(copy.deepcopy(cfg) if isinstance(cfg, dict) else cfg, ch=3, nc=nc, verbose=verbose)
    info = model.yaml.get(YAML_KEY) if isinstance(model.yaml, dict) else None
    if info:
        for index, eps in zip(info["transfer"], info["bn_eps"]):
            conv_bn(model, index)[1].eps = eps
    return model


def conv_bn(model, index: int):
    """The (Conv2d, BatchNorm2d) of YOLO layer ``index`` (a Conv, or the Conv inside a Focus)."""
    layer = model.model[index]
    layer = getattr(layer, "conv", layer) if type(layer).__name__ == "Focus" else layer
    return layer.conv, layer.bn


def transfer_weights(model, classifier) -> int:
    """Copy the classifier's trunk convs and BatchNorms into the backbone built by ``detector_yaml``; returns the
    number of tensors copied. The first conv is adapted (see the module docstring); the rest are copied as is."""
    import torch

    info = model.yaml[YAML_KEY]
    mean, std = info["input_mean"], info["input_std"]
    convs = [layer for layer in trunk_layers(classifier) if isinstance(layer, TrunkConv)]
    if len(convs) != len(info["transfer"]):
        raise UserError("the classifier does not match the detector's backbone; rebuild the detector from it")
    copied = 0
    with torch.no_grad():
        for i, (index, src) in enumerate(zip(info["transfer"], convs)):
            conv, bn = conv_bn(model, index)
            w = src.conv.weight.detach().float()
            if i == 0:  # spread over the input channels (colours x Focus phases) with the normalisation folded in
                c_in = conv.weight.shape[1]
                conv.weight.copy_(w.expand(-1, c_in, -1, -1) / (c_in * std))
                bn.running_mean.copy_(src.bn.running_mean + mean / std * w.sum(dim=(1, 2, 3)))
            else:
                conv.weight.copy_(w)
                bn.running_mean.copy_(src.bn.running_mean)
            bn.weight.copy_(src.bn.weight)
            bn.bias.copy_(src.bn.bias)
            bn.running_var.copy_(src.bn.running_var)
            bn.num_batches_tracked.copy_(src.bn.num_batches_tracked)
            bn.eps = src.bn.eps
            copied += 6
    return copied


# ---- what `detect train --from` can be -----------------------------------------------------------------------

@dataclass
class ModelSource:
    kind: str  # classifier | detector | none | yaml
    model: Any  # the DetectionModel, initialised
    yaml: dict
    description: str
    classifier_run: str | None = None


def model_source(source: str, nc: int, stem: int = 2, width: float = 1.0, classifier_model: str = "vgg-small"
                 ) -> ModelSource:
    """The detector ``detect train --from`` asks for: a classify run directory (backbone = its trunk), a detect run
    directory (its trained detector, fine-tuned as a whole: to train longer or on other scenes), ``none`` (same
    shape, random init; the trunk's shape comes from ``--classifier-model``) or an ultralytics model YAML such as
    ``yolov8n.yaml`` (stock model, random init: nothing is downloaded)."""
    from fashionkit.runs import open_run, read_json

    text = str(source)
    if text.lower() == "none":
        from fashionkit.classify.models import create_model

        classifier = create_model(classifier_model)
        cfg = detector_yaml(classifier, nc, stem, width, source="none")
        return ModelSource("none", build_model(cfg, nc), cfg,
                           f"random-init backbone shaped like {classifier_model}'s trunk (stem {stem})")
    if text.endswith((".yaml", ".yml")):
        model = _stock_model(text, nc)
        return ModelSource("yaml", model, model.yaml, f"stock ultralytics {Path(text).name}, random init")
    path = Path(text)
    if path.is_file() and path.suffix == ".pt":
        raise UserError(f"--from {path}: pass the classify run directory (runs/classify/<run>) or detect run "
                        f"directory it belongs to, none, or a model YAML such as yolov8n.yaml")
    if path.is_dir() and (read_json(path / "run.json", missing_ok=True) or {}).get("stage") == "detect":
        return _detector_source(open_run(path, "detect", what="--from"), nc)
    run = open_run(path, "classify", what="--from")
    from fashionkit.classify.checkpoint import load_classifier

    classifier, _ = load_classifier(run, "cpu")
    cfg = detector_yaml(classifier, nc, stem, width, source=str(run))
    model = build_model(cfg, nc)
    transfer_weights(model, classifier)
    return ModelSource("classifier", model, cfg, f"backbone from {run} ({classifier.name} trunk, stem {stem})",
                       classifier_run=str(run))


def _detector_source(run: Path, nc: int) -> ModelSource:
    """A detect run's trained detector (its best.pt, in float32), to fine-tune as a whole. Its crop reader's
    classifier is the classify run the source was trained from, where that still exists."""
    import torch

    from fashionkit.detect.tracks import auto_runs
    from fashionkit.detect.weights import weights_file

    weights = weights_file(run)
    if weights.suffix != ".pt":
        raise UserError(f"--from {run}: its weights are {weights.name}; fine-tuning needs the PyTorch best.pt")
    use_ultralytics()
    try:
        checkpoint = torch.load(weights, map_location="cpu", weights_only=False)
    except Exception as e:  # truncated or not a checkpoint: one line, not a traceback
        raise UserError(f"--from {run}: cannot read {weights} ({type(e).__name__}); retrain or restore it") from None
    model = checkpoint.get("ema") or checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if model is None or not hasattr(model, "yaml"):
        raise UserError(f"--from {run}: {weights} holds no ultralytics detection model")
    model = model.float()
    if nc == 1 and model.yaml.get("nc") != 1:  # `--one-class` from a detector that names its items
        model = one_class_copy(model)
    if model.yaml.get("nc") != nc:
        raise UserError(f"--from {run}: its detector has {model.yaml.get('nc')} classes, the data {nc}; fine-tune it "
                        f"on scenes of the same classes (`detect make-data`), or start from a classify run")
    for p in model.parameters():
        p.requires_grad_(True)
    info = model.yaml.get(YAML_KEY) or {}
    classifier = auto_runs(weights, reader=False)["classifier"]  # as `detect video --classifier auto` finds it
    what = f"{info.get('classifier')} trunk, stem {info.get('stem')}" if info else "stock architecture"
    return ModelSource("detector", model, model.yaml, f"detector from {run} ({what}), fine-tuned as a whole",
                       classifier_run=str(classifier) if classifier else None)


def one_class_copy(model):
    """``model`` with one class, item (``detect train --one-class --from`` a detector of several): every tensor
    copied but the last convolution of each class branch, which has one output now and starts anew (ultralytics'
    own ``load``: the tensors whose shapes match)."""
    new = build_model({**model.yaml, "nc": 1}, nc=1)
    new.load(model)
    return new


def _stock_model(name: str, nc: int):
    use_ultralytics()
    from ultralytics.nn.tasks import yaml_model_load

    try:
        cfg = yaml_model_load(name)  # yolov8n.yaml -> yolov8.yaml at scale n, as ultralytics resolves it
    except FileNotFoundError:
        raise UserError(f"--from {name}: no such model YAML (ultralytics ships e.g. yolov8n.yaml, yolo11n.yaml); "
                        f"or pass a classify run directory or none") from None
    try:
        return build_model(cfg, nc)
    except Exception as e:
        raise UserError(f"--from {name}: ultralytics cannot build this model ({type(e).__name__}: {e})") from None


# ---- inspection ----------------------------------------------------------------------------------------------

def backbone_features(model, x, upto: int | None = None):
    """Output of the backbone's layers 0..``upto`` (default: the end of the copied trunk) on images ``x``."""
    info = model.yaml[YAML_KEY]
    upto = info["trunk_end"] if upto is None else upto
    for layer in model.model[: upto + 1]:
        x = layer(x)
    return x


def gflops(model, imgsz: tuple[int, int] = (320, 320)) -> float:
    """Forward GFLOPs of one ``imgsz`` (h, w) frame, counted by torch (a multiply-add = 2 FLOPs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    p = next(model.parameters())
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, *imgsz, device=p.device, dtype=p.dtype))
    model.train(was_training)
    return counter.get_total_flops() / 1e9
