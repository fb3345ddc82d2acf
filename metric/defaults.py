"""The options of the ``metric`` commands, in one place (no heavy imports, so ``--help`` is fast)."""

from fashionkit.config import DATA_DIR_HELP, Opt
from fashionkit.device import AMP_CHOICES, DEVICE_HELP

MINERS = ("distance-weighted", "batch-hard", "hard", "semihard")
INDEX_KINDS = ("flat", "ivf", "hnsw", "ivfpq")
HARD_CLASSES = "0,2,4,6"  # T-shirt/top, pullover, coat, shirt: the classes a classifier confuses most

_COMMON = {
    "device": Opt("auto", DEVICE_HELP),
    "data_dir": Opt(None, DATA_DIR_HELP, type=str),
}

TRAIN_OPTIONS: dict[str, Opt] = {
    "from": Opt(None, "classify run whose convolutional trunk initialises the embedding net; none: start from "
                "scratch; not given: the newest finished classify run under the runs root, else the bundled "
                "classifier", type=str),
    "hard_classes": Opt(HARD_CLASSES, "the classes to separate, by id or name (e.g. 0,2,coat,shirt)"),
    "all_classes": Opt(False, "train, evaluate and index on all ten classes instead of the hard ones"),
    "model": Opt("vgg-small", "trunk architecture when starting from scratch (ignored with --from)"),
    "dim": Opt(64, "embedding dimensions (the distance-weighted miner degrades above ~128, see mining.py)", least=2),
    "head_hidden": Opt(256, "hidden width of the projection head (0: a single linear layer)", least=0),
    "miner": Opt("distance-weighted", "triplet miner: distance-weighted (PML DistanceWeightedMiner), batch-hard "
                 "(PML BatchHardMiner: hardest positive and negative per anchor), hard or semihard "
                 "(PML TripletMarginMiner)", choices=MINERS),
    "cutoff": Opt(0.5, "distance-weighted miner: distances below this are treated as this (caps the weight of "
                  "the nearest negatives)"),
    "nonzero_loss_cutoff": Opt(1.4, "distance-weighted miner: negatives farther than this are never drawn "
                               "(on unit vectors distances lie in [0, 2])"),
    "margin": Opt(0.2, "triplet margin (also what the hard/semihard miners measure against)"),
    "epochs": Opt(10, "number of epochs", least=1),
    "freeze_epochs": Opt(1, "keep the trunk frozen (weights and BatchNorm statistics) for this many first epochs",
                         least=0),
    "batch_size": Opt(128, "batch size (a multiple of --m-per-class)", least=2),
    "m_per_class": Opt(32, "items per class in a batch (PML MPerClassSampler)", least=2),
    "steps_per_epoch": Opt(0, "batches per epoch (0: training items / batch size)", least=0),
    "lr": Opt(1e-3, "AdamW learning rate of the projection head (cosine-decayed per batch)"),
    "trunk_lr_scale": Opt(0.1, "the trunk's learning rate as a fraction of --lr once unfrozen"),
    "weight_decay": Opt(1e-4, "AdamW weight decay"),
    "augment": Opt("flip", "augmentation preset (see `fashionkit data presets`)"),
    "subset": Opt(0, "train on a stratified subset of N items of the training split (0 = all)", least=0),
    "val_size": Opt(5000, "validation items held out of the 60k training set when starting from scratch "
                    "(with --from the classify run's split is used)"),
    "monitor": Opt("val_map_at_r", "what best.pt follows", choices=("val_map_at_r", "val_precision_at_1")),
    "eval": Opt(True, "evaluate before/after on the test split at the end (precision@1, R-precision, MAP@R, t-SNE)"),
    "eval_subset": Opt(0, "evaluate on a stratified subset of N reference and N test items (0 = all)", least=0),
    "plot_points": Opt(1500, "test items in the t-SNE plot (0: no plot)", least=0),
    "seed": Opt(0, "random seed"),
    "amp": Opt("auto", "mixed precision: auto, bf16, fp16, off", choices=AMP_CHOICES),
    "threads": Opt(0, "CPU threads for torch (0 = torch's default)", least=0),
    "name": Opt(None, "run name (default: train, train2, ...)", type=str),
    "runs_dir": Opt(None, "root of run directories (default: $FASHIONKIT_RUNS or ./runs)", type=str),
    **_COMMON,
}

INDEX_OPTIONS: dict[str, Opt] = {
    "index": Opt("flat", "flat: exact inner product; ivf: inverted lists (IVFFlat); hnsw: graph (HNSWFlat); "
                 "ivfpq: inverted lists of product-quantised codes (IVFPQ, --pq-m bytes a vector) for catalogues "
                 "whose float vectors do not fit in RAM", choices=INDEX_KINDS),
    "nlist": Opt(0, "ivf, ivfpq: number of inverted lists (0: 4*sqrt(N), at most N/39)"),
    "nprobe": Opt(0, "ivf, ivfpq: lists searched per query, recall vs speed (0: 32, or all lists if fewer)"),
    "ivf_train": Opt(100_000, "ivf, ivfpq: vectors its k-means learns the lists from (a random sample; 0 = all)"),
    "pq_m": Opt(0, "ivfpq: sub-quantisers = bytes per vector; must divide the embedding dimensions (0: dim/2)"),
    "opq": Opt(False, "ivfpq: learn an OPQ rotation first (spreads the variance evenly over the sub-quantisers)"),
    "rerank": Opt(100, "ivfpq: re-order this many PQ candidates per query by exact distance, read from the "
                  "memory-mapped RUN/index/vectors.npy (0: no re-ranking, no vectors file)", least=0),
    "hnsw_m": Opt(32, "hnsw: neighbours per node"),
    "ef_construction": Opt(80, "hnsw: candidate list size while building"),
    "ef_search": Opt(64, "hnsw: candidate list size while searching (recall vs speed)"),
    "batch_size": Opt(1000, "images embedded per batch", least=1),
    **_COMMON,
}

LOOKUP_OPTIONS: dict[str, Opt] = {
    "k": Opt(10, "number of neighbours"),
    "test_index": Opt(None, "query with this item of the official test set", type=int),
    "train_index": Opt(None, "query with this item of the official training set (a reference item: its own copy "
                       "comes back first)", type=int),
    "out": Opt(None, "PNG strip to write (default: RUN/lookups/<query>.png)", type=str),
    "json": Opt(False, "print the result as JSON instead of a table"),
    **_COMMON,
}

RESOLVE_OPTIONS: dict[str, Opt] = {
    "classifier": Opt(None, "classify run whose predictions are re-decided (required with a RUN; without one: "
                      "the bundled classifier)", type=str),
    "k": Opt(10, "neighbours in the vote"),
    "tta": Opt(False, "the classifier's probabilities averaged over the image and its mirror image, each also "
                      "shifted a pixel both ways (as `classify eval --tta`), on validation and test alike"),
    "threshold": Opt(None, "margin threshold to use instead of the validation sweep", type=float),
    "sweep_step": Opt(0.05, "step of the threshold sweep over [0, 1] on the validation split"),
    "out": Opt(None, "directory for resolve.json and the confusion PNGs (default: the metric run)", type=str),
    "batch_size": Opt(1000, "images per batch"),
    **_COMMON,
}
