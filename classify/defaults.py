"""The defaults of ``classify train``, in one place (no heavy imports, so ``--help`` is fast)."""

from fashionkit.config import DATA_DIR_HELP, Opt
from fashionkit.device import AMP_CHOICES, DEVICE_HELP

# images per forward pass when scoring (validation, test, eval, predict, and metric train's embeddings): at 256 the
# default's widest activation (24 x 28 x 28 floats an image) is 19 MiB, under the 32 MiB up to which freed blocks are
# reused (`fashionkit.device.keep_freed_memory`); at 500 each batch's were page-faulted in again (BENCHMARKS.md,
# "Freed memory kept for the next step")
EVAL_BATCH = 256

OPTIMIZERS = ("sgd", "adam", "adamw", "nadam", "adamax", "rmsprop", "muon")
SCHEDULERS = ("onecycle", "cosine", "step", "plateau", "none")

# The one place for classify train's defaults. The default recipe is the time-to-accuracy one (BENCHMARKS.md,
# "Time to accuracy"): vgg-fast (a frozen whitening first conv), 17 epochs of which the first 10 grow the images
# from 16 to 27 px (progressive resizing; reaching full size at 60% of the run rather than 75% won validation on all
# three seeds measured, step 29), flip + 2 px random crop, no dropout, and a test score averaged over six views
# (flip x 1-px shifts), label smoothing 0.05. Every value can be overridden by a flag or a --config YAML.
TRAIN_OPTIONS: dict[str, Opt] = {
    "model": Opt("vgg-fast", "model name (see `classify models`)"),
    "model_opts": Opt("", "extra model options as key=value[,key=value...], e.g. width=48,fc_layers=2"),
    "activation": Opt(None, "activation for models that take one (model default when unset): relu, leaky_relu, elu, "
                            "selu, tanh, gelu, silu", type=str),
    "dropout": Opt(None, "dropout rate for models that take one (model default when unset)", type=float),
    "epochs": Opt(17, "number of epochs", least=1),
    "batch_size": Opt(128, "batch size", least=1),
    "optimizer": Opt("sgd", "optimizer (muon: the CIFAR-10 speedruns' Muon for the conv filters, Nesterov SGD for "
                            "the rest)", choices=OPTIMIZERS),
    "sam": Opt(False, "wrap the optimizer in SAM (sharpness-aware minimisation; two passes per step)"),
    "sam_rho": Opt(0.05, "SAM neighbourhood radius"),
    "lr": Opt(0.1, "(peak) learning rate"),
    "momentum": Opt(0.9, "momentum (sgd, rmsprop, muon); the onecycle schedule cycles it 0.05 either side, high "
                         "while the rate is low (0.95 to 0.85 and back at 0.9)"),
    "nesterov": Opt(True, "Nesterov momentum (sgd, muon)"),
    "muon_lr": Opt(0.3, "muon: the conv filters' learning rate as a multiple of --lr (the rest trains by Nesterov SGD "
                        "at --lr); for nets with BatchNorm after every conv"),
    "norm_lr": Opt(1.0, "learning rate of the BatchNorm weights and biases (and other biases) as a multiple of --lr"),
    "weight_decay": Opt(5e-4, "L2 weight decay (decoupled for adamw); not applied to biases and norms"),
    "l1": Opt(0.0, "L1 penalty on weights"),
    "label_smoothing": Opt(0.05, "label smoothing of the cross-entropy loss"),
    "scheduler": Opt("onecycle", "learning-rate schedule", choices=SCHEDULERS),
    "step_size": Opt(10, "epochs between decays (step scheduler)", least=1),
    "gamma": Opt(0.1, "decay factor (step and plateau schedulers)"),
    "resize_from": Opt(16, "progressive resizing: train the first epochs on images scaled down to this size (px), "
                          "growing to full size by --resize-until; 0 = off"),
    "resize_until": Opt(0.6, "fraction of the epochs after which progressive resizing reaches full size"),
    "ema": Opt(0.0, "keep an exponential moving average of the weights with this decay per step (e.g. 0.99) and "
                    "validate, keep and test the averaged weights; 0 = off"),
    "tta": Opt(True, "test-time augmentation for the final test score: average the image and its mirror image, "
                      "each also shifted a pixel both ways (validation, every epoch, scores the image alone)"),
    "patience": Opt(0, "early stopping: stop after this many epochs without --monitor improving (0 = off; needs "
                       "--monitor val_loss or val_acc)", least=0),
    # last: the default's one-cycle schedule anneals the rate to zero for its last epoch, and picking an epoch by
    # validation picked noise: on a Zen 4, seed 0's epoch 16 had a validation loss 0.0001 below epoch 17's, so
    # best.pt and the final test were epoch 16's, 93.82% against the end's 94.05% (BENCHMARKS.md, step 54)
    "monitor": Opt("last", "what best.pt follows (the weights the final test scores and later stages start from): "
                           "last (each epoch's weights in turn: the end of the schedule) or the epoch with the best "
                           "val_loss or val_acc (what --patience's early stopping needs)",
                   choices=("last", "val_loss", "val_acc")),
    "augment": Opt("flip-crop", "augmentation preset (see `fashionkit data presets`)"),
    "final_augment": Opt("", "a lighter augmentation preset for the last --final-augment-epochs epochs (e.g. "
                             "flip-crop after flip-crop-erase: the end of the run learns the clean images, as "
                             "ultralytics' close_mosaic does); empty = --augment throughout"),
    "final_augment_epochs": Opt(0, "how many of the last epochs train with --final-augment (0 = none)"),
    "val_size": Opt(5000, "validation items held out of the 60k training set (stratified)"),
    "subset": Opt(0, "train on a stratified subset of N items (val shrinks to N/5); 0 = all", least=0),
    "seed": Opt(0, "random seed (same seed and device give the same metrics on CPU)"),
    "device": Opt("auto", DEVICE_HELP),
    "amp": Opt("auto", "mixed precision: auto (bf16 where it pays: GPUs, CPUs with AMX or AMD AVX-512 bf16), "
                       "bf16, fp16, off", choices=AMP_CHOICES),
    "channels_last": Opt(True, "channels-last memory format for convolutions"),
    "compile": Opt(False, "torch.compile the model (slower start, can be faster per step)"),
    "threads": Opt(0, "CPU threads for torch (0 = torch's default)", least=0),
    "test": Opt(True, "evaluate the best weights on the test split at the end"),
    "tensorboard": Opt(False, "also log to TensorBoard (if installed)"),
    "name": Opt(None, "run name (default: train, train2, ...)", type=str),
    "runs_dir": Opt(None, "root of run directories (default: $FASHIONKIT_RUNS or ./runs)", type=str),
    "data_dir": Opt(None, DATA_DIR_HELP, type=str),
}
