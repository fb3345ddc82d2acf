"""The data layer on the real Fashion-MNIST files: reading, verifying, splitting, augmenting, loading."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch

from fashionkit.data import CLASSES, class_id, parse_classes
from fashionkit.data import fashion_mnist as fm
from fashionkit.data.augment import PRESETS, build_augment
from fashionkit.data.loader import MEAN, STD, BatchLoader
from fashionkit.data.splits import make_splits, train_val_split
from fashionkit.errors import UserError


def test_real_data_counts_and_first_label(train_set, test_set):
    (x, y), (xt, yt) = train_set, test_set
    assert x.shape == (60000, 28, 28) and x.dtype == torch.uint8
    assert xt.shape == (10000, 28, 28)
    assert torch.bincount(y).tolist() == [6000] * 10
    assert torch.bincount(yt).tolist() == [1000] * 10
    assert int(y[0]) == 9  # the first training item is an ankle boot
    assert abs(x.float().div(255).mean().item() - MEAN) < 1e-3
    assert abs(x.float().div(255).std().item() - STD) < 1e-3


def test_class_names_and_ids():
    assert class_id(6) == class_id("6") == class_id("shirt") == class_id("Shirt") == 6
    assert class_id("T-shirt/top") == class_id("tshirt") == 0
    assert class_id("ankle_boot") == 9
    assert parse_classes("0,pullover,Coat,6") == [0, 2, 4, 6]
    assert len(CLASSES) == 10
    with pytest.raises(UserError, match="unknown class 'hat'"):
        class_id("hat")
    with pytest.raises(UserError, match="unknown class '10'"):
        class_id(10)
    with pytest.raises(UserError, match="more than once"):
        parse_classes("0,shirt,6")


def test_split_is_stratified_disjoint_and_seeded(train_set):
    labels = train_set[1].numpy()
    tr, va = train_val_split(labels, val_size=5000, seed=0)
    assert len(tr) == 55000 and len(va) == 5000
    assert not set(tr) & set(va)
    assert np.bincount(labels[va]).tolist() == [500] * 10
    tr2, va2 = train_val_split(labels, val_size=5000, seed=0)
    assert np.array_equal(va, va2)
    _, va3 = train_val_split(labels, val_size=5000, seed=1)
    assert not np.array_equal(va, va3)


def test_subset_is_stratified(train_set):
    labels = train_set[1].numpy()
    tr, va = make_splits(labels, subset=1000, seed=0)
    assert len(tr) == 1000 and len(va) == 200
    assert np.bincount(labels[tr]).tolist() == [100] * 10
    with pytest.raises(UserError, match="too small"):
        make_splits(labels, subset=5)


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_keep_shape_dtype_range(name, train_set):
    x = train_set[0][:256].float().div(255).unsqueeze(1)
    augment = build_augment(name)
    y = augment(x, torch.Generator().manual_seed(0)) if augment else x
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    if name != "none":
        assert not torch.equal(x, y)  # the preset does something
        # ... and draws per image: some images of the batch stay closer to the original than others
        change = (y - x).abs().flatten(1).mean(1)
        assert change.std() > 0


def test_flip_is_per_image_not_per_batch(train_set):
    x = train_set[0][:512].float().div(255).unsqueeze(1)
    y = build_augment("flip")(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(a, b.flip(-1)) and not torch.equal(a, b) for a, b in zip(y, x)])
    assert 0.4 < flipped.float().mean() < 0.6


def test_alternating_flip_shows_every_image_both_ways_in_two_epochs(train_set):
    """altflip-crop's AlternatingFlip through the loader: each image is mirrored in exactly one of any two
    consecutive epochs, the pattern repeats every two epochs, half the images start mirrored, and the coin
    changes with the seed."""
    from fashionkit.data.augment import AlternatingFlip, Compose, RandomHorizontalFlip

    x, y = train_set[0][:600], train_set[1][:600]
    original = torch.cat([b for b, _ in BatchLoader(x, y, 200)])

    def mirrored(epoch: int, seed: int = 0) -> torch.Tensor:
        loader = BatchLoader(x, y, 200, augment=Compose([AlternatingFlip()]), seed=seed)
        loader.set_epoch(epoch)
        seen = torch.cat([b for b, _ in loader])
        return torch.tensor([torch.equal(a, o.flip(-1)) and not torch.equal(a, o) for a, o in zip(seen, original)])

    first, second = mirrored(0), mirrored(1)
    symmetric = torch.tensor([torch.equal(o, o.flip(-1)) for o in original])
    assert not symmetric.any()
    assert torch.equal(first, ~second) and torch.equal(first, mirrored(2)) and torch.equal(second, mirrored(7))
    assert 0.4 < first.float().mean() < 0.6
    assert not torch.equal(first, mirrored(0, seed=1))
    # without indices (a preview, a single batch) it is a random flip
    plain = Compose([AlternatingFlip()])(x[:8].float().div(255).unsqueeze(1), torch.Generator().manual_seed(0))
    assert torch.equal(plain, RandomHorizontalFlip()(x[:8].float().div(255).unsqueeze(1),
                                                    torch.Generator().manual_seed(0)))


def test_random_crop_shifts_each_image_by_whole_pixels(train_set):
    """flip-crop's RandomCrop(2) is torchvision's RandomCrop(28, padding=2): every output is its input moved by
    -2..2 pixels each way with zeros coming in, the shift drawn per image."""
    import torch.nn.functional as F

    from fashionkit.data.augment import RandomCrop

    x = train_set[0][:200].float().div(255).unsqueeze(1)
    y = RandomCrop(2)(x, torch.Generator().manual_seed(0))
    padded = F.pad(x, (2, 2, 2, 2))
    shifts = []
    for a, p in zip(y, padded):
        found = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(a, p[:, dy:dy + 28, dx:dx + 28])]
        assert found, "an output is not a whole-pixel shift of its input"
        shifts.append(found[0])
    assert len(set(shifts)) >= 20  # of the 25 possible shifts, drawn per image
    assert torch.equal(RandomCrop(2)(x, torch.Generator().manual_seed(0)), y)  # seeded


def test_unknown_preset():
    with pytest.raises(UserError, match="unknown augmentation preset 'blur'"):
        build_augment("blur")


def test_loader_batches_normalised_and_seeded(train_set):
    x, y = train_set
    loader = BatchLoader(x, y, batch_size=100, shuffle=True, indices=np.arange(1000), seed=3)
    batches = list(loader)
    assert len(batches) == len(loader) == 10
    xb, yb = batches[0]
    assert xb.shape == (100, 1, 28, 28) and xb.dtype == torch.float32 and yb.dtype == torch.int64
    assert abs(torch.cat([b[0] for b in batches]).mean().item()) < 0.1  # normalised
    again = BatchLoader(x, y, batch_size=100, shuffle=True, indices=np.arange(1000), seed=3)
    assert torch.equal(next(iter(again))[1], yb)
    loader.set_epoch(1)
    assert not torch.equal(next(iter(loader))[1], yb)
    shards = [BatchLoader(x, y, 64, indices=np.arange(1000), rank=r, world_size=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 8


# ---- damaged files ----------------------------------------------------------------------------------------

@pytest.fixture
def data_copy(tmp_path):
    """A writable copy of the real files, decompressed, to damage."""
    root = fm.find_root()
    for name in fm.FILES.values():
        src = fm._file_in(root, name)
        with (gzip.open(src) if src.suffix == ".gz" else open(src, "rb")) as f, open(tmp_path / name, "wb") as out:
            shutil.copyfileobj(f, out)
    fm._load.cache_clear()
    return tmp_path


def test_reads_raw_and_gzip(data_copy):
    x, y = fm.load_split("test", data_copy)
    assert x.shape == (10000, 28, 28) and int(y[0]) == 9


def test_wrong_magic(data_copy):
    p = data_copy / "t10k-labels-idx1-ubyte"
    raw = bytearray(p.read_bytes())
    raw[2:4] = (2051).to_bytes(2, "big")
    p.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="magic number 2051, expected 2049"):
        fm.load_split("test", data_copy)


def test_truncated_file(data_copy):
    p = data_copy / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated or corrupted"):
        fm.load_split("test", data_copy)


def test_truncated_gzip(data_copy):
    p = data_copy / "t10k-images-idx3-ubyte"
    gz = gzip.compress(p.read_bytes())
    p.unlink()
    (data_copy / "t10k-images-idx3-ubyte.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(UserError, match="truncated or corrupted gzip"):
        fm.load_split("test", data_copy)


def test_checksum_mismatch_is_refused(data_copy):
    p = data_copy / "t10k-images-idx3-ubyte"
    raw = bytearray(p.read_bytes())
    raw[5000] ^= 0xFF  # a valid idx file, one pixel off: only the checksum can tell
    p.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="does not match the official Fashion-MNIST content"):
        fm.load_split("test", data_copy)


def test_missing_data_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("FASHIONKIT_MIRROR", "http://127.0.0.1:9/")  # nothing listens: fails at once
    with pytest.raises(UserError, match="Fashion-MNIST not found in .*download from http://127.0.0.1:9/ failed"):
        fm.find_root(tmp_path / "empty")


def test_cli_errors_are_one_line(cli, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FASHIONKIT_MIRROR", "http://127.0.0.1:9/")
    assert cli("data", "preview", "--preset", "nope") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown augmentation preset") and err.count("\n") == 1
    assert cli("data", "preview", "--data-dir", tmp_path / "nothing", "--out", tmp_path / "p.png") == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert cli("data", "preview", "--out", tmp_path / "file" / "p.png") == 2
    assert "cannot write to" in capsys.readouterr().err


def test_preview_writes_png(cli, tmp_path):
    out = tmp_path / "preview.png"
    assert cli("data", "preview", "--preset", "rotate-shift-flip", "--out", out, "--samples", 3) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_config_file_and_flags(tmp_path):
    from fashionkit.config import Opt, resolve

    options = {"lr": Opt(0.1, "learning rate"), "epochs": Opt(3, "epochs"), "name": Opt(None, "n", type=str)}
    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 0.01\nepochs: 5\n")
    assert resolve(options, {"epochs": "7"}, cfg) == {"lr": 0.01, "epochs": 7, "name": None}
    cfg.write_text("lr: 0.01\nepoch: 5\n")
    with pytest.raises(UserError, match="unknown option 'epoch'"):
        resolve(options, {}, cfg)
    with pytest.raises(UserError, match="option 'epochs'"):
        resolve(options, {"epochs": "many"})
    # `amp: off` in a YAML file means the word, though YAML reads it as False
    options["amp"] = Opt("auto", "precision", choices=("auto", "bf16", "off"))
    cfg.write_text("amp: off\n")
    assert resolve(options, {}, cfg)["amp"] == "off"
    options["model"] = Opt("vgg", "model", choices=("vgg", "mlp"))
    cfg.write_text("model: off\n")  # read as False, and off is none of its choices: refused
    with pytest.raises(UserError, match="option 'model'"):
        resolve(options, {}, cfg)
    # numpy, scikit-learn and torch raise mid-run on a seed outside [0, 2^32): every seed option is checked here
    options.update(seed=Opt(0, "seed"), split_seed=Opt(0, "split seed"))
    assert resolve(options, {"seed": "4294967295", "split_seed": 0})["seed"] == 2**32 - 1
    with pytest.raises(UserError, match="--seed must be a whole number from 0 to 4294967295, got -1"):
        resolve(options, {"seed": "-1"})
    with pytest.raises(UserError, match="--split-seed must be a whole number"):
        resolve(options, {"split_seed": 2**32})
    # an option's least value is said in one line (every --threads: torch raised on -1 in some commands, others took
    # it as every core), a float's too, and a NaN is not taken for one
    options.update(threads=Opt(0, "threads", least=0), rate=Opt(0.5, "rate", least=0.0))
    assert resolve(options, {"threads": "0", "rate": "0"})["threads"] == 0
    with pytest.raises(UserError, match=r"^--threads must be at least 0, got -1$"):
        resolve(options, {"threads": "-1"})
    with pytest.raises(UserError, match=r"^--rate must be at least 0.0, got nan$"):
        resolve(options, {"rate": "nan"})
