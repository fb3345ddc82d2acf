"""The classifier registry: every registered model runs, learns and rebuilds from its recorded options."""

from __future__ import annotations

import json
import urllib.error

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import trained_looking_bn

from fashionkit.classify import models
from fashionkit.classify.models import MODELS, create_model, model_table
from fashionkit.data.loader import normalize, to_float
from fashionkit.errors import UserError


def batch(train_set, n, classes=None):
    images, labels = train_set
    if classes is not None:
        keep = torch.isin(labels, torch.tensor(classes)).nonzero().flatten()[:n]
        return normalize(to_float(images[keep])), labels[keep]
    return normalize(to_float(images[:n])), labels[:n]


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_runs_trains_and_rebuilds(name, train_set):
    torch.manual_seed(0)
    model = create_model(name)
    x, y = batch(train_set, 2 if name == "resnet18-transfer" else 4)  # 112 px on CPU: keep that batch tiny

    fmap = model.trunk(x)
    assert fmap.dim() == 4 and fmap.shape[:2] == (len(x), model.trunk_channels)
    feats = model.features(x)
    assert feats.shape == (len(x), model.feature_dim)
    logits = model(x)
    assert logits.shape == (len(x), 10) and torch.isfinite(logits).all()

    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    F.cross_entropy(logits, y).backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    # every trainable parameter takes part: a branch left out of forward would keep its initial values
    unchanged = [k for k, p in model.named_parameters() if torch.equal(p, before[k])]
    frozen = [k for k, p in model.named_parameters() if not p.requires_grad]
    assert unchanged == frozen
    assert frozen == (["trunk.0.0.0.weight"] if model.options.get("whiten") else [])  # vgg-fast's whitening conv

    rebuilt = create_model(model.name, **model.options)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    json.dumps(model.options)  # options go into checkpoints and run configs


def test_published_parameter_counts():
    assert models.count_params(create_model("lenet")) == pytest.approx(173_000, rel=0.05)
    assert models.count_params(create_model("vgg")) == pytest.approx(1_150_000, rel=0.05)
    small, medium, large = (models.count_params(create_model(n)) for n in ("vgg-small", "vgg", "vgg-large"))
    assert small < medium < large and 0.9e6 <= large <= 2.9e6  # the 94.93% VGG-like net's range


def test_simple_learns_two_classes(train_set):
    torch.manual_seed(0)
    x, y = batch(train_set, 256, classes=[0, 1])  # T-shirt/top vs trouser
    assert set(y.tolist()) == {0, 1}
    model = create_model("simple")
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    with torch.no_grad():
        first = F.cross_entropy(model(x), y).item()
    for _ in range(8):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        last = F.cross_entropy(model(x), y).item()
    assert last < 0.5 * first


def test_unknown_name_and_option_list_the_valid_ones():
    with pytest.raises(UserError, match="unknown model 'vgg16'") as err:
        create_model("vgg16")
    assert all(name in str(err.value) for name in MODELS)
    with pytest.raises(UserError, match="unknown option 'depth' for model vgg") as err:
        create_model("vgg", depth=5)
    assert "fc_layers" in str(err.value) and "activation" in str(err.value)
    with pytest.raises(UserError, match="unknown option 'activation'"):
        create_model("resnet18-transfer", activation="elu")  # pretrained layers fix their activation


@pytest.mark.parametrize("activation", list(models.ACTIVATIONS))
def test_activation_choices(activation, train_set):
    model = create_model("lenet", activation=activation)
    kinds = {type(m) for m in model.modules()}
    assert models.ACTIVATIONS[activation] in kinds
    assert not (set(models.ACTIVATIONS.values()) - {models.ACTIVATIONS[activation]}) & kinds
    assert torch.isfinite(model(batch(train_set, 2)[0])).all()


def test_bad_option_values_are_user_errors():
    with pytest.raises(UserError, match="unknown activation 'swish'.*leaky_relu.*silu"):
        create_model("vgg", activation="swish")
    with pytest.raises(UserError, match="hidden"):
        create_model("mlp", hidden=[512, 256, 128, 64])  # 1 to 3 hidden layers
    with pytest.raises(UserError, match="fc_layers"):
        create_model("vgg", fc_layers=4)
    with pytest.raises(UserError, match="stages"):
        create_model("resnet", stages=[1, 1])
    with pytest.raises(UserError, match="dropout"):
        create_model("simple", dropout=1.5)


def test_options_record_the_architecture():
    model = create_model("mlp", num_classes=5, hidden=(300, 50), activation="tanh")
    assert model.options == {"num_classes": 5, "hidden": [300, 50], "activation": "tanh", "dropout": 0.2,
                             "width": 1.0}
    assert model.feature_dim == 50 and model.head.out_features == 5
    assert create_model("vgg-large").options["fc_layers"] == 2  # the variant's defaults are recorded too
    rebuilt = create_model(model.name, **model.options)
    assert rebuilt.head.out_features == 5 and isinstance(rebuilt.neck[2], nn.Tanh)


def test_pool_early_is_the_same_net_on_a_quarter_of_the_pixels():
    torch.manual_seed(0)
    late, early = create_model("vgg-fast", pool_early=False), create_model("vgg-fast", pool_early=True)
    assert models.count_params(late) == models.count_params(early)
    seen = {}
    early.trunk[0][0][2].register_forward_hook(lambda m, i, o: seen.update(bn=i[0].shape))
    x = torch.randn(3, 1, 28, 28)
    early(x)
    assert seen["bn"] == (3, 24, 14, 14)  # the first BN + ReLU run after the pool

    # with the same weights and positive BN scales, both orders compute the same function in eval mode
    layers = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)
    for a, b in zip([m for m in late.modules() if isinstance(m, layers)],
                    [m for m in early.modules() if isinstance(m, layers)], strict=True):
        if isinstance(a, nn.BatchNorm2d):
            trained_looking_bn(a)
        b.load_state_dict(a.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(early.eval()(x), late.eval()(x))
    with pytest.raises(UserError, match="pool_early"):
        create_model("vgg", pool_early=1)


def test_pool_grid_keeps_where_a_feature_is_at_any_input_size():
    one, grid = create_model("vgg-fast"), create_model("vgg-fast", pool_grid=2)
    assert models.count_params(one) == 157_330 and grid.head.in_features == 96 * 4
    top_left, bottom_right = torch.zeros(2, 96, 7, 7), torch.zeros(2, 96, 7, 7)
    top_left[:, 5, 0, 0] = bottom_right[:, 5, 6, 6] = 1.0
    # the global max pool cannot tell the two apart; the 2x2 grid can
    torch.testing.assert_close(one.neck(top_left), one.neck(bottom_right))
    assert not torch.equal(grid.neck(top_left), grid.neck(bottom_right))
    for size in (16, 20, 28):  # progressive resizing trains on smaller images first
        assert grid(torch.zeros(2, 1, size, size)).shape == (2, 10)
    for bad in (0, 4, True, [2]):
        with pytest.raises(UserError, match="pool_grid"):
            create_model("vgg-fast", pool_grid=bad)


def test_family_size_options():
    assert create_model("vgg", fc_layers=3, fc_dim=64).feature_dim == 64
    assert create_model("vgg", width=0.5).trunk_channels == 128
    assert create_model("resnet", stages=[1, 1, 1]).trunk_channels == 256
    assert create_model("densenet", growth=8).feature_dim < create_model("densenet").feature_dim
    assert create_model("simple-fanin").trunk_channels == 16 and create_model("simple-fanout").trunk_channels == 64


def test_mflops_counts_multiply_adds_twice(monkeypatch):
    dense = 784 * 256 + 256 * 128 + 128 * 64 + 64 * 10
    assert models.count_mflops(create_model("mlp")) == pytest.approx(2 * dense / 1e6)
    monkeypatch.setattr(models, "MODELS", {n: MODELS[n] for n in ("mlp", "lenet")})  # the full table takes seconds
    rows = model_table()
    assert [r["name"] for r in rows] == ["mlp", "lenet"]
    assert rows[1]["params"] == models.count_params(create_model("lenet")) and 5 < rows[1]["mflops"] < 50


def test_transfer_weights_from_a_local_file(tmp_path):
    from torchvision.models import resnet18

    source = resnet18(weights=None)
    path = tmp_path / "resnet18.pt"
    torch.save(source.state_dict(), path)
    model = create_model("resnet18-transfer", weights=str(path), size=64)
    assert torch.equal(model.trunk[1].weight, source.conv1.weight)  # trunk[0] is the gray -> RGB resize
    assert torch.equal(model.trunk[-1][1].conv2.weight, source.layer4[1].conv2.weight)
    # a checkpoint rebuilds the architecture without the file: the weights come from the checkpoint
    assert model.pretrained == str(path) and model.options["weights"] == "none"
    path.unlink()
    assert create_model(model.name, **model.options).state_dict().keys() == model.state_dict().keys()

    with pytest.raises(UserError, match="not found"):
        create_model("resnet18-transfer", weights=str(tmp_path / "missing.pt"))
    torch.save({"conv1.weight": torch.zeros(1)}, path)  # wrong shape, the rest missing
    with pytest.raises(UserError, match="not a torchvision resnet18 state dict"):
        create_model("resnet18-transfer", weights=str(path))


def test_transfer_default_weights_without_network(monkeypatch):
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match="could not download.*weights=PATH.*weights=none"):
        create_model("resnet18-transfer", weights="DEFAULT")


def test_whitening_init_decorrelates_patches_and_stays_frozen(train_set, runs_dir):
    from fashionkit.classify.checkpoint import load_classifier
    from fashionkit.classify.models import whiten_first_conv
    from fashionkit.classify.train import train

    x, _ = batch(train_set, 2000)
    model = create_model("vgg", channels=[24, 48, 96], whiten=True)
    conv = model.trunk[0][0][0]
    assert not conv.weight.requires_grad
    random_init = conv.weight.detach().clone()
    whiten_first_conv(model, x)
    # the first 9 filters turn the 3x3 patches into unit-variance, uncorrelated channels; the next 9 are their
    # negatives; the last 6 keep their random init
    out = F.conv2d(x, conv.weight[:9], padding=1).permute(0, 2, 3, 1).reshape(-1, 9)
    assert torch.allclose(torch.cov(out.T), torch.eye(9), atol=0.03)
    assert torch.equal(conv.weight[9:18], -conv.weight[:9])
    assert torch.equal(conv.weight[18:], random_init[18:])

    # in a real run the filters are computed from the training items, then left alone by the optimizer
    run, _ = train({"model": "vgg", "model_opts": "channels=[24,48,96],whiten=true", "subset": 1000, "epochs": 1,
                    "test": False})
    trained, _ = load_classifier(run)
    first = trained.trunk[0][0][0].weight
    images, _ = train_set
    again = create_model("vgg", channels=[24, 48, 96], whiten=True)
    from fashionkit.data.splits import make_splits

    train_idx, _ = make_splits(train_set[1].numpy(), 5000, 0, 1000)
    whiten_first_conv(again, normalize(to_float(images[torch.as_tensor(train_idx)])))
    assert torch.allclose(first[:18], again.trunk[0][0][0].weight[:18], atol=1e-6)
    with pytest.raises(UserError, match="whiten"):
        create_model("vgg", whiten="yes")
