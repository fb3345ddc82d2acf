"""The defaults of ``detect train``, ``detect video`` and ``detect eval`` (no heavy imports: ``--help`` stays fast).

The training defaults are the recipe for a 2-core CPU: 320-px scenes, the classifier trunk behind a stride-4 stem
(an average-pool and a Focus stem: ~1.9 GFLOPs per 320x320 frame, ~12.7 training images/s on a Zen 3), batch 16,
10 epochs with the backbone frozen for the first and a 1-epoch warm-up. Stride 4 against 2 on the same CPU
budgets (BENCHMARKS.md, "Detector"): test mAP50 0.563 / 0.719 / 0.803 after 15 / 30 / 60 minutes against 0.388 /
0.635 / 0.785, and the video runs ~1.5x faster; the smallest items reach the trunk at 10 px instead of 21, so on a
GPU, where epochs are cheap, ``--stem 2`` is the one measured (test mAP50 0.923 in 3 minutes on an H200).
``--minutes`` gives a wall-clock budget instead (ultralytics re-plans the epochs after the first).
"""

from fashionkit.config import Opt
from fashionkit.device import DEVICE_HELP

TRAIN_OPTIONS: dict[str, Opt] = {
    "from": Opt(None, "initial backbone: a classify run directory (runs/classify/<run>), a detect run directory "
                "(its detector fine-tuned as a whole, e.g. the bundled fashionkit/models/detector: to train longer or "
                "on other scenes), none (same shape, random init) or an ultralytics model YAML such as yolov8n.yaml "
                "(stock model, random init)", type=str),
    "data": Opt(None, "dataset from `detect make-data`: its directory or data.yaml; none means <runs>/detect/data",
                type=str),
    "epochs": Opt(10, "epochs (with --minutes only a first plan: ultralytics re-plans them after the first epoch)",
                  least=1),
    "minutes": Opt(0.0, "wall-clock training budget in minutes; ultralytics re-plans the epochs to fit (0 = off)",
                   least=0),
    "imgsz": Opt(320, "training and validation image size (a multiple of 32)"),
    "batch": Opt(16, "batch size", least=1),
    "freeze_epochs": Opt(1, "epochs to train with the backbone (copied, or its random twin with --from none) frozen, "
                         "BatchNorm statistics too, before fine-tuning all of it; 0 = never frozen; ignored for "
                         "stock YAML models and detect runs", least=0),
    "stem": Opt(4, "input downscale before the copied trunk: 4 (avg-pool + Focus, default; half the GFLOPs of 2), "
                "2 (Focus; sharper for small items, for long or GPU runs) or 1 (none)",
                choices=(1, 2, 4)),
    "width": Opt(1.0, "channel multiplier of the new layers (P4/P5 stages, neck; 1.0 = YOLOv8n's 64/128/256)"),
    "classifier_model": Opt("vgg-small", "with --from none: the classifier whose trunk shape the backbone copies"),
    # BENCHMARKS.md, "A detector trained for boxes alone, named by the reader": in 15 minutes on the realistic scenes
    # it finds the items as well as the ten-class detector does in 55 (test mAP50 with classes ignored 0.837 vs
    # 0.727 in the same 15), and read by the crop reader it names them better (0.670 vs 0.577)
    "one_class": Opt(False, "train one class, item (ultralytics' single_cls): the detector only finds the items and "
                     "the crop reader (RUN/reader) names them, in `detect eval` and in `detect video` (each track, or "
                     "with --no-track each box); --from a detect run of ten classes keeps all of it but the last "
                     "layer of its class branches"),
    "patience": Opt(5, "early stopping: epochs without validation fitness improvement (0 = off)", least=0),
    "close_mosaic": Opt(2, "turn mosaic augmentation off for the last N epochs", least=0),
    # ultralytics warms up for 3 epochs; a CPU budget buys only a handful, so 3 would keep the learning rate low
    # for most of the run (at 7 images/s, 3 epochs of 3,000 scenes is ~20 minutes)
    "warmup_epochs": Opt(1.0, "epochs of learning-rate warm-up (ultralytics' default is 3)", least=0),
    "optimizer": Opt("auto", "ultralytics optimizer: auto, SGD, AdamW, Adam, ... (auto picks AdamW for short runs)"),
    "lr0": Opt(0.0, "initial learning rate (0 = the optimizer's default; `auto` chooses its own)"),
    "fraction": Opt(1.0, "fraction of the training scenes to use"),
    "cache": Opt(False, "keep the decoded training images in RAM"),
    "workers": Opt(0, "dataloader worker processes (ultralytics uses 0 on CPU regardless)", least=0),
    "plots": Opt(True, "training plots: labels, batches, curves, confusion matrix, PR curves"),
    "test": Opt(True, "evaluate best.pt on the dataset's test split at the end"),
    "extra": Opt("", "further ultralytics train arguments as key=value[,key=value...], e.g. mosaic=0.5,degrees=5"),
    "seed": Opt(0, "random seed"),
    "reader_epochs": Opt(8, "after training from a classify run (or a detect run made from one): epochs of `detect "
                         "reader`, the classifier fine-tuned on the training scenes' crops into RUN/reader for --track "
                         "(about 5 minutes for 3,000 scenes on a 2-core CPU, outside --minutes; 0 = none)", least=0),
    "device": Opt("auto", DEVICE_HELP + "; several GPUs as 0,1,... (ultralytics' multi-GPU DDP; each worker "
                  "starts from RUN/initial.pt, the prepared detector)"),
    "threads": Opt(0, "CPU threads for torch (0 = all cores)", least=0),
    "name": Opt(None, "run name (none: train, train2, ...)", type=str),
    "runs_dir": Opt(None, "root of run directories (none: $FASHIONKIT_RUNS or ./runs)", type=str),
}

VIDEO_OPTIONS: dict[str, Opt] = {
    "weights": Opt(None, "detector: a detect run directory (uses its best.pt), an ultralytics detection .pt or its "
                   ".onnx export; none: the detector bundled with fashionkit",
                   type=str),
    "out": Opt(None, "output directory; none means a new <runs>/detect/video-<input name>", type=str),
    # none: 0.25, and 0.1 with --track on a video, chosen on validation clips with the bundled detector: the
    # tracker (BoT-SORT and ByteTrack alike) starts tracks only from detections of 0.25 or more and extends them
    # with weaker ones, which a 0.25 threshold never lets through (F1 with the track's class 0.705 / 0.561 at 0.25
    # -> 0.730 / 0.597 at 0.15; BENCHMARKS.md, "Confidence threshold and shortest track"); with NMS across classes
    # 0.1 (F1 0.797 / 0.662 / 0.612 at 0.15 with NMS per class -> 0.807 / 0.655 / 0.630 on three clips, boxes
    # found and box precision up on all three; BENCHMARKS.md, "One box per item: NMS across classes")
    "conf": Opt(None, "confidence threshold; none: 0.1 with --track on a video (the tracker starts tracks at 0.25 "
                "and extends them with weaker detections), else 0.25", type=float),
    "iou": Opt(0.7, "IoU threshold of non-maximum suppression"),
    # per class (ultralytics' default), 11-15% of the bundled detector's boxes on three validation clips were a
    # second box of another class on the same item (IoU ~0.95): a false box every time, with --track a second track
    "agnostic_nms": Opt(True, "non-maximum suppression across classes: of two boxes of different classes on one "
                        "item only the more confident stays (--no-agnostic-nms: per class)"),
    "imgsz": Opt(320, "inference size of the longer side (a multiple of 32)"),
    "stride": Opt(1, "process every Nth frame", least=1),
    "max_frames": Opt(0, "stop after this many processed frames (0 = all)", least=0),
    "batch": Opt(8, "frames per forward pass", least=1),
    # on: `detect video input.mp4` is the product's command, and tracking names items better on every test clip,
    # precision and recall with class alike (10 s / 60 s seed 3 / 60 s seed 4, bundled models, 2-core Zen 2: per
    # frame 0.866 / 0.847, 0.664 / 0.577, 0.599 / 0.559 at 50.2 / 50.5 / 49.3 frames/s; tracked 0.891 / 0.878,
    # 0.870 / 0.685, 0.710 / 0.645 at 35.8 / 37.5 / 31.8; BENCHMARKS.md, "Tracking by default")
    "track": Opt(True, "track items across frames (ultralytics BoT-SORT) and give each track one class from its "
                 "frames' votes, its crops read by --classifier and, for unsure hard classes, --metric's kNN "
                 "resolver; a folder of images: each detection is its own track, read by --classifier. "
                 "--no-track: every frame on its own, named by the detector alone (faster, flickers)"),
    # BoT-SORT (ByteTrack's association plus camera-motion compensation by sparse optical flow, no re-identification):
    # with NMS across classes it won two of three validation clips by F1 with the track's class (0.807 / 0.655 /
    # 0.630 -> 0.819 / 0.649 / 0.688) at about 33-40 instead of 47-53 frames/s end to end on a 2-core CPU
    # (BENCHMARKS.md, "Tracker, again: BoT-SORT")
    "tracker": Opt("botsort.yaml", "tracker config with --track: botsort.yaml, bytetrack.yaml (faster) or a YAML "
                   "file of either's settings"),
    # --track's class decision (detect/tracks.py)
    "classifier": Opt("auto", "with --track: classify run that reads each track's crops: RUN, auto (the detector's "
                      "crop reader, RUN/reader from `detect reader`, if it has one, else the classify run it was "
                      "trained --from, if it exists; for the bundled detector its reader) or none (the detector's "
                      "votes alone); a one-class detector's names every box, with or without --track",
                      type=str),
    "metric": Opt("auto", "with --track: metric run (with its FAISS index) whose kNN vote re-decides tracks of its "
                  "hard classes with a small top-1/top-2 margin: RUN, auto (the newest indexed metric run made from "
                  "the classifier; the bundled embedding for the bundled detector) or none", type=str),
    "crops": Opt(8, "with --track: crops per track read by the classifier and the resolver (0: votes only)",
                  least=0),
    # 0.2: chosen on two validation clips with the bundled detector (four hours, the last on 9,000 scenes): F1 with
    # the track's class 0.705 / 0.561 at 0.2, 0.705 / 0.555 at 0.1, 0.656 / 0.579 at 0.35 (BENCHMARKS.md, "The
    # bundled detector now"); with the three-hour detector 73 of 100 tracks right at 0.2, 71 at 0.35, 67 at 0.5
    # (with the two-hour detector 0.5 had been best, and 8 crops named one track more than 4 there, 16 none).
    # 0.05: the kNN resolver changed 5 tracks at margin 0.2, all to a wrong class, 2 at 0.1 (both wrong), none at
    # 0.05 (BENCHMARKS.md, "The crop reader")
    "vote_weight": Opt(0.2, "with --track: weight of the detector's per-frame votes against the classifier's reading "
                       "of the crops (1: votes only)"),
    "resolve_margin": Opt(0.05, "with --track: tracks of a hard class whose top-1 minus top-2 probability is below "
                          "this go to the kNN resolver"),
    # 0.45: on the three validation clips F1 with the track's class 0.819 / 0.649 / 0.688 -> 0.814 / 0.684 / 0.698
    # (0.4: 2.174 summed, 0.45: 2.196, 0.5: 2.195); of the 14 tracks it left out there 6 were false, 5 named wrong,
    # 3 named right; box recall is what it costs (BENCHMARKS.md, "Tracks the reader cannot name")
    "min_read_conf": Opt(0.45, "with --track on a video: leave out tracks in whose crops the classifier finds no "
                         "class with a mean probability of at least this: boxes on things that are not fashion "
                         "items, or items seen too poorly to name (0 = keep every track); without --track, a "
                         "one-class detector's boxes likewise"),
    # a gate: on the three validation clips F1 with the track's class 2.255 -> 2.378 summed (the seed-5 clip's six
    # false tracks, the photograph's own things, all left out); on the three test clips +0.000 / +0.000 / +0.001
    # (BENCHMARKS.md, "A reader that knows background"); the bundled detector ships one, fashionkit/models/detector/gate
    "gate": Opt("auto", "with --track on a video: a crop reader that also knows what is not an item: tracks whose "
                "crops it calls not an item with a mean probability of --max-not-item or more are left out; the "
                "tracks' classes still come from --classifier. RUN (a classify run of 11 outputs), auto (the "
                "detector's gate, RUN/gate from `detect reader RUN --background 2 --role gate`, if it has one; the "
                "bundled detector's for the bundled detector) or none", type=str),
    "max_not_item": Opt(0.5, "with --gate: leave out tracks whose crops the gate calls not an item with at least this "
                        "mean probability"),
    # 10: chosen with the conf above on the two validation clips (3, 6 and 10 tried: 10 best on both; with the
    # one-hour detector 3 had been, BENCHMARKS.md, "Short tracks and gaps"). fill 30: every gap the tracker bridges
    # (BoT-SORT keeps a lost track about a second); on the three validation clips F1 with the track's class 0.814 /
    # 0.684 / 0.698 -> 0.845 / 0.701 / 0.710 (5: 2.216 summed, 15: 2.223, 30: 2.255, 60 and 120 the same as 30), on
    # the three test clips up too, for class precision -0.003 to -0.013 (BENCHMARKS.md, "Gaps filled, again"; with
    # the one-hour detector and ByteTrack it had cost more precision than it gained, "Short tracks and gaps")
    "min_track_frames": Opt(10, "with --track on a video: leave out tracks seen in fewer frames than this (a false "
                            "detection flashes for a frame or two; at most the frames processed, so a short clip "
                            "keeps its items; 1 = keep every track)", least=1),
    "fill_gaps": Opt(30, "with --track on a video: fill a track's gaps of up to this many frames (the detector "
                     "missed the item, the tracker kept it) with boxes interpolated between the detections either "
                     "side (30: every gap the tracker bridges; 0 = off)", least=0),
    # off: at 60, F1 with the track's class 0.819 / 0.649 / 0.688 -> 0.829 / 0.677 / 0.688 on the validation clips
    # but 0.669 -> 0.643 on a 60 s test clip: 1-5 joins a clip, each swinging a long track's class either way
    # (BENCHMARKS.md, "Broken tracks stitched")
    "stitch_gap": Opt(0, "with --track on a video: join a track that starts at most this many frames after another "
                      "ended, near where that one was heading and of a like size, to it (0 = off)", least=0),
    "save_video": Opt(True, "write the annotated video (or annotated images for image input)"),
    "gt": Opt(None, "ground truth of a `detect make-video` clip (its .json): adds precision/recall at IoU 0.5, and "
              "with --track class flicker and per-track class accuracy", type=str),
    "min_visible": Opt(0.5, "with --gt: items less visible than this (the share in the frame and not covered) "
                       "are ignored (neither missed nor false)"),
    "device": Opt("auto", DEVICE_HELP),
    "backend": Opt("auto", "inference engine: torch, onnx (ONNX Runtime on the CPU; a .pt is exported once to the "
                   ".onnx beside it) or auto (onnx on a CPU where onnxruntime is installed, torch on a GPU)",
                   choices=("auto", "torch", "onnx")),
    "threads": Opt(0, "CPU threads for torch (0 = all cores); ONNX Runtime uses all cores", least=0),
}

# `detect reader` (detect/reader.py): the classifier fine-tuned on crops of the detector's training scenes. 8 epochs
# of 2 jittered crops per box: on the bundled data the test crops named right went 61% -> 78% after 4 epochs, 80%
# after 10 (BENCHMARKS.md, "The crop reader")
READER_OPTIONS: dict[str, Opt] = {
    "data": Opt(None, "dataset from `detect make-data` (directory or data.yaml); none: the one RUN trained on",
                type=str),
    "from": Opt(None, "classify run to fine-tune; none: the one RUN was trained --from", type=str),
    "epochs": Opt(8, "epochs over the training crops", least=1),
    "lr": Opt(0.02, "peak learning rate (one-cycle, Nesterov SGD)"),
    "batch_size": Opt(128, "crops per step", least=1),
    "copies": Opt(2, "crops cut per training box, each from a differently jittered box", least=1),
    "jitter": Opt(0.08, "box jitter: standard deviation of the centre shift and size change, as a fraction of the "
                  "box (a detector's boxes are a few pixels off)"),
    "label_smoothing": Opt(0.05, "label smoothing of the loss"),
    "background": Opt(0, "crops of background per training scene (the detector's own boxes there first, then random "
                      "ones), taught as an 11th class, not an item: as the reader, a track it calls that reads "
                      "under --min-read-conf and is left out; as a gate (--role gate), only that class is asked; 0: "
                      "a reader of the ten classes only", least=0),
    # the bundled detector's gate: --background 2 --role gate on its own 9,000 training scenes (BENCHMARKS.md, "A
    # reader that knows background")
    "role": Opt("reader", "what is made: reader (RUN/reader, which `detect video --classifier auto` names tracks "
                "with) or gate (RUN/gate, which `detect video --gate auto` asks which tracks are not items; needs "
                "--background)", choices=("reader", "gate")),
    "seed": Opt(0, "random seed"),
    "threads": Opt(0, "CPU threads for torch (0 = all cores)", least=0),
}

EVAL_OPTIONS: dict[str, Opt] = {
    "data": Opt(None, "dataset directory or data.yaml; none means the one the run trained on", type=str),
    "split": Opt("test", "dataset split for mAP", choices=("test", "val")),
    "imgsz": Opt(0, "image size (0 = the run's training size)"),
    "batch": Opt(16, "batch size", least=1),
    # the detector's boxes, each read by the classifier as a track's crops are: on the realistic test scenes the
    # bundled detector's mAP50 0.686 -> 0.803 (BENCHMARKS.md, "The detector's boxes read by the crop reader")
    "classifier": Opt("auto", "classify run that re-reads the class of each box for a second mAP (cut out and read "
                      "as `detect video --track` reads a track's crops): RUN, auto (the detector's crop reader, as "
                      "`detect video --classifier auto` chooses) or none (the detector's own classes only)", type=str),
    # the gate read on the realistic scenes: bundled detector, validation mAP50 0.816 -> 0.821, test 0.803 -> 0.811
    # (confidence times the item share; squared or its root: 0.820 on validation; BENCHMARKS.md, "The gate in detect
    # eval")
    "gate": Opt("auto", "with --classifier: a crop reader that also knows what is not an item, as `detect video "
                "--gate`: each read box's confidence is multiplied by the share of its crop the gate calls an item. "
                "RUN (a classify run of 11 outputs), auto (the detector's gate, RUN/gate, if it has one; the bundled "
                "detector's for the bundled detector) or none", type=str),
    "vote_weight": Opt(VIDEO_OPTIONS["vote_weight"].default, "with --classifier: weight of the detector's class scores "
                       "against the classifier's reading (as `detect video --vote-weight`)"),
    "video": Opt(None, "also run on a `detect make-video` clip and score it against its .json ground truth",
                 type=str),
    "video_imgsz": Opt(320, "inference size for --video"),
    "conf": Opt(None, "confidence threshold for --video; none: `detect video`'s own (0.1, since it tracks a video by "
                "default)", type=float),
    "min_visible": Opt(0.5, "with --video: items less visible than this are ignored"),
    "plots": Opt(True, "PR curves and confusion matrix of the mAP evaluation"),
    "out": Opt(None, "output directory; none means RUN/eval/<split> (for the bundled detector "
                 "<runs>/bundled/detector/eval/<split>)", type=str),
    "device": Opt("auto", DEVICE_HELP),
    "threads": Opt(0, "CPU threads for torch (0 = all cores)", least=0),
}
