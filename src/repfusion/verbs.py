"""The schemas of the verbs that are not a training run: probe, layers, demo, export, embed.

Each is a plain dataclass parsed by the same jsonargparse path as `distill`, `finetune`, `teacher` and
`pretrain` (`config.config_parser`), so every verb takes `--config FILE`, `--print_config` and dotted keys
(`--data.image_size 32`), and saves the resolved config as `config.yaml`. A section spells a setting the way
the training verbs' sections do: `teacher.source`, `teacher.layer`, `student.arch`, `student.width`,
`data.root`, `data.image_size`, `data.mean`, `trainer.progress`. `student.source` is a trained run to read a
student from (a distill run folder, its `student/`, a finetune run or its `model/`), as `teacher.source` is
the teacher to read.

Only dataclasses and plain types here: the CLI imports this module for `--help`, before torch.
Each section checks its own values in `__post_init__` (one sentence, before anything is written); what
needs a loaded teacher or student (a layer name, a timestep range) is checked by the runner that loads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import RepFusionError
from .jsondata import JSONValue

PROBE_MODES = ("clean", "noised")
EXPORT_FORMATS = ("onnx", "torchvision", "safetensors", "timm")
EMBED_FORMATS = ("safetensors", "npy")
DEMO_TASKS = ("classification", "segmentation", "landmarks")


def _positive(value: int | None, key: str) -> None:
    if value is not None and value < 1:
        raise RepFusionError(f"{key} must be a positive whole number, not {value}.")


def _one_of(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise RepFusionError(f"{key} must be {', '.join(choices[:-1])} or {choices[-1]}, not '{value}'.")


@dataclass
class TeacherOptions:
    """The teacher to read and how: the same keys as distill's `teacher` section.

    source: preset, save_pretrained folder, pipeline folder (latent, DiT), guided-diffusion .pt file or hub id.
    layer: one layer or a list (probe: each is probed; default the teacher's own `default_layer`).
    class_label: class-conditional teachers (ADM ImageNet, DiT): auto | dataset | null | a class index.
    adm_flags: an ADM checkpoint's model flags: a preset (imagenet-64, ...), a mapping of flags, or
        guided-diffusion's MODEL_FLAGS string.
    uncond_embedding: latent teachers without a text encoder: file with the empty-prompt embedding.
    """

    source: str | None = None
    layer: str | list[str] | None = None
    class_label: int | str = "auto"
    adm_flags: str | dict[str, JSONValue] = "imagenet-64"
    uncond_embedding: str | None = None

    def options(self) -> dict:
        """The keyword arguments `load_teacher` takes besides the source."""
        return {"class_label": self.class_label, "adm_flags": self.adm_flags,
                "uncond_embedding": self.uncond_embedding}

    def layers(self) -> list[str] | None:
        return None if self.layer is None else [self.layer] if isinstance(self.layer, str) else list(self.layer)


@dataclass
class StudentArch:
    """A student architecture to build: built-in, timm:NAME or torchvision:NAME, at a width."""

    arch: str | None = None
    width: float = 1.0

    def __post_init__(self) -> None:
        if self.width <= 0:
            raise RepFusionError(f"student.width must be a number > 0, not {self.width}.")


@dataclass
class StudentSource(StudentArch):
    """A trained student to read, or a random one: StudentArch's arch and width (a random student's architecture,
    default resnet18_cifar, and width) and their check, plus

    source: distill run folder (or its student/), finetune run folder (or its model/), or random[:ARCH] for a
        randomly initialised student.
    layer: the layer to read (default the student's feature layer).
    """

    source: str | None = None
    layer: str | None = None


@dataclass
class TrainedStudent:
    """student.source: a trained run (distill run folder or its student/, finetune run folder or its model/)."""

    source: str | None = None


@dataclass
class SampleData:
    """Which images a verb reads, spelled as the training verbs' data section; null: the verb's own default
    (probe: a student run's own data, else digits; the run's pixel mean/std and image size).

    mean / std: the student's pixel normalisation, one number per RGB channel (`[0.5,0.5,0.5]`).
    """

    source: str | None = None
    root: str | None = None
    image_size: int | None = None
    split_seed: int | None = None
    labels: str | None = None
    batch_size: int = 64
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        _positive(self.image_size, "data.image_size")
        _positive(self.batch_size, "data.batch_size")
        if self.std is not None and min(self.std) <= 0:
            raise RepFusionError(f"data.std must be three numbers > 0, not {list(self.std)}.")


@dataclass
class ProbeSection:
    """timesteps / modes: the teacher's t values and input modes (clean, noised); k: neighbours of a
    student's k-NN classifier."""

    timesteps: list[int] = field(default_factory=lambda: [0, 50, 100, 200, 400, 600, 800, 999])
    modes: list[str] = field(default_factory=lambda: list(PROBE_MODES))
    k: int = 20

    def __post_init__(self) -> None:
        if not self.timesteps:
            raise RepFusionError("probe.timesteps needs at least one t.")
        if not self.modes:
            raise RepFusionError("probe.modes needs at least one mode (clean, noised).")
        for mode in self.modes:
            _one_of(mode, PROBE_MODES, "probe.modes")
        _positive(self.k, "probe.k")


@dataclass
class ProbeRun:
    """`repfusion probe`: what a teacher knows at each t (teacher.source), or a frozen student's linear-probe
    and k-NN accuracy (student.source); exactly one of the two."""

    teacher: TeacherOptions = field(default_factory=TeacherOptions)
    student: StudentSource = field(default_factory=StudentSource)
    data: SampleData = field(default_factory=SampleData)
    probe: ProbeSection = field(default_factory=ProbeSection)

    def __post_init__(self) -> None:
        if (self.teacher.source is None) == (self.student.source is None):
            raise RepFusionError("Give exactly one of --teacher.source (probe a teacher) and --student.source "
                                 "(probe a student).")
        if self.teacher.source is not None and self.student.layer is not None:
            raise RepFusionError("--student.layer names a student's layer; a teacher's layers are --teacher.layer.")
        if self.student.source is not None:
            if self.teacher.layer is not None:
                raise RepFusionError("--teacher.layer names a teacher's layers; a student's layer is --student.layer.")


@dataclass
class ImageSize:
    """data.image_size: the input size (default the network's own)."""

    image_size: int | None = None

    def __post_init__(self) -> None:
        _positive(self.image_size, "data.image_size")


@dataclass
class LayersRun:
    """`repfusion layers`: every hookable module of a teacher (teacher.source) or a student architecture
    (student.arch) with its output shape; with --run-dir the table is saved there too (layers.txt)."""


    teacher: TeacherOptions = field(default_factory=TeacherOptions)
    student: StudentArch = field(default_factory=StudentArch)
    data: ImageSize = field(default_factory=ImageSize)

    def __post_init__(self) -> None:
        if (self.teacher.source is None) == (self.student.arch is None):
            raise RepFusionError("Give exactly one of --teacher.source and --student.arch to list its layers.")


@dataclass
class DemoData:
    """data.label_fraction: classification's share of training labels fine-tuning sees (stratified, per seed;
    null: the demo's own, 2 %)."""

    label_fraction: float | None = None


@dataclass
class DemoFinetune:
    """finetune.protocols: the fine-tuning protocols every arm runs (plain, lpft, lp, joint; several: the best on
    validation kept per seed and arm; null: pretrain's default, plain and LP-FT). Classification only."""

    protocols: list[str] | None = None

    def __post_init__(self) -> None:
        if self.protocols is not None:
            from .tasks.protocols import check_protocols

            check_protocols(self.protocols, "finetune.protocols")


@dataclass
class Progress:
    """trainer.progress: progress bars (or lines, off a terminal)."""

    progress: bool = True


@dataclass
class DemoRun:
    """`repfusion demo`: the whole pipeline on embedded data, digits classification (default) or face parsing /
    landmarks on generated faces.

    seeds: fine-tuning seeds per arm (>= 2; null: 3). labelled: dense tasks' labelled training faces per seed
    (null: 48). quick: one or two epochs per stage (a smoke run).
    """


    task: str = "classification"
    seeds: int | None = None
    data: DemoData = field(default_factory=DemoData)
    finetune: DemoFinetune = field(default_factory=DemoFinetune)
    labelled: int | None = None
    quick: bool = False
    trainer: Progress = field(default_factory=Progress)

    def __post_init__(self) -> None:
        _one_of(self.task, DEMO_TASKS, "task")
        if self.task != "classification" and self.finetune.protocols not in (None, ["plain"]):
            raise RepFusionError(f"--finetune.protocols applies to the classification demo; the {self.task} demo "
                                 "fine-tunes plainly (drop the flag or use --task classification).")


@dataclass
class ExportRun:
    """`repfusion export`: a distill or finetune run's backbone (or, with head, its fine-tuned classifier) as
    ONNX, its weights under torchvision's key names, or timm's Hub layout.

    student.source: the run (distill run folder or its student/, finetune run folder or its model/).
    format: onnx | torchvision | safetensors | timm (torchvision and safetensors: the same torchvision-keyed
        .safetensors file; timm: a folder with model.safetensors and a config.json with pretrained_cfg).
    head: the fine-tuned classifier with its head (a finetune classification run).
    path: the output file (default in the run's student/ or model/ folder: backbone.onnx, classifier.onnx
        with head, torchvision_ARCH.safetensors), or folder for timm (default its timm/). The resolved
        config is written beside it, as PATH's name with `.config.yaml` for its suffix.
    data.image_size: ONNX input size (default the size the run was trained at).
    opset: ONNX opset (default torch.onnx's).
    """


    student: TrainedStudent = field(default_factory=TrainedStudent)
    format: str | None = None
    head: bool = False
    path: str | None = None
    data: ImageSize = field(default_factory=ImageSize)
    opset: int | None = None

    def __post_init__(self) -> None:
        if self.student.source is None:
            raise RepFusionError("Give the run to export: repfusion export RUN (or --student.source RUN).")
        if self.format is None:
            raise RepFusionError(f"Give the export's --format: {', '.join(EXPORT_FORMATS)}.")
        _one_of(self.format, EXPORT_FORMATS, "format")
        _positive(self.opset, "opset")


@dataclass
class EmbedRun:
    """`repfusion embed`: the pooled features of every image under data.root, with the file list.

    student.source: the run whose backbone embeds (distill run folder or its student/, finetune run or model/).
    data: root (any nesting), image_size / mean / std (default the run's), batch_size, labels (the label column
        of files.csv: auto, folders, none, or a CSV of file,label rows; default auto).
    format: safetensors | npy. device: cpu, cuda, cuda:1, ... (default CUDA when present).
    """


    student: TrainedStudent = field(default_factory=TrainedStudent)
    data: SampleData = field(default_factory=lambda: SampleData(labels="auto"))
    format: str = "safetensors"
    device: str | None = None

    def __post_init__(self) -> None:
        if self.student.source is None:
            raise RepFusionError("Give the run whose backbone embeds: --student.source RUN.")
        if self.data.root is None:
            raise RepFusionError("Give the folder of images to embed: --data.root FOLDER.")
        _one_of(self.format, EMBED_FORMATS, "format")
