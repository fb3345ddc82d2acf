"""Large indexes: ivfpq with exact re-ranking from vectors on disk, memory-mapped opening, refusals of impossible
configurations, `metric index --add`, and sharded search (in one process and merged across processes). Small
random vectors (thousands, 16-d) keep each test at seconds."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from fashionkit.errors import UserError


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def clustered(n: int, d: int = 16, clusters: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((clusters, d)))
    return unit(centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, d)) * 0.5 / np.sqrt(d))


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact)]))


@pytest.fixture(scope="module")
def data():
    x, q = clustered(4000), clustered(100, seed=1)
    from fashionkit.metric.index import make_index

    return x, q, make_index("flat", x).search(q, 10)[1]


def test_ivfpq_reranked_from_a_memory_mapped_file_finds_the_exact_top_10(data, tmp_path):
    from fashionkit.metric.index import Reranked, make_index

    x, q, exact = data
    np.save(tmp_path / "vectors.npy", x)
    on_disk = np.load(tmp_path / "vectors.npy", mmap_mode="r")
    coarse = make_index("ivfpq", x, nlist=16, nprobe=16, pq_m=2)  # 2 bytes a vector: a rough order alone
    plain = recall(coarse.search(q, 10)[1], exact)
    reranked = recall(Reranked(coarse, on_disk, rerank=200).search(q, 10)[1], exact)
    assert isinstance(on_disk, np.memmap) and plain < 0.8 and reranked > 0.97 and reranked > plain + 0.2
    opq = make_index("ivfpq", x, nlist=16, nprobe=16, pq_m=4, opq=True, train_size=1000)  # OPQ trains slowly
    assert recall(Reranked(opq, on_disk, rerank=100).search(q, 10)[1], exact) > 0.97


def test_rerank_orders_candidates_by_exact_inner_product_and_keeps_missing_ones_last():
    from fashionkit.metric.index import rerank_exact

    x = clustered(50)
    queries = x[:2].copy()
    candidates = np.array([[7, 0, 3, -1], [-1, -1, 1, 9]])
    sims, ids = rerank_exact(queries, candidates, x, 3)
    for row in range(2):
        got = [c for c in candidates[row] if c >= 0]
        want = sorted(got, key=lambda c: -float(x[c] @ queries[row]))[:3]
        assert list(ids[row][:len(want)]) == want
        np.testing.assert_allclose(sims[row][:len(want)], [x[c] @ queries[row] for c in want], rtol=1e-5)
    assert ids[1][2] == -1 and sims[1][2] == -np.inf  # only two real candidates for the second query
    assert ids[0][0] == 0  # a vector is its own nearest


@pytest.mark.parametrize("kind,opts", [("flat", {}), ("hnsw", {}), ("ivf", {"nlist": 16}),
                                       ("ivfpq", {"nlist": 16, "pq_m": 4})])
def test_a_memory_mapped_index_answers_like_the_loaded_one(data, tmp_path, kind, opts):
    import faiss

    from fashionkit.metric.index import make_index, read_index_mmap, set_search_params

    x, q, _ = data
    faiss.write_index(make_index(kind, x, **opts), str(tmp_path / "i.faiss"))
    loaded, mapped = faiss.read_index(str(tmp_path / "i.faiss")), read_index_mmap(tmp_path / "i.faiss")
    for index in (loaded, mapped):
        set_search_params(index, nprobe=8, ef_search=64)
    assert np.array_equal(loaded.search(q, 10)[1], mapped.search(q, 10)[1])


@pytest.mark.parametrize("n,opts,message", [
    (4000, {"nlist": 5000}, "--nlist 5000 does not fit 4000 vectors"),
    (4000, {"pq_m": 5}, "--pq-m 5 does not divide the 16 embedding dimensions; use one of 1, 2, 4, 8, 16"),
    (200, {}, "ivfpq needs at least 256 vectors"),
    (4000, {"nlist": 300, "train_size": 100}, "use --ivf-train 300 or more"),
])
def test_ivfpq_refuses_what_cannot_be_built_and_says_what_fits(n, opts, message):
    from fashionkit.metric.index import make_index

    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        make_index("ivfpq", clustered(n), **opts)


# ---- the run index: ivfpq with vectors.npy, --add ----------------------------------------------------------

@pytest.fixture(scope="module")
def metric_run(tmp_path_factory):
    from fashionkit.classify.train import train as classify_train
    from fashionkit.metric.train import train

    root = tmp_path_factory.mktemp("scale-runs")
    clf, _ = classify_train({"model": "simple", "subset": 500, "epochs": 1, "batch_size": 100, "test": False,
                             "runs_dir": str(root), "name": "clf"})
    run, _ = train({"subset": 500, "epochs": 1, "freeze_epochs": 1, "batch_size": 64, "m_per_class": 16,
                    "steps_per_epoch": 1, "eval": False, "dim": 16, "head_hidden": 0, "from": str(clf),
                    "runs_dir": str(root), "name": "emb"})
    return run


@pytest.fixture
def small_reference(monkeypatch):
    """The run's reference set cut to its first 3,000 items, so indexing takes a second."""
    from fashionkit.metric import index as index_module

    full = index_module.reference_set
    monkeypatch.setattr(index_module, "reference_set",
                        lambda ckpt, data_dir=None: tuple(a[:3000] for a in full(ckpt, data_dir)))


def test_ivfpq_run_index_reranks_and_adds_external_images(metric_run, small_reference, cli, capsys, tmp_path,
                                                          test_set):
    from PIL import Image

    run = tmp_path / "emb"
    shutil.copytree(metric_run, run)
    assert cli("metric", "index", run, "--index", "ivfpq", "--nlist", 16, "--pq-m", 4, "--rerank", 50) == 0
    meta = json.loads((run / "index" / "index.json").read_text())
    assert meta["kind"] == "ivfpq" and meta["count"] == 3000 and meta["params"]["pq_m"] == 4
    assert np.load(run / "index" / "vectors.npy").shape == (3000, 16)
    capsys.readouterr()
    item = int(np.load(run / "index" / "index.npz")["source"][7])
    assert cli("metric", "lookup", run, "--train-index", item, "-k", 3, "--json") == 0
    found = json.loads(capsys.readouterr().out)["neighbours"]
    assert found[0]["distance"] < 1e-3  # exact re-ranking: its own copy (or an identical embedding) first
    assert item in [n["dataset_index"] for n in found if n["distance"] < 1e-3]

    shop = tmp_path / "shop"
    shop.mkdir()
    for item in range(3):
        Image.fromarray(255 - test_set[0][item].numpy()).resize((56, 56)).save(shop / f"item{item}.png")
    (shop / "notes.txt").write_text("not an image")  # skipped: directories give their images only
    assert cli("metric", "index", run, "--add", shop, "--batch-size", 2) == 0  # two chunks
    assert "added 3 images" in capsys.readouterr().out
    meta = json.loads((run / "index" / "index.json").read_text())
    assert meta["count"] == 3003 and meta["added"] == 3
    assert np.load(run / "index" / "vectors.npy").shape == (3003, 16)
    # the added rows hold the images' embeddings, in the exact vectors and in the index, with their paths
    from fashionkit.data.images import read_item_images
    from fashionkit.metric.data import embed
    from fashionkit.metric.index import open_run_index
    from fashionkit.metric.model import load_embedder

    net, ckpt = load_embedder(run, "cpu")
    files = sorted(shop.glob("*.png"))
    z = embed(net, read_item_images(files), "cpu").numpy()
    np.testing.assert_allclose(np.load(run / "index" / "vectors.npy")[3000:], z, atol=1e-5)
    index = open_run_index(run, ckpt["model_hash"], rerank=3003)  # re-rank every vector: exact search
    dist, rows = index.search(z, 3003)
    for i, path in enumerate(files):
        row = 3000 + i
        assert index.paths[row] == str(path) and index.labels[row] == -1 and index.source[row] == -1
        assert dist[i][list(rows[i]).index(row)] < 1e-3  # found, at distance ~0 from its own query
    assert cli("metric", "lookup", run, files[1], "-k", 1, "--json") == 0  # a look-up still works after adding
    assert len(json.loads(capsys.readouterr().out)["neighbours"]) == 1

    assert cli("metric", "index", run, "--add", shop, "--index", "flat") == 2
    assert "--add adds to the index as it was built; drop --index" in capsys.readouterr().err
    assert cli("metric", "index", run, "--add", tmp_path / "missing.png") == 2
    assert "no such file or directory" in capsys.readouterr().err
    for argv, says in ((("--add", shop, "--batch-size", 0), "--batch-size must be at least 1, got 0"),
                       (("--batch-size", -1), "--batch-size must be at least 1, got -1"),
                       (("--rerank", -1), "--rerank must be at least 0, got -1")):
        assert cli("metric", "index", run, *argv) == 2
        assert capsys.readouterr().err.strip() == f"error: {says}"
    assert json.loads((run / "index" / "index.json").read_text())["count"] == 3003  # refusals changed nothing

    best = run / "weights" / "best.pt"
    ckpt = torch.load(best, weights_only=False)
    key = next(k for k in ckpt["state_dict"] if k.startswith("head.") and k.endswith("weight"))
    ckpt["state_dict"][key] = ckpt["state_dict"][key] + 0.01  # another model's embeddings would be mixed in
    torch.save(ckpt, best)
    assert cli("metric", "index", run, "--add", shop) == 2
    err = capsys.readouterr().err
    assert "stale index" in err and "Traceback" not in err


# ---- sharded search ---------------------------------------------------------------------------------------

def write_shards(x: np.ndarray, parts: int, tmp_path, kind: str = "flat"):
    """``parts`` index files (and vector files) over consecutive blocks of ``x``; ivfpq shards share one trained
    template, as a catalogue split across machines would."""
    import faiss

    from fashionkit.metric.index import make_index

    template = make_index(kind, x, nlist=16, pq_m=4) if kind == "ivfpq" else None
    index_paths, vector_paths = [], []
    for i, block in enumerate(np.array_split(x, parts)):
        if template is not None:
            shard = faiss.clone_index(template)
            shard.reset()
            shard.add(block)
        else:
            shard = make_index(kind, block)
        index_paths.append(tmp_path / f"shard{i}.faiss")
        vector_paths.append(tmp_path / f"shard{i}.npy")
        faiss.write_index(shard, str(index_paths[-1]))
        np.save(vector_paths[-1], block)
    return index_paths, vector_paths


def test_shards_in_one_process_answer_as_one_index(data, tmp_path):
    from fashionkit.metric.shards import open_shards

    x, q, exact = data
    index_paths, vector_paths = write_shards(x, 4, tmp_path)
    sims, ids = open_shards(index_paths).search(q, 10)
    assert np.array_equal(ids, exact)  # flat shards: exactly one flat index's answer
    (tmp_path / "pq").mkdir()
    pq_paths, pq_vectors = write_shards(x, 4, tmp_path / "pq", kind="ivfpq")
    found = open_shards(pq_paths, pq_vectors, rerank=100, nprobe=16).search(q, 10)[1]
    assert recall(found, exact) > 0.97
    with pytest.raises(UserError, match="2 vector files"):
        open_shards(index_paths, vector_paths[:2])


def test_shard_processes_merge_their_top_k_into_the_exact_answer(data, tmp_path):
    from fashionkit.metric.shards import ShardProcesses, merge_topk

    x, q, exact = data
    index_paths, vector_paths = write_shards(x, 2, tmp_path)
    with ShardProcesses(index_paths, vector_paths, rerank=20) as shards:
        assert shards.ntotal == len(x) and list(shards.offsets) == [0, 2000]
        sims, ids = shards.search(q, 10)
    assert np.array_equal(ids, exact)
    assert np.all(np.diff(sims, axis=1) <= 0)
    # a shard with fewer than k answers (-1) never displaces a real one
    s, i = merge_topk([np.array([[0.9, -np.inf]]), np.array([[0.5, 0.4]])], [np.array([[3, -1]]), np.array([[7, 8]])],
                      3)
    assert i.tolist() == [[3, 7, 8]]
