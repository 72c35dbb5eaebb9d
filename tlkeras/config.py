"""The run configuration: one validated object from kwargs, YAML or `--set` overrides.

Every argument of `tlkeras.build_and_finetune` is a key of `FinetuneConfig`, and
a key of the YAML file with the same name. Precedence is
defaults < YAML < explicit arguments/flags. Unknown keys and values of the wrong
type or range raise `ConfigError` naming the key, the bad value and what is
valid, so nothing downstream ever sees an unchecked value.

Example:

>>> cfg = FinetuneConfig.from_dict({"backbone": "mobilenetv2", "stage2": {"epochs": 3}})
>>> cfg = cfg.with_overrides(["stage2.learning_rate=1e-4", "head.dropout=0.3"])
>>> (cfg.stage2.epochs, cfg.stage2.learning_rate, cfg.head.dropout)
(3, 0.0001, 0.3)
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import yaml

from tlkeras.errors import ConfigError, TlkerasError, closest, did_you_mean

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "one_cycle")
METHODS = ("full", "lora", "bitfit")  # tlkeras.methods.METHODS: how stage 2 trains the backbone
# LoRA's default targets: KerasHub's attention projections, "query"/"value" (BERT-class encoders, ViT)
# or "query_dense"/"value_dense" (other families), as its own Backbone.enable_lora picks them.
LORA_TARGETS = ("query", "value", "query_dense", "value_dense")
POOLINGS = ("avg", "max")
FLIPS = ("horizontal", "vertical", "horizontal_and_vertical")
CACHE_CHOICES = ("auto", True, False)
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")
# Pretrained classifiers take a few hundred pixels a side (EfficientNetB7: 600); 4096 leaves room and
# refuses sizes whose first batch would exhaust memory minutes later.
MAX_IMAGE_SIZE = 4096
# Images declaring more pixels (height x width) are refused before decoding (decompression bombs):
# Pillow's MAX_IMAGE_PIXELS default, ~89.5 megapixels. See tlkeras.data.images.decode_image.
MAX_IMAGE_PIXELS = 89_478_485
TASK_CHOICES = ("auto", "single_label", "multi_label", "regression")  # tlkeras.tasks.TASKS, plus auto
REGRESSION_LOSSES = ("huber", "mse", "mae")  # tlkeras.tasks.regression.LOSSES
THRESHOLDS = ("per_class", "global")  # or a number in (0, 1)
# Test-time augmentation: the views whose probabilities are averaged (`Inputs.tta_views`); none = the input alone;
# "crops:N" (N in 1..MAX_TTA_CROPS) also takes N zoomed crops.
TTA_CHOICES = ("none", "flip", "flip_all", "crops:N")
MAX_TTA_CROPS = 8


def tta_problem(value) -> Optional[str]:
    """What is wrong with a `tta` value, or None.

    >>> tta_problem("crops:4"), tta_problem("flip"), tta_problem("crops:12")
    (None, None, "'crops:12': crops:N takes N from 1 to 8")
    """
    if value in TTA_CHOICES[:3]:
        return None
    match = re.fullmatch(r"crops:(\d+)", str(value))
    if match is None:
        return f"{value!r} is not valid: use one of none, flip, flip_all or crops:N (N zoomed crops, e.g. crops:4)"
    if not 1 <= int(match.group(1)) <= MAX_TTA_CROPS:
        return f"{value!r}: crops:N takes N from 1 to {MAX_TTA_CROPS}"
    return None


# === Sections ===


@dataclass
class HeadConfig:
    """The new classification head put on top of the backbone.

    Args:
        hidden_units: sizes of optional hidden Dense layers (ReLU), in order.
        dropout: dropout rate before each Dense layer of the head, in [0, 1).
        l2: L2 factor on the head's kernels (the lambda * ||theta||^2 term on new parameters).
        pooling: "avg" or "max" global pooling of the backbone's feature map.
    """

    hidden_units: list[int] = field(default_factory=list)
    dropout: float = 0.2
    l2: float = 0.0
    pooling: str = "avg"

    def validate(self, prefix: str = "head") -> None:
        if not isinstance(self.hidden_units, list) or not all(
            isinstance(u, int) and not isinstance(u, bool) and u > 0 for u in self.hidden_units
        ):
            raise ConfigError(f"{prefix}.hidden_units: {self.hidden_units!r} is not valid: use a list of positive "
                              "ints, e.g. [256].")
        _check_number(f"{prefix}.dropout", self.dropout, 0.0, 1.0, low_open=False, high_open=True)
        _check_number(f"{prefix}.l2", self.l2, 0.0, math.inf, low_open=False)
        _check_choice(f"{prefix}.pooling", self.pooling, POOLINGS)


@dataclass
class StageConfig:
    """One training stage: which layers train, with what optimizer, for how long.

    Args:
        epochs: epochs of this stage; 0 skips it; "auto" (the default): as many as the data's size needs - at
            least 5, and enough optimizer steps (stage 1: 200, on cached features; stage 2: 300), at most 100
            (`tlkeras.training.budget`): 10-50 images per class gained 5 to 20 points against 5 epochs; the log
            says what it chose and run.json records it.
        learning_rate: peak rate. In stage 2, None means stage 1's rate / 3.
        optimizer: "adam", "adamw" or "sgd" (with `momentum`).
        momentum: SGD momentum.
        weight_decay: decoupled weight decay (adamw, sgd).
        schedule: "constant", "cosine" (cosine decay to 0 over the stage) or "one_cycle"
            (from rate/25 up to the rate over the first 30 % of the stage, then cosine down to 0).
        warmup_epochs: linear warm-up from 0 to the rate over this many epochs (may be fractional;
            constant and cosine schedules; at most half the stage).
        early_stopping: patience in epochs on the validation loss, restoring the best
            weights; None disables it.
        unfreeze: stage 2 only. What of the backbone trains: an int (top N layers with
            weights), a float in (0, 1] (that fraction of them), a layer name (it and
            everything above it), "blocks:N" (the top N blocks of the family's block map)
            or "all" (the default; keras.applications backbones default to 0.5: as accurate, 2-3x
            faster, benchmarks/RESULTS.md). For a hub module the same counts of its trainable
            variables, or a variable name (`blocks:N` needs a block map).
        layer_decay: stage 2 only. Discriminative rates: the head trains at the stage rate, the
            backbone block below it at rate x layer_decay, the next at rate x layer_decay^2, ...
            (blocks from the family's block map). None trains everything at the stage rate.
        gradual_unfreeze: stage 2 only. Unfreeze one more block every this many epochs, from the
            top block down to what `unfreeze` allows (ULMFiT); 0 unfreezes all at once.
        train_bn: stage 2 only. Let BatchNormalization layers of the unfrozen part train (default:
            they stay frozen and in inference mode, so their statistics never change).
        bn_momentum: stage 2 only. Momentum of BatchNormalization layers that do train. keras.applications
            MobileNets use 0.999, which leaves the moving statistics near their initial
            values after a few hundred steps; 0.9 (the PyTorch default) tracks them.
        method: stage 2 only. "full" trains what `unfreeze` says; "lora" trains low-rank adapters
            on the `lora_targets` layers and the head, nothing else (see `tlkeras.lora`); "bitfit" trains
            only the bias terms of what `unfreeze` says (BatchNormalization's too with `train_bn`) and
            the head (see `tlkeras.methods.bitfit`).
        lora_rank / lora_alpha: stage 2 only. The LoRA adapters' rank and scale (alpha / rank; alpha null =
            the rank).
        lora_targets: stage 2 only. The layers that get LoRA adapters: names or paths in the backbone,
            wildcards allowed (null: the attention query and value projections, KerasHub's names).
        recompute: stage 2 only. Recompute the activations of the backbone's composite layers (transformer
            layers) in the backward pass instead of keeping them: less memory, one more forward pass of
            those layers per step (`tlkeras.recompute`). None: the method's default (on with "lora").
    """

    epochs: Union[int, str] = "auto"
    learning_rate: Optional[float] = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    early_stopping: Optional[int] = None
    unfreeze: Union[int, float, str, None] = None
    layer_decay: Optional[float] = None
    gradual_unfreeze: int = 0
    train_bn: bool = False
    bn_momentum: float = 0.9
    method: str = "full"
    lora_rank: int = 8
    lora_alpha: Optional[float] = None
    lora_targets: Union[str, list, None] = None
    recompute: Optional[bool] = None

    def validate(self, name: str = "stage") -> None:
        _validate_stage(name, self)

    @property
    def runs(self) -> bool:
        """Whether the stage trains at all: epochs "auto" or more than 0."""
        return self.epochs == "auto" or self.epochs > 0

    @property
    def lora_patterns(self) -> tuple:
        """The LoRA target patterns (the defaults when `lora_targets` is null)."""
        if self.lora_targets is None:
            return LORA_TARGETS
        return (self.lora_targets,) if isinstance(self.lora_targets, str) else tuple(self.lora_targets)


@dataclass
class AugmentConfig:
    """Random augmentation of training images (never of validation or serving images).

    The geometric and colour factors follow the Keras preprocessing layers of the same name; 0 or None turns one
    off. `rand_augment` is RandAugment's strength (`rand_augment_ops` operations per image), `erasing` RandomErasing's
    share of images with a patch erased, `augmix` AugMix's strength. `preset` ("light" or "strong", `AUGMENT_PRESETS`)
    sets every op left at 0 / None; ops given besides it win. `preset: auto` (the default) is what the few-labels
    benchmark measured to pay for the run's inputs kind (`AUGMENT_AUTO`), when no op is given; `augment: none` is off.

    Mixing (`tlkeras.mixing`; labels mixed too, so the loss trains on soft targets): `mixup` and `cutmix` are the
    Beta(alpha, alpha) of Keras's MixUp and CutMix layers on training images (both given: batches alternate); like
    any random image op they make the backbone run on every batch. `feature_mixup` mixes what a cached stage trains
    on - stage 1's features, stage 2's activations at the cut (manifold mixup) - so the caches stay; it applies to
    texts too.

    Args:
        preset: `auto` (the default): what the few-labels benchmark measured to pay for the inputs kind, when no op
            is given and the stages' epochs are `auto` - for single-label images feature mixup at 0.4 (+4.0 to +7.9
            points of test accuracy on digits, textures and faces with 20 labels per class, at no cost in time),
            for texts and multi-label nothing yet (not measured); on set epochs nothing (on the keras.io recipe's
            10 + 5 epochs feature mixup cost 4 points). `light`: flip horizontal, rotation 0.03 of a turn, zoom 0.1,
            translation 0.05, contrast 0.2, brightness 0.2 (fastai's `aug_transforms` in Keras's units); `strong`:
            light + RandAugment (2 ops at 0.5) + random erasing in a quarter of the images. `augment: none` turns
            augmentation off.
        flip: `horizontal`, `vertical` or `horizontal_and_vertical`.
        rotation / zoom / translation / contrast / brightness: the factors of Keras's Random* layers of those names.
        rand_augment: RandAugment's strength; `rand_augment_ops` operations per image.
        rand_augment_ops: RandAugment's operations per image.
        erasing: the share of images that get a patch erased (RandomErasing).
        augmix: AugMix's strength.
        mixup / cutmix: the Beta(alpha, alpha) of Keras's MixUp / CutMix on training images (both: batches alternate;
            like any image op they turn the caches off).
        feature_mixup: alpha of manifold mixup on the cached features and cut activations the stages train on (the
            caches stay; texts too).
    """

    preset: Optional[str] = "auto"
    flip: Optional[str] = None
    rotation: float = 0.0
    zoom: float = 0.0
    translation: float = 0.0
    contrast: float = 0.0
    brightness: float = 0.0
    rand_augment: float = 0.0
    rand_augment_ops: int = 2
    erasing: float = 0.0
    augmix: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    feature_mixup: float = 0.0

    @property
    def enabled(self) -> bool:
        """Whether any random op changes the training images (the image mixers included); `preset: auto` is asked of
        `resolved(inputs)`, which knows the inputs kind."""
        return ((self.preset not in (None, "auto")) or bool(self.flip)
                or any(getattr(self, name) > 0 for name in AUGMENT_FACTORS) or self.mixes_images)

    @property
    def given(self) -> bool:
        """Whether any op or mixer is set here (not by a preset)."""
        return bool(self.flip) or any(getattr(self, name) > 0 for name in (*AUGMENT_FACTORS, *MIX_ALPHAS))

    @property
    def mixes_images(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def resolved(self, inputs: str = "image", task: str = "single_label") -> "AugmentConfig":
        """The ops this config runs on `inputs` (an Inputs kind's name) for `task` (a Task's name): the preset's, then
        the ones given here; `preset: auto` gives `AUGMENT_AUTO[inputs, task]` when no op is given, else just the ops
        given.

        >>> AugmentConfig(preset="light", rotation=0.2).resolved().rotation, AugmentConfig(preset="light").resolved().zoom
        (0.2, 0.1)
        >>> AugmentConfig().resolved("image").feature_mixup, AugmentConfig(rotation=0.1).resolved("image").feature_mixup
        (0.4, 0.0)
        """
        if self.preset == "auto":
            chosen = {} if self.given else AUGMENT_AUTO.get((inputs, task), {})
            return dataclasses.replace(self, preset=None, **chosen)
        if not self.preset:
            return self
        values = dict(AUGMENT_PRESETS[self.preset])
        for name in ("flip", *AUGMENT_FACTORS):
            if getattr(self, name):
                values[name] = getattr(self, name)
        return dataclasses.replace(self, preset=None, **values, rand_augment_ops=self.rand_augment_ops)

    def validate(self, prefix: str = "augment") -> None:
        if self.preset is not None:
            _check_choice(f"{prefix}.preset", self.preset, ("auto", *AUGMENT_PRESETS))
        if self.flip is not None and self.flip not in FLIPS and self.flip is not False:
            raise ConfigError(f"{prefix}.flip: {self.flip!r} is not valid: use one of {', '.join(FLIPS)} or null.")
        for name in AUGMENT_FACTORS:
            _check_number(f"{prefix}.{name}", getattr(self, name), 0.0, 1.0, low_open=False)
        _check_int(f"{prefix}.rand_augment_ops", self.rand_augment_ops, 1)
        for name in MIX_ALPHAS:
            _check_number(f"{prefix}.{name}", getattr(self, name), 0.0, MAX_MIX_ALPHA, low_open=False)


MIX_ALPHAS = ("mixup", "cutmix", "feature_mixup")
# augment: auto (the default), per inputs kind and Task: what benchmarks/few_labels.py measured to pay at no cost in
# time (RESULTS.md, issue 38): feature mixup at 0.4 kept the caches and added 4 to 8 points of test accuracy on all
# three few-label image tasks (digits, textures, faces; single-label, 3 seeds each) with the stages' epochs "auto"
# (`FinetuneConfig.augment_for`). Kinds and Tasks not measured (texts, multi-label), and set epochs, get nothing.
AUGMENT_AUTO = {("image", "single_label"): {"feature_mixup": 0.4}}
MAX_MIX_ALPHA = 4.0  # Beta(alpha, alpha): 0.2-0.4 (ImageNet mixup), 1 (CutMix), 2 (manifold mixup); beyond, ~0.5 always
AUGMENT_FACTORS = ("rotation", "zoom", "translation", "contrast", "brightness", "rand_augment", "erasing", "augmix")
# The presets, spelled out (docs/augmentation): "light" is the geometric and colour jitter of fastai's aug_transforms
# in Keras's units (rotation as a fraction of a full turn: 0.03 is about 10 degrees); "strong" adds RandAugment
# (2 ops at half strength) and random erasing of a patch in a quarter of the images, as timm's and Ultralytics'
# classification recipes do.
AUGMENT_PRESETS = {
    "light": {"flip": "horizontal", "rotation": 0.03, "zoom": 0.1, "translation": 0.05, "contrast": 0.2,
              "brightness": 0.2},
    "strong": {"flip": "horizontal", "rotation": 0.03, "zoom": 0.1, "translation": 0.05, "contrast": 0.2,
               "brightness": 0.2, "rand_augment": 0.5, "erasing": 0.25},
}


@dataclass
class SelfTrainingConfig:
    """Self-training on `unlabeled_data` (`tlkeras.self_training`): a teacher trained on the labelled data labels
    the unlabelled examples; those it is sure of train a student with the labelled ones.

    Args:
        rounds: teacher -> student rounds; each student teaches the next.
        threshold: the least confidence (the teacher's probability of its class) a pseudo-label needs.
        cap: at most this many pseudo-labels per labelled example of their class (the most confident first).
    """

    rounds: int = 1
    threshold: float = 0.9
    cap: float = 5.0

    def validate(self, prefix: str = "self_training") -> None:
        _check_int(f"{prefix}.rounds", self.rounds, 1)
        _check_number(f"{prefix}.threshold", self.threshold, 0.0, 1.0, low_open=True, high_open=False)
        _check_number(f"{prefix}.cap", self.cap, 0.0, math.inf)


# Defaults chosen from measurements (benchmarks/RESULTS.md, issues 9 and 38): with enough steps (epochs "auto",
# tlkeras.training.budget), stage 1 at 1e-2 and stage 2 at a third of it beat 3e-3 / 1e-3 by 5-12 points of test
# accuracy on the digits transfer task with 10-120 labelled images per class (benchmarks/few_labels.py).
STAGE1_LEARNING_RATE = 1e-2
STAGE2_RATE_FACTOR = 1 / 3  # stage 2's peak rate when not set: stage 1's rate x this


def _stage1() -> StageConfig:
    return StageConfig(epochs="auto", learning_rate=STAGE1_LEARNING_RATE)


def _stage2() -> StageConfig:
    return StageConfig(epochs="auto", learning_rate=None, unfreeze="all", layer_decay=0.7, schedule="cosine",
                       warmup_epochs=1.0)


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run needs: every key is also a keyword of `build_and_finetune` and a `--set` path.
    The sections have their own classes (`HeadConfig`, `StageConfig` for stage1 and stage2, `AugmentConfig`,
    `SelfTrainingConfig`); the documentation's config reference is generated from these fields and docstrings
    (`tlkeras.configdoc`).

    `data` and `val_data` may hold in-memory data (NumPy arrays, a tf.data.Dataset);
    such values are written to config.yaml as null with a comment.

    Attributes:
        data: a folder of class subfolders, a CSV/TSV of image paths or texts and labels, `tfds:NAME[:SPLIT]`
            (extra `tfds`), `(x, y)` arrays or a `tf.data.Dataset` of `(input, label)`.
        backbone: a keras.applications family (`tlkeras backbones` lists them); `hub:<URL, Kaggle handle or
            folder>` (a TF Hub / Kaggle Models image feature-vector or text-embedding module, or a BERT-class text
            encoder with `backbone_options.preprocessor`); `kerashub:<preset or folder>`; a path to your own
            backbone, a `.keras` model file or a SavedModel folder whose output is a feature map or vector (loaded in
            safe mode); or `auto:A,B,...` (or a list): rank those candidates on the data first and train the best
            (config.yaml then records the winner).
        weights: `imagenet` (for hub modules, KerasHub presets and your own files: their own weights), null
            (random init; not for hub modules), or a path to a weights file of the backbone.
        backbone_options: constructor options of a keras.applications backbone, e.g. `{alpha: 0.35}`; for other
            sources `preprocessing: none|unit|tf|torch|caffe` (what its input expects; defaults: hub `unit`, KerasHub
            its converter, your files `none`), for a hub module returning a dict `output_key`; for a KerasHub or TF
            Hub text encoder `sequence_length` (tokens per text with the start and end tokens; default 128 or the
            encoder's maximum if smaller) and `pooling` (`mean`, the default: masked mean over tokens; `pooled`: the
            encoder's pooled/CLS output; `first`: the first token's vector); for a TF Hub text encoder
            `preprocessor: hub:<its preprocessing model>`.
        val_data: explicit validation data; else a stratified split of `data`.
        unlabeled_data: unlabelled examples of the same kind (`--unlabeled-data`): a folder of images (any
            layout), a CSV of image paths, a list of paths or an array of images beside array data; for texts a
            `.txt` of one text per line, a CSV with `text_column`, or a list. Turns on self-training (single-label,
            see `self_training`): a teacher trained on the labelled data labels them, those it is sure of train the
            run's model (the student) with the labelled ones; never in validation; a student below the teacher on
            validation is not kept. Each round in `self_training/round-N/`, resumable. Costs one more training per
            round.
        val_split: validation fraction per class, seeded.
        class_names: names for integer labels of arrays and datasets.
        task: `single_label`, `multi_label`, `regression`, or `auto` (logged with its reason: regression for several
            label columns, or when every label is a number and more than max(20, 5% of the rows) are distinct - an
            array of integers is class indices; multi-label when any example has more than one label).
        loss: regression: the loss on errors in standard units (the training targets' deviations) - `huber` (the
            default; quadratic within one deviation), `mse` or `mae`.
        target_range: regression: `[low, high]` bounds every value with a scaled sigmoid (a target that cannot
            leave a range, e.g. a score from 1 to 5; a little wider than the range trains better).
        text_column: the text column of a CSV/TSV of texts; `[a, b]` (two different columns) makes a sentence-pair
            classifier on a KerasHub or TF Hub text encoder, whose export takes `text_a` and `text_b`.
        image_column: the image path column of a CSV/TSV of images (paths relative to the CSV).
        label_column: the label column of a CSV/TSV of images or texts; a list of columns for several regression
            targets (`[age, weight]`: one value each).
        label_separator: what separates several labels in one cell of `label_column` (multi-label).
        threshold: multi-label decisions: `per_class` (each class's F1-maximising threshold on the validation
            split), `global` (one, maximising micro-F1), or a number in (0, 1).
        tta: test-time augmentation in the run's evaluation: `flip` averages each validation image's probabilities
            with its mirror's, `flip_all` also upside down and both, `crops:N` with N crops of 7/8 of each side
            resized back (centre, corners, edges' middles; N from 1 to 8); metrics.json keeps the plain metrics and
            adds `tta`. Flips are for images without a left and right (textures: +1.5 to +3.5 points); on digits a
            flip costs 16-27 points. Images only.
        image_size: an int or `[height, width]`; at least the backbone's minimum, at most 4096; null: the
            backbone's default size.
        max_image_pixels: images whose header declares more pixels (height x width) are refused before decoding -
            skipped with the reason in training, an error naming the size from the export, a skip in `predict`
            (decompression bombs); kept with the model; Pillow's default; 0: no limit.
        batch_size: per replica: the global batch is this x the replicas in sync.
        class_weight: `balanced`, `auto` (balanced when the largest class has more than 2x the examples of the
            smallest; logged), or `{class: weight}`; multi-label: weights of each label's positive examples
            (`balanced` = negatives / positives, `auto` when that exceeds 2).
        label_smoothing: cross-entropy label smoothing in [0, 1).
        cache_images: decode and resize each image once and keep the pixels in memory: `auto` (when they fit
            `memory_budget_mb`), true, false (stream from files every epoch).
        cache_features: train each stage on what its frozen part computes, computed once: `auto` (unless training
            inputs are randomly augmented), true, false.
        cache_views: with `cache_features: true` and augmentation: augmented views per image cached for stage 1.
        memory_budget_mb: larger caches are not held in memory: pixels stream from files, features spill to
            float16 files (deleted afterwards).
        jit_compile: XLA: `auto` (on with a GPU or TPU, off on CPU: 10x slower there, measured), true, false.
        mixed_precision: `auto` (`mixed_float16` on GPU, `mixed_bfloat16` on TPU, `float32` on CPU), or one of
            those names.
        strategy: `auto` (a strategy already in scope; else a TPU if one is configured; MultiWorkerMirroredStrategy
            when TF_CONFIG names more than one machine; MirroredStrategy with more than one GPU; else the default),
            `default`, `one_device`, `mirrored`, `multi_worker`, `tpu`.
        tpu: a TPU name or `grpc://` address; else `TPU_NAME`, Colab's `COLAB_TPU_ADDR`, or `local` on a TPU VM.
        scale_learning_rate: multiply both stages' rates by the number of replicas (linear scaling).
        output_dir: the run directory; null: `runs/<backbone>-<time>`.
        seed: seeds Python, NumPy, TensorFlow, the split and the shuffles.
        restore_best: evaluate and export the weights of the run's best epoch over both stages when it is clearly
            better than the last epoch: single-label by the highest validation accuracy (the loss breaking ties),
            put back only when it beats the last epoch's by more than two standard errors on the validation
            examples; multi-label by the lowest validation loss. metrics.json says which epoch (`epoch`,
            `restored_best`) and the log why.
        export: write the SavedModel (`export/<version>/`), checked against the model before it lands.
        export_tta: put the `tta` views inside the export's graph (every signature averages them; checked against
            the model's own average within 1e-5; SavedModel only).
        top_k: classes listed per image in the export and `predict` (and the k of the top-k accuracy).
        report: plots and report.html in the run directory.
        tensorboard: TensorBoard logs of both stages in `output_dir/tensorboard`.
        deterministic: TensorFlow op determinism (process-wide; same config, seed and machine: same metrics).
    """

    data: Any = None
    backbone: str = "efficientnetb0"
    weights: Optional[str] = "imagenet"
    backbone_options: dict = field(default_factory=dict)
    val_data: Any = None
    unlabeled_data: Any = None
    val_split: float = 0.2
    class_names: Optional[list[str]] = None
    task: str = "auto"
    loss: Optional[str] = None
    target_range: Optional[list[float]] = None
    text_column: Union[str, list[str]] = "text"  # two columns: sentence pairs
    image_column: str = "image"
    label_column: Union[str, list[str]] = "label"  # several columns: regression targets
    label_separator: str = " "
    threshold: Union[str, float] = "per_class"
    tta: str = "none"
    image_size: Union[int, list[int], None] = None
    max_image_pixels: int = MAX_IMAGE_PIXELS
    batch_size: int = 32
    class_weight: Union[str, dict, None] = None
    label_smoothing: float = 0.0
    cache_images: Union[str, bool] = "auto"
    cache_features: Union[str, bool] = "auto"
    cache_views: int = 4
    memory_budget_mb: int = 1024
    jit_compile: Union[str, bool] = "auto"
    mixed_precision: str = "auto"
    strategy: str = "auto"
    tpu: Optional[str] = None
    scale_learning_rate: bool = False
    head: HeadConfig = field(default_factory=HeadConfig)
    stage1: StageConfig = field(default_factory=_stage1)
    stage2: StageConfig = field(default_factory=_stage2)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    self_training: SelfTrainingConfig = field(default_factory=SelfTrainingConfig)
    output_dir: Optional[str] = None
    seed: int = 0
    restore_best: bool = True
    export: bool = True
    export_tta: bool = False
    top_k: int = 5
    report: bool = True
    tensorboard: bool = True
    deterministic: bool = False

    # --- Construction ---

    @classmethod
    def from_dict(cls, values: dict | None) -> "FinetuneConfig":
        """Build a validated config from a (possibly nested, possibly partial) mapping."""
        return cls().merged(values or {})

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "FinetuneConfig":
        """Read a YAML config file (safe loader); relative data paths stay relative to the cwd."""
        return cls.from_dict(load_yaml(path))

    def merged(self, values: dict) -> "FinetuneConfig":
        """A copy with `values` (nested mapping) applied on top, validated."""
        if not isinstance(values, dict):
            raise ConfigError(f"A config must be a mapping of keys to values, got {type(values).__name__}.")
        new = copy.copy(self)
        for section in _SECTIONS:
            setattr(new, section, copy.deepcopy(getattr(self, section)))
        new.backbone_options = dict(self.backbone_options)
        for key, value in values.items():
            _set_key(new, str(key), value)
        new.validate()
        new._given = self.given_keys() | _dotted_keys(values)
        return new

    def given_keys(self) -> frozenset:
        """The dotted keys this config was given ("stage1.epochs", "backbone_options.pooling", "batch_size"):
        those merged in (kwargs, YAML, --set), else - for a config built directly - those that differ
        from the defaults."""
        given = getattr(self, "_given", None)
        if given is None:
            defaults = _flat(FinetuneConfig().to_dict())
            given = (key for key, value in _flat(self.to_dict()).items() if defaults.get(key, object()) != value)
        return frozenset(given)

    def with_defaults(self, defaults: dict) -> "FinetuneConfig":
        """A copy in which each of `defaults` ({"stage1.epochs": 20, ...}: a backbone's own defaults,
        `BackboneSpec.training_defaults`) replaces the general default of a key this config was not given.

        >>> cfg = FinetuneConfig.from_dict({"stage1": {"epochs": 3}})
        >>> new = cfg.with_defaults({"stage1.epochs": 20, "stage1.learning_rate": 0.01})
        >>> new.stage1.epochs, new.stage1.learning_rate, sorted(new.given_keys())
        (3, 0.01, ['stage1.epochs'])
        """
        given = self.given_keys()
        values: dict = {}
        for key, value in defaults.items():
            if key not in given:
                node = values
                *sections, name = key.split(".")
                for section in sections:
                    node = node.setdefault(section, {})
                node[name] = value
        if "backbone_options" in values:  # merged into the options given, not in place of them
            values["backbone_options"] = {**self.backbone_options, **values["backbone_options"]}
        new = self.merged(values)
        new._given = given  # a default, not the user's: still not given
        return new

    def with_overrides(self, assignments: list[str] | tuple[str, ...]) -> "FinetuneConfig":
        """Apply `key.sub=value` strings (the CLI's `--set`); values are parsed as YAML scalars."""
        values: dict = {}
        for assignment in assignments:
            if "=" not in assignment:
                raise ConfigError(
                    f"--set {assignment!r} is not of the form key=value (e.g. --set stage2.epochs=3)."
                )
            key, raw = assignment.split("=", 1)
            key = key.strip()
            if not key:
                raise ConfigError(f"--set {assignment!r} has an empty key (e.g. --set stage2.epochs=3).")
            try:
                value = parse_yaml(raw, f"--set {key}") if raw.strip() else None
            except yaml.YAMLError:
                value = raw
            node = values
            parts = key.split(".")
            for part in parts[:-1]:
                child = node.setdefault(part, {})
                if not isinstance(child, dict):
                    raise ConfigError(f"--set {key}: {'.'.join(parts[:-1])} is not a section.")
                node = child
            node[parts[-1]] = value
        return self.merged(values)

    # --- Output ---

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            elif f.name in IN_MEMORY_KEYS and value is not None and not isinstance(value, str):
                value = None
            out[f.name] = copy.deepcopy(value)
        return out

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        """The full resolved config as YAML; written to `path` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        notes = [
            f"# {name}: in-memory {_describe_in_memory(getattr(self, name))} (not reproducible from this file)\n"
            for name in IN_MEMORY_KEYS
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str)
        ]
        text = "".join(notes) + text
        if path is not None:
            from tlkeras.atomic import write_text_atomic

            write_text_atomic(path, text)
        return text

    # --- Validation ---

    def validate(self) -> None:
        """Raise ConfigError on the first key with a value of the wrong type or range: each concern's
        keys checked by its own section (data, model, training, runtime, outputs)."""
        _validate_data(self)
        _validate_model(self)
        _validate_training(self)
        _validate_runtime(self)
        _validate_outputs(self)

    def task_settings(self) -> dict:
        """The keys a Task reads when it fixes its options from the training data (`Task.options`)."""
        return {"loss": self.loss, "target_range": self.target_range}

    def augment_for(self, inputs: str, task: str) -> "AugmentConfig":
        """The augmentation this run trains with on `inputs` for `task` (`AugmentConfig.resolved`); `augment: auto`
        chooses only where it was measured: with the stages' epochs `auto` (the budget the few-labels benchmark
        ran; on the keras.io recipe's 10 + 5 epochs feature mixup cost 4 points, RESULTS.md), else nothing.

        >>> FinetuneConfig().augment_for("image", "single_label").feature_mixup
        0.4
        >>> FinetuneConfig(stage1=StageConfig(epochs=10)).augment_for("image", "single_label").feature_mixup
        0.0
        """
        if self.augment.preset == "auto" and not all(
                stage.epochs == "auto" for stage in (self.stage1, self.stage2) if stage.runs):
            return dataclasses.replace(self.augment, preset=None)
        return self.augment.resolved(inputs, task)

    @property
    def stage2_learning_rate(self) -> float:
        """Stage 2's peak rate: as set, or stage 1's rate x STAGE2_RATE_FACTOR (1/3)."""
        return stage2_learning_rate(self.stage1, self.stage2)


def stage2_learning_rate(stage1: StageConfig, stage2: StageConfig) -> float:
    """Stage 2's peak rate: as set, or stage 1's rate x STAGE2_RATE_FACTOR (1/3)."""
    if stage2.learning_rate is not None:
        return stage2.learning_rate
    return stage1.learning_rate * STAGE2_RATE_FACTOR


_SECTIONS = {"head": HeadConfig, "stage1": StageConfig, "stage2": StageConfig, "augment": AugmentConfig,
             "self_training": SelfTrainingConfig}
IN_MEMORY_KEYS = ("data", "val_data", "unlabeled_data")  # may hold arrays or datasets, written as null


def load_config(path: str | os.PathLike) -> FinetuneConfig:
    """Read and validate a YAML config file.

    Example:

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "run.yaml"
    >>> _ = p.write_text("backbone: mobilenetv2\\nstage1: {epochs: 2}\\n")
    >>> load_config(p).stage1.epochs
    2
    """
    return FinetuneConfig.from_yaml(path)


def with_backbone_defaults(cfg: FinetuneConfig, spec) -> FinetuneConfig:
    """The config with the backbone's own defaults (`tlkeras.backbones.BackboneSpec.training_defaults`) for
    the keys it was not given; what they changed is logged. Every run applies them once its backbone is
    resolved (build_and_finetune, the LR finder, each candidate of a ranking)."""
    from tlkeras._logging import get_logger

    given = cfg.given_keys()
    new = cfg.with_defaults(spec.training_defaults)
    changed = {key: value for key, value in spec.training_defaults.items() if key not in given}
    if changed:
        get_logger().info("defaults for %s: %s (measured: benchmarks/RESULTS.md; set a key to change it)",
                          spec.display_name, ", ".join(f"{k} {v}" for k, v in changed.items()))
    return new


def resolve_config(config: "FinetuneConfig | str | os.PathLike | None" = None, data: Any = None,
                   options: Optional[dict] = None) -> FinetuneConfig:
    """The config a library call runs with: `config` (a FinetuneConfig, a YAML path, or None for the
    defaults), then `data` and the call's keyword `options` on top, validated.

    >>> resolve_config(None, "photos/", {"batch_size": 8}).batch_size
    8
    """
    if config is None:
        cfg = FinetuneConfig()
    elif isinstance(config, FinetuneConfig):
        cfg = config
    else:
        cfg = FinetuneConfig.from_yaml(config)
    options = dict(options or {})
    if data is not None:
        options["data"] = data
    return cfg.merged(options)


class _AliasError(yaml.YAMLError):
    def __init__(self, anchor: str, line: int):
        super().__init__(anchor)
        self.anchor, self.line = anchor, line


class _ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases: `*name` repeats a node, and a few lines of nested aliases
    expand into billions of values (a "billion laughs" file); a config never needs them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasError(event.anchor, event.start_mark.line + 1)
        return super().compose_node(parent, index)


def parse_yaml(text_or_stream, where: str):
    """YAML (safe, no aliases) -> Python values; `where` names the source in the one-line error.

    >>> parse_yaml("a: &x [1, 2]\\nb: *x", "--set")
    Traceback (most recent call last):
    ...
    tlkeras.errors.ConfigError: --set uses the YAML alias *x at line 2: aliases are not accepted in tlkeras configs (nested ones can expand into billions of values); write the values out.
    """
    try:
        return yaml.load(text_or_stream, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except _AliasError as e:
        raise ConfigError(f"{where} uses the YAML alias *{e.anchor} at line {e.line}: aliases are not accepted in "
                          "tlkeras configs (nested ones can expand into billions of values); write the values out."
                          ) from None


def load_yaml(path: str | os.PathLike) -> dict:
    from tlkeras.atomic import read_text

    if not os.path.isfile(path):
        raise ConfigError(f"Config file {str(path)!r} does not exist.")
    try:
        text = read_text(path, "save the config as UTF-8")
    except TlkerasError as e:
        raise ConfigError(f"Config file {e}") from None
    try:
        values = parse_yaml(text, f"Config file {str(path)!r}")
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"Config file {str(path)!r} is not valid YAML{where}: {getattr(e, 'problem', e)}.") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"Config file {str(path)!r} must hold a mapping of keys to values, not a {type(values).__name__}.")
    return values


# === Helpers ===


def _describe_in_memory(value: Any) -> str:
    if isinstance(value, (tuple, list)) and value and hasattr(value[0], "shape"):
        return f"arrays {tuple(value[0].shape)}"
    return type(value).__name__


def _dotted_keys(values: dict) -> set:
    """The keys a (nested) mapping of config values sets, dotted below sections and backbone_options."""
    out = set()
    for key, value in values.items():
        key = str(key)
        if key in _SECTIONS and dataclasses.is_dataclass(value):
            out |= {f"{key}.{f.name}" for f in dataclasses.fields(value)}
        elif (key in _SECTIONS or key == "backbone_options") and isinstance(value, dict):
            out |= {f"{key}.{sub}" for sub in value}
        else:
            out.add(key)
    return out


def _flat(values: dict) -> dict:
    """{dotted key: value} of a config's to_dict() (one level below sections and backbone_options)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and (key in _SECTIONS or key == "backbone_options"):
            out.update({f"{key}.{sub}": v for sub, v in value.items()})
        else:
            out[key] = value
    return out


def _set_key(cfg: FinetuneConfig, key: str, value: Any) -> None:
    names = {f.name: f for f in dataclasses.fields(cfg)}
    if key not in names:
        # a section's key given at the top (learning_rate, epochs, dropout): name where it lives
        homes = [f"{section}.{key}" for section, cls in _SECTIONS.items()
                 if key in {f.name for f in dataclasses.fields(cls)}]
        hint = (" Did you mean " + " or ".join(repr(h) for h in homes) + "?") if homes else did_you_mean(key, names)
        raise ConfigError(f"Unknown config key {key!r}.{hint}")
    if key == "weights" and isinstance(value, str) and value.strip().lower() in ("none", "null"):
        value = None  # as --weights none: random initialisation
    if key in _SECTIONS:
        section_cls = _SECTIONS[key]
        if (value is None or value is False) and key == "augment":  # off: not even auto's choice
            setattr(cfg, key, AugmentConfig(preset=None))
            return
        if key == "augment" and isinstance(value, str):  # augment: light - a preset by its name
            if value.strip().lower() in ("none", "off", "false", "null"):
                setattr(cfg, key, AugmentConfig(preset=None))
                return
            value = {"preset": value.strip()}
        if isinstance(value, section_cls):
            setattr(cfg, key, copy.deepcopy(value))
            return
        _apply_section(getattr(cfg, key), key, value)
        return
    if key == "backbone_options" and value is None:
        value = {}
    if key == "backbone" and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        from tlkeras.backbones.candidates import as_auto

        value = as_auto(value)  # candidates to rank first (tlkeras.ranking)
    hints = typing.get_type_hints(FinetuneConfig)
    setattr(cfg, key, _coerce(key, value, hints[key]))


def _apply_section(section, key: str, values) -> None:
    """Set a section's fields from a mapping (coerced as YAML/--set values are; unknown keys refused)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{key}: expected a mapping of {key} settings, got {values!r}.")
    fields = {f.name: f for f in dataclasses.fields(section)}
    hints = typing.get_type_hints(type(section))
    for sub, sub_value in values.items():
        if sub not in fields:
            raise ConfigError(f"Unknown config key '{key}.{sub}'.{_suggest(key, sub, fields)}")
        setattr(section, sub, _coerce(f"{key}.{sub}", sub_value, hints[sub]))


def head_config(head: "HeadConfig | dict | None") -> HeadConfig:
    """A validated HeadConfig from one, a mapping of its fields over the defaults, or None (defaults).

    >>> head_config({"dropout": "0.5"}).dropout
    0.5
    """
    section = copy.deepcopy(head) if isinstance(head, HeadConfig) else HeadConfig()
    if head is not None and not isinstance(head, HeadConfig):
        _apply_section(section, "head", dict(head))
    section.validate()
    return section


def stage_configs(stage1, stage2) -> tuple[StageConfig, StageConfig]:
    """Validated (stage 1, stage 2) from StageConfigs or mappings over each stage's defaults.

    >>> s1, s2 = stage_configs({"epochs": 2}, None)
    >>> (s1.epochs, s1.learning_rate, s2.unfreeze, s2.layer_decay)
    (2, 0.01, 'all', 0.7)
    """
    out = []
    for name, given, default in (("stage1", stage1, _stage1), ("stage2", stage2, _stage2)):
        section = default()
        if given is not None:
            _apply_section(section, name, dataclasses.asdict(given) if dataclasses.is_dataclass(given) else dict(given))
        out.append(section)
    validate_stages(*out)
    return out[0], out[1]


def _suggest(section: str, sub: str, fields: dict) -> str:
    # Compare the key within its section: a shared "stage2." prefix would make every key look close.
    matches = closest(sub, fields)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(f"{section}.{m}") for m in matches) + "?"


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Convert YAML/--set scalars to the field's type where that is unambiguous (e.g. '1e-4' -> 0.0001)."""
    if hint is Any:
        return value
    args = typing.get_args(hint)
    allowed = [a for a in args if a is not type(None)] if args and typing.get_origin(hint) is Union else [hint]
    if value is None:
        return None  # validate() decides whether None is allowed for this key
    if isinstance(value, str):
        if float in allowed and str not in allowed:
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: {value!r} is not a number.") from None
        if int in allowed and str not in allowed and float not in allowed:
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"{key}: {value!r} is not an integer.") from None
        if bool in allowed and str not in allowed and value.lower() in ("true", "false", "yes", "no"):
            return value.lower() in ("true", "yes")
    if isinstance(value, int) and not isinstance(value, bool) and float in allowed and int not in allowed:
        return float(value)
    return value


def _check_int(key: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{key}: {value!r} is not valid: use an integer >= {minimum}.")


def _check_number(key, value, low, high, low_open=True, high_open=False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        if high == math.inf:
            raise ConfigError(f"{key}: {value!r} is not valid: use a finite number {'>' if low_open else '>='} {low}.")
        raise ConfigError(f"{key}: {value!r} is not valid: use a number in {lo}{low}, {high}{hi}.")


def _check_choice(key: str, value: Any, choices, kind=None) -> None:
    if kind is not None and not isinstance(value, kind):
        raise ConfigError(f"{key}: {value!r} is not valid: expected a {kind.__name__}.")
    if choices is not None and value not in choices:
        raise ConfigError(
            f"{key}: {value!r} is not valid: use one of {', '.join(map(str, choices))}.{did_you_mean(str(value), choices)}"
        )


# === Validation, one section per concern (the keys stay one flat namespace for users) ===


def _validate_data(cfg: "FinetuneConfig") -> None:
    """data, val_data, val_split, class_names, the table columns, the label separator, max_image_pixels."""
    _check_number("val_split", cfg.val_split, 0.0, 1.0, low_open=False, high_open=True)
    if cfg.class_names is not None and (
        not isinstance(cfg.class_names, list)
        or not all(isinstance(n, str) and n for n in cfg.class_names)
        or len(set(cfg.class_names)) != len(cfg.class_names)
    ):
        raise ConfigError(f"class_names: {cfg.class_names!r} is not valid: use a list of distinct, non-empty names.")
    if not isinstance(cfg.image_column, str) or not cfg.image_column:
        raise ConfigError(f"image_column: {cfg.image_column!r} is not valid: use the name of a column of the CSV.")
    label = cfg.label_column
    if isinstance(label, (list, tuple)):
        if not label or not all(isinstance(c, str) and c for c in label) or len(set(label)) != len(label):
            raise ConfigError(f"label_column: {label!r} is not valid: use the name of a column of the CSV, or a list "
                              "of distinct columns for several regression targets, e.g. [age, weight].")
        if len(label) > 1 and cfg.task not in ("auto", "regression"):
            raise ConfigError(f"label_column: {len(label)} columns {label!r} are several regression targets, but "
                              f"task is {cfg.task}; set task: regression (or auto), or name one column.")
        cfg.label_column = list(label) if len(label) > 1 else label[0]
    elif not isinstance(label, str) or not label:
        raise ConfigError(f"label_column: {label!r} is not valid: use the name of a column of the CSV.")
    column = cfg.text_column
    if isinstance(column, (list, tuple)):
        if len(column) != 2 or not all(isinstance(c, str) and c for c in column) or column[0] == column[1]:
            raise ConfigError(f"text_column: {column!r} is not valid: use the name of a column of the CSV, or a list "
                              "of two different columns for sentence pairs, e.g. [question1, question2].")
        cfg.text_column = list(column)
    elif not isinstance(column, str) or not column:
        raise ConfigError(f"text_column: {column!r} is not valid: use the name of a column of the CSV (or a list of "
                          "two for sentence pairs).")
    if not isinstance(cfg.label_separator, str) or not cfg.label_separator or "\n" in cfg.label_separator:
        raise ConfigError(f"label_separator: {cfg.label_separator!r} is not valid: use the character(s) between "
                          "the labels of one cell, e.g. ' ' or '|'.")
    if not isinstance(cfg.max_image_pixels, int) or isinstance(cfg.max_image_pixels, bool) or cfg.max_image_pixels < 0:
        raise ConfigError(f"max_image_pixels: {cfg.max_image_pixels!r} is not valid: use the largest height x width "
                          f"an image may declare (default {MAX_IMAGE_PIXELS}), or 0 for no limit.")


def _validate_model(cfg: "FinetuneConfig") -> None:
    """backbone, weights, backbone_options, image_size, task, threshold, head."""
    _check_choice("backbone", cfg.backbone, None, kind=str)
    if cfg.weights is not None and not isinstance(cfg.weights, str):
        raise ConfigError(
            f"weights: {cfg.weights!r} is not valid: use 'imagenet', null (random init) or a path to a weights file."
        )
    if not isinstance(cfg.backbone_options, dict):
        raise ConfigError(f"backbone_options: {cfg.backbone_options!r} is not a mapping (e.g. {{alpha: 0.35}}).")
    if cfg.image_size is not None:
        sizes = cfg.image_size if isinstance(cfg.image_size, list) else [cfg.image_size]
        if len(sizes) not in (1, 2) or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes):
            raise ConfigError(
                f"image_size: {cfg.image_size!r} is not valid: use a positive int (square) or [height, width]."
            )
        if max(sizes) > MAX_IMAGE_SIZE:
            raise ConfigError(
                f"image_size: {cfg.image_size!r} is above {MAX_IMAGE_SIZE} pixels a side, which no backbone here is "
                "trained for and would not fit in memory; use the backbone's own size (e.g. 224) or a few hundred."
            )
    _check_choice("task", cfg.task, TASK_CHOICES)
    _validate_regression(cfg)
    if isinstance(cfg.threshold, str):
        _check_choice("threshold", cfg.threshold, THRESHOLDS)
    else:
        _check_number("threshold", cfg.threshold, 0.0, 1.0, low_open=True, high_open=True)
    if tta_problem(cfg.tta):
        raise ConfigError(f"tta: {tta_problem(cfg.tta)}.")
    cfg.head.validate()


def _validate_regression(cfg: "FinetuneConfig") -> None:
    """loss and target_range: a regression's, refused for the classifiers; what regression refuses."""
    if cfg.loss is not None:
        _check_choice("loss", cfg.loss, REGRESSION_LOSSES)
    if cfg.target_range is not None:
        bounds = cfg.target_range
        if (not isinstance(bounds, (list, tuple)) or len(bounds) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bounds)
                or not bounds[0] < bounds[1]):
            raise ConfigError(f"target_range: {bounds!r} is not valid: use [low, high] with low < high, e.g. [0, 5].")
        cfg.target_range = [float(v) for v in bounds]
    given = [key for key in ("loss", "target_range") if getattr(cfg, key) is not None]
    if given and cfg.task in ("single_label", "multi_label"):
        raise ConfigError(f"{given[0]}: {getattr(cfg, given[0])!r} is a regression setting, but task is {cfg.task}; "
                          "drop it, or set task: regression.")
    if cfg.task == "regression":
        if cfg.class_weight is not None:
            raise ConfigError(f"class_weight: {cfg.class_weight!r} weighs classes, and a regression task has none; "
                              "drop class_weight.")
        if cfg.label_smoothing:
            raise ConfigError(f"label_smoothing: {cfg.label_smoothing!r} smooths class labels, and a regression task "
                              "has none; drop label_smoothing.")


def _validate_training(cfg: "FinetuneConfig") -> None:
    """batch_size, class_weight, label_smoothing, the stages, augment."""
    _check_int("batch_size", cfg.batch_size, 1)
    if cfg.class_weight is not None and cfg.class_weight not in ("balanced", "auto") and not isinstance(
        cfg.class_weight, dict
    ):
        raise ConfigError(
            f"class_weight: {cfg.class_weight!r} is not valid: use 'balanced', 'auto', null, "
            "or a mapping class -> weight."
        )
    if isinstance(cfg.class_weight, dict):
        for name, weight in cfg.class_weight.items():
            if (not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight)
                    or weight <= 0):
                raise ConfigError(f"class_weight: the weight of {name!r} is {weight!r}; use a positive number.")
    _check_number("label_smoothing", cfg.label_smoothing, 0.0, 1.0, low_open=False, high_open=True)
    validate_stages(cfg.stage1, cfg.stage2)
    cfg.augment.validate()
    cfg.self_training.validate()


def _validate_runtime(cfg: "FinetuneConfig") -> None:
    """seed, caches, memory, XLA, precision, strategy, TPU, rate scaling, determinism."""
    _check_int("seed", cfg.seed, 0)
    if cfg.seed > 2**32 - 1:  # what NumPy and TensorFlow take
        raise ConfigError(f"seed: {cfg.seed!r} is not valid: use an integer from 0 to {2**32 - 1}.")
    for key in ("cache_images", "cache_features", "jit_compile"):
        if getattr(cfg, key) not in CACHE_CHOICES:
            raise ConfigError(f"{key}: {getattr(cfg, key)!r} is not valid: use auto, true or false.")
    _check_int("cache_views", cfg.cache_views, 1)
    _check_int("memory_budget_mb", cfg.memory_budget_mb, 1)
    _check_choice("mixed_precision", cfg.mixed_precision, PRECISIONS)
    _check_choice("strategy", cfg.strategy, STRATEGIES)
    if cfg.tpu is not None and (not isinstance(cfg.tpu, str) or not cfg.tpu.strip()):
        raise ConfigError(f"tpu: {cfg.tpu!r} is not valid: use a TPU name, a grpc:// address, or 'local'.")
    for key in ("deterministic", "scale_learning_rate"):
        _check_bool(key, getattr(cfg, key))


def _validate_outputs(cfg: "FinetuneConfig") -> None:
    """restore_best, export, top_k, report, tensorboard (output_dir is checked by tlkeras.rundir)."""
    _check_int("top_k", cfg.top_k, 1)
    for key in ("restore_best", "export", "export_tta", "report", "tensorboard"):
        _check_bool(key, getattr(cfg, key))
    if cfg.export_tta and cfg.tta == "none":
        raise ConfigError("export_tta: true puts the views of `tta` inside the export, and tta is none: set tta: flip "
                          "or flip_all (the run's metrics then show what the views gain).")


def validate_stages(stage1: "StageConfig", stage2: "StageConfig") -> None:
    """Each stage's own checks, then what holds between them (stage 1 trains the head only)."""
    stage1.validate("stage1")
    stage2.validate("stage2")
    for key in ("unfreeze", "layer_decay", "recompute"):
        if getattr(stage1, key) is not None:
            raise ConfigError(
                f"stage1.{key}: stage 1 always trains the head only; set stage2.{key} for the backbone."
            )
    if stage1.gradual_unfreeze:
        raise ConfigError("stage1.gradual_unfreeze: stage 1 trains the head only; set stage2.gradual_unfreeze.")
    if stage1.method != StageConfig.method:  # stage 1 has no method to choose
        raise ConfigError(f"stage1.method: {stage1.method!r} does not apply: stage 1 trains the head only; set "
                          "stage2.method for the backbone.")
    if stage1.learning_rate is None:
        raise ConfigError("stage1.learning_rate: must be a positive number, e.g. 0.001.")


def _check_bool(key: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: {value!r} is not valid: use true or false.")


_UNFREEZE_HELP = (
    "use an int (top N layers), a fraction in (0, 1], a layer name, 'blocks:N' or 'all'"
)


def _validate_stage(name: str, s: StageConfig) -> None:
    if s.epochs != "auto" and (not isinstance(s.epochs, int) or isinstance(s.epochs, bool) or s.epochs < 0):
        raise ConfigError(f"{name}.epochs: {s.epochs!r} is not valid: use an integer >= 0 (0 skips the stage) or "
                          "auto (enough for the data's size).")
    if s.learning_rate is not None:
        _check_number(f"{name}.learning_rate", s.learning_rate, 0.0, math.inf)
    _check_choice(f"{name}.optimizer", s.optimizer, OPTIMIZERS)
    _check_number(f"{name}.momentum", s.momentum, 0.0, 1.0, low_open=False, high_open=True)
    _check_number(f"{name}.weight_decay", s.weight_decay, 0.0, math.inf, low_open=False)
    _check_choice(f"{name}.schedule", s.schedule, SCHEDULES)
    _check_number(f"{name}.warmup_epochs", s.warmup_epochs, 0.0, math.inf, low_open=False)
    if s.epochs != "auto" and s.warmup_epochs > s.epochs > 0:
        raise ConfigError(
            f"{name}.warmup_epochs: {s.warmup_epochs} is longer than the stage ({s.epochs} epochs); use at most {s.epochs}."
        )
    if s.early_stopping is not None:
        _check_int(f"{name}.early_stopping", s.early_stopping, 1)
    if s.layer_decay is not None:
        _check_number(f"{name}.layer_decay", s.layer_decay, 0.0, 1.0)
    _check_int(f"{name}.gradual_unfreeze", s.gradual_unfreeze, 0)
    if not isinstance(s.train_bn, bool):
        raise ConfigError(f"{name}.train_bn: {s.train_bn!r} is not valid: use true or false.")
    _check_number(f"{name}.bn_momentum", s.bn_momentum, 0.0, 1.0, low_open=False, high_open=True)
    _check_choice(f"{name}.method", s.method, METHODS)
    if s.recompute is not None:
        _check_bool(f"{name}.recompute", s.recompute)
    _check_int(f"{name}.lora_rank", s.lora_rank, 1)
    if s.lora_alpha is not None:
        _check_number(f"{name}.lora_alpha", s.lora_alpha, 0.0, math.inf)
    targets = s.lora_targets
    if targets is not None and (
        not isinstance(targets, (str, list)) or not targets
        or any(not isinstance(t, str) or not t.strip() for t in ([targets] if isinstance(targets, str) else targets))
    ):
        raise ConfigError(f"{name}.lora_targets: {targets!r} is not valid: use layer names or paths (wildcards allowed), "
                          "e.g. [query, value], or null for the attention query/value projections.")
    u = s.unfreeze
    if u is None:
        return
    if isinstance(u, bool):
        raise ConfigError(f"{name}.unfreeze: {u!r} is not valid: {_UNFREEZE_HELP}.")
    if isinstance(u, int):
        if u < 0:
            raise ConfigError(f"{name}.unfreeze: {u} is not valid: {_UNFREEZE_HELP}.")
    elif isinstance(u, float):
        if not 0.0 < u <= 1.0:
            raise ConfigError(f"{name}.unfreeze: {u} is not valid: a fraction must be in (0, 1]; or {_UNFREEZE_HELP}.")
    elif isinstance(u, str):
        if u.startswith("blocks:") and not re.fullmatch(r"blocks:[1-9]\d*", u):
            raise ConfigError(f"{name}.unfreeze: {u!r} is not valid: 'blocks:N' needs a positive integer N, e.g. 'blocks:2'.")
        if not u:
            raise ConfigError(f"{name}.unfreeze: an empty string is not valid: {_UNFREEZE_HELP}.")
    else:
        raise ConfigError(f"{name}.unfreeze: {u!r} is not valid: {_UNFREEZE_HELP}.")
