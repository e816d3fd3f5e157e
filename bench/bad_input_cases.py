"""The cases of the bad-input harness (``python -m bench.bad_inputs``), generated from tables.

Each command is a template that works as it is (:data:`COMMANDS`; run as a control), with
named slots; each input class changes one part of it: a file slot gets a bad file, a flag a bad
value, an override a bad key or value, an output slot a place that cannot be written, a prompt
slot a text no model can be asked for. Every input class reaches every command that takes that
kind of input; the repetitive ones (every generic bad file into every reader: they pass the
same checks) are spread over the commands by :func:`rotate`, so that the full run stays within
about 25 minutes on a 2-core machine.
"""

from __future__ import annotations

import os
import pickle
import shutil
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import bad_input_fixtures as fixtures
from bench.bad_input_kit import Case, Setup

STAGE1 = str(fixtures.PRETRAINED / "stage1.ckpt")
CLIP = str(fixtures.PRETRAINED / "clip.pt")
WORLD = "{fx}/world.h5"
MARKER_PATH = "{fx}/" + fixtures.MARKER
LONG = "x" * 300


# -- command templates ------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """A command line that works as it is (the control), with named slots to vary.

    ``template`` items: plain arguments, ``<slot>`` (replaced by a value, default
    ``slots[slot]``), ``<overrides>`` (where extra KEY=VALUE overrides go). Extra flags go at
    the end (argparse keeps a flag's last value). ``outputs``: output slot -> "file" or
    "folder". ``setup`` prepares each case's folder (e.g. copies a run folder into it).
    """

    name: str
    template: tuple[str, ...]
    slots: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    setup: Setup | None = None
    control: bool = True

    def argv(
        self, flags: tuple = (), overrides: tuple = (), **values: str | bytes
    ) -> tuple[str | bytes, ...]:
        """The template with ``values`` in their slots, ``overrides`` and ``flags`` added."""
        out: list[str | bytes] = []
        for item in self.template:
            if item == "<overrides>":
                out += overrides
            elif item.startswith("<") and item.endswith(">"):
                out.append(values.get(item[1:-1], self.slots.get(item[1:-1], "")))
            else:
                out.append(item)
        if "<overrides>" not in self.template:
            out += overrides
        return (*out, *flags)

    def case(
        self,
        kind: str,
        names: tuple[str, ...],
        *,
        setup: Setup | None = None,
        user: str = "root",
        flags: tuple = (),
        overrides: tuple = (),
        **values: str | bytes,
    ) -> Case:
        """A bad case: this command with one part changed."""
        return Case(
            command=self.name,
            kind=kind,
            argv=self.argv(flags, overrides, **values),
            names=names,
            setup=_chain(self.setup, setup),
            user=user,
        )


def _chain(first: Setup | None, second: Setup | None) -> Setup | None:
    if first is None or second is None:
        return first or second

    def both(w: Path, fx: Path) -> None:
        first(w, fx)
        second(w, fx)

    return both


def copy_fixture(name: str, dest: str) -> Setup:
    """Setup: copy ``fx/name`` (file or folder) to ``w/dest``."""

    def setup(w: Path, fx: Path) -> None:
        src = fx / name
        if src.is_dir():
            shutil.copytree(src, w / dest)
        else:
            shutil.copy(src, w / dest)

    return setup


SYNTH = ["--objects", "2", "--views", "2", "--res", "16", "--surface-points", "2048"]
SYNTH += ["--occ-points", "64", "--workers", "1"]
SVR_TINY = ["data.batch_size=4", "data.views_per_object=2", "data.pixels=16"]
SVR_TINY += ["data.occupancy_points=64", "encoder.c_dim=16", "encoder.width=8", "decoder.c_dim=16"]
SVR_TINY += ["decoder.hidden=32", "decoder.n_blocks=1", "march.n_steps=[[0, 8]]"]
SVR_TINY += ["march.n_secant=2", "trainer.max_steps=1", "trainer.val_check_interval=0"]
CLIP_TINY = ["model=tiny-64", "data.batch_size=8", "val.batch_size=64", "optim.warmup_steps=1"]
CLIP_TINY += ["export_half=false", "trainer.max_steps=1", "trainer.val_check_interval=0"]
STAGE1_TINY = ["data.batch_size=4", "data.pixels=16", "mapper.out_dim=16", "mapper.hidden=32"]
STAGE1_TINY += ["mapper.n_wide=1", "mapper.n_narrow=1", "prefit.epochs=1", "march.n_steps=[[0, 8]]"]
STAGE1_TINY += ["march.n_secant=2", "trainer.max_steps=1", "trainer.val_check_interval=0"]
POINTNET_TINY = ["data.points=128", "data.batch_size=4", "trainer.max_steps=1"]
POINTNET_TINY += ["trainer.val_check_interval=0"]
EID_TINY = ["trainer.max_steps=1", "trainer.val_check_interval=0", "data.batch_size=2"]
EID_TINY += ["data.pixels=8", "data.occupancy_points=64", "decoder.hidden=32"]
EID_TINY += ["decoder.n_blocks=1", "march.n_steps=[[0, 8]]"]
STYLIZE_FAST = ["stylize.steps=1", "stylize.views=1", "stylize.resolution=16"]
STYLIZE_FAST += ["stylize.march.n_steps=12", "stylize.march.n_secant=2"]
STYLIZE_FAST += ["stylize.prior.points=256", "stylize.iou_grid=8", "export.mesh_resolution0=8"]
STYLIZE_FAST += ["export.mesh_upsampling_steps=1", "export.march_steps=12"]
STYLIZE_FAST += ["export.turntable_views=2", "export.turntable_resolution=16"]
STYLIZE_FAST += ["export.eval_views=1"]
EVALUATE_FAST = ["stage2.steps=1", "stage2.views=1", "stage2.resolution=16"]
EVALUATE_FAST += ["stage2.march.n_steps=12", "stage2.march.n_secant=2", "render.views=2"]
EVALUATE_FAST += ["render.resolution=16", "render.march_steps=12", "shape.mesh_resolution0=8"]
EVALUATE_FAST += ["shape.mesh_upsampling_steps=1", "shape.iou_grid=8", "shape.points=256"]
EVALUATE_FAST += ["reference.split=null", "reference.max_images=8"]


def _fit(stage: str, tiny: list[str], extra: tuple[str, ...] = (), **slots: str) -> Command:
    template = ("fit", stage, "--config", "<config>", *extra, "--data", "<data>")
    template += ("--out", "<out>", "--no-progress", *tiny, "<overrides>")
    defaults = {"config": f"{stage}/tiny", "data": WORLD, "out": "{w}/run", **slots}
    return Command(f"fit {stage}", template, defaults, {"out": "folder"})


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in [
        Command("data synth", ("data", "synth", "--out", "<out>", *SYNTH),
                {"out": "{w}/w.h5"}, {"out": "file"}),
        Command("data check", ("data", "check", "<file>"), {"file": WORLD}),
        Command("data info", ("data", "info", "<file>", "--json"), {"file": WORLD}),
        Command("data sheet", ("data", "sheet", "<file>", "-o", "<out>", "--objects", "2",
                               "--views", "2"), {"file": WORLD, "out": "{w}/s.png"},
                {"out": "file"}),
        Command("data carve", ("data", "carve", "<file>", "--out", "<out>", "--grid", "16",
                               "--occ-points", "64", "--surface-points", "64", "--no-progress"),
                {"file": WORLD, "out": "{w}/c.h5"}, {"out": "file"}),
        Command("data export-folder", ("data", "export-folder", "<file>", "--out", "<out>",
                                       "--no-progress"),
                {"file": WORLD, "out": "{w}/renders"}, {"out": "folder"}),
        Command("data import-dvr", ("data", "import-dvr", "<root>", "--out", "<out>"),
                {"root": "{fx}/dvr", "out": "{w}/d.h5"}, {"out": "file"}),
        Command("data import-blender", ("data", "import-blender", "<root>", "--out", "<out>"),
                {"root": "{fx}/blender", "out": "{w}/b.h5"}, {"out": "file"}),
        Command("data import-folder", ("data", "import-folder", "<root>", "--out", "<out>",
                                       "--no-progress"),
                {"root": "{fx}/folder", "out": "{w}/f.h5"}, {"out": "file"}),
        _fit("svr", SVR_TINY),
        _fit("clip", CLIP_TINY),
        _fit("stage1", STAGE1_TINY, ("--svr", "<svr>", "--clip", "<clip>"),
             svr="{fx}/svr.ckpt", clip=CLIP),
        _fit("pointnet", POINTNET_TINY),
        _fit("eid", EID_TINY, ("--clip", "<clip>"), clip="clip/tiny-64"),
        Command("fit all", ("fit", "all", "--data", "<data>", "--out", "<out>", "--clip",
                            "clip/tiny-64", "--steps", "1", "--no-progress"),
                {"data": WORLD, "out": "{w}/run"}, {"out": "folder"}, control=False),
        Command("eval svr", ("eval", "svr", "<checkpoint>", "--data", "<data>", "--split", "val",
                             "--n-steps", "8", "--device", "cpu", "--out", "<out>"),
                {"checkpoint": "{fx}/svr.ckpt", "data": WORLD, "out": "{w}/r.json"},
                {"out": "file"}),
        Command("eval clip", ("eval", "clip", "<checkpoint>", "--data", "<data>", "--split",
                              "val", "--device", "cpu", "--out", "<out>"),
                {"checkpoint": CLIP, "data": WORLD, "out": "{w}/r.json"}, {"out": "file"}),
        Command("eval stage1", ("eval", "stage1", "<checkpoint>", "--data", "<data>", "--split",
                                "val", "--clip", "<clip>", "--n-steps", "8",
                                "--render-objects", "1", "--device", "cpu", "--out", "<out>"),
                {"checkpoint": "{fx}/stage1.ckpt", "data": WORLD, "clip": CLIP,
                 "out": "{w}/r.json"}, {"out": "file"}),
        Command("export", ("export", "<checkpoint>", "--image", "<image>", "--out", "<out>",
                           "--mesh-resolution", "64", "--resolution", "16",
                           "--turntable-views", "2", "--device", "cpu"),
                {"checkpoint": "{fx}/svr.ckpt", "image": "{fx}/image.png", "out": "{w}/exp"},
                {"out": "folder"}),
        Command("export --object", ("export", "{fx}/svr.ckpt", "--object", "<object>",
                                    "--data", "<data>", "--out", "{w}/exp",
                                    "--mesh-resolution", "64", "--resolution", "16",
                                    "--turntable-views", "2", "--device", "cpu"),
                {"object": "synth-000000", "data": WORLD}),
        Command("generate", ("generate", "<prompt>", *fixtures.GENERATE_FAST, "<overrides>",
                             "--stage1", "<stage1>", "--out", "<out>", "--device", "cpu",
                             "--no-progress"),
                {"prompt": "a red chair", "stage1": STAGE1, "out": "{w}/gen"},
                {"out": "folder"}),
        Command("stylize", ("stylize", "<run>", "<style>", *STYLIZE_FAST, "<overrides>",
                            "--out", "<out>", "--device", "cpu", "--no-progress"),
                {"run": "{w}/run", "style": "wooden", "out": "{w}/sty"}, {"out": "folder"},
                setup=copy_fixture("gen", "run")),
        Command("slim", ("slim", "<checkpoint>", "--out", "<out>"),
                {"checkpoint": "{fx}/svr.ckpt", "out": "{w}/s.pt"}, {"out": "file"}),
        Command("import-iss", ("import-iss", "<checkpoint>", "--out", "<out>", "--clip", CLIP),
                {"checkpoint": "{fx}/iss.pth", "out": "{w}/i.ckpt"}, {"out": "file"}),
        Command("gallery", ("gallery", "<runs>", "--out", "<out>"),
                {"runs": "{fx}/gen", "out": "{w}/g.png"}, {"out": "file"}),
        Command("evaluate", ("evaluate", "--texts", "<texts>", "--ref-data", "<data>", "--out",
                             "<out>", "--methods", "full", "--stage1", "<stage1>",
                             "--device", "cpu", "--no-progress", *EVALUATE_FAST, "<overrides>"),
                {"texts": "{fx}/texts.txt", "data": WORLD, "stage1": STAGE1,
                 "out": "{w}/ev"}, {"out": "folder"}),
    ]
}  # fmt: skip


# -- input classes ----------------------------------------------------------------------------
def pick(table: dict, *kinds: str) -> dict:
    """The entries ``kinds`` of ``table``."""
    return {k: table[k] for k in kinds}


def path_names(path: str) -> tuple[str, ...]:
    """How an error may name ``path``: itself, or (a long one) its first characters."""
    if len(Path(path).name) > 255:
        return (path[: path.rindex("/") + 11],)
    return (path,)


#: Files that are no kind of input at all.
GENERIC = {
    "missing": "{fx}/absent.file",
    "empty": "{fx}/empty.bin",
    "folder": "{fx}/adir",
    "fifo": "{fx}/pipe",
    "dev-zero": "/dev/zero",
    "dev-urandom": "/dev/urandom",
    "random-bytes": "{fx}/random.bin",
    "zeros": "{fx}/zeros.bin",
    "text": "{fx}/notes.txt",
    "long-name": "{w}/" + LONG,
}
#: Files that look like the wrong thing where an HDF5 dataset is expected.
HDF5_WRONG = {
    "truncated-h5": "{fx}/truncated.h5",
    "header-only-h5": "{fx}/header-only.h5",
    "unrelated-h5": "{fx}/other.h5",
    "checkpoint-as-data": "{fx}/svr.ckpt",
    "png-as-data": "{fx}/image.png",
}
#: Schema-damaged copies of the world (bench.bad_input_fixtures.HDF5_EDITS).
HDF5_DAMAGED = {name: f"{{fx}}/{name}.h5" for name in fixtures.HDF5_EDITS}
#: Non-finite numbers inside the world: in its cameras (every reader checks them when it
#: opens the file), and in what some commands read (depth, ground truth).
HDF5_NONFINITE = {k: v for k, v in HDF5_DAMAGED.items() if k.startswith(("nan-", "inf-"))}
CAMERAS_NONFINITE = pick(HDF5_NONFINITE, "nan-world-mat", "inf-camera-mat", "nan-scale-mat")
NONFINITE_READ = {
    "eval svr": pick(HDF5_NONFINITE, "nan-depth", "nan-occ-points"),
    "eval stage1": pick(HDF5_NONFINITE, "nan-occ-points"),
    "fit svr": pick(HDF5_NONFINITE, "nan-depth", "nan-occ-points"),
    "fit pointnet": pick(HDF5_NONFINITE, "nan-surface", "inf-surface-normals"),
    "evaluate": pick(HDF5_NONFINITE, "nan-occ-points"),  # (no PointNet: no surface read)
}
CKPT_WRONG = {
    "truncated-ckpt": "{fx}/truncated.ckpt",
    "zip-not-torch": "{fx}/notorch.zip",
    "pickle-payload": "{fx}/payload.pkl",
    "torch-payload": "{fx}/payload.pt",
    "nested-payload": "{fx}/payload-nested.pt",
    "empty-dict": "{fx}/empty-dict.ckpt",
    "list": "{fx}/list.ckpt",
    "no-weights": "{fx}/no-weights.ckpt",
    "npy": "{fx}/array.npy",
    "png-as-ckpt": "{fx}/image.png",
    "hdf5-as-ckpt": WORLD,
}
#: Images export cannot take (greyscale, palette, CMYK and 16-bit images are converted).
IMAGES_WRONG = {
    "wrong-size": "{fx}/big.png",
    "one-pixel": "{fx}/one-pixel.png",
    "float-mode": "{fx}/float.tiff",
    "truncated-png": "{fx}/truncated.png",
    "text-as-png": "{fx}/text.png",
    "huge-header": "{fx}/huge-header.png",
    "hdf5-as-image": WORLD,
    "checkpoint-as-image": "{fx}/svr.ckpt",
}
#: (section, int key) of each stage's config, for the broken YAML files: keys that the
#: templates' own overrides do not set (an override replaces a wrong value, as it should).
YAML_STAGES = {
    "svr": ("trainer", "log_every"),
    "clip": ("trainer", "log_every"),
    "stage1": ("trainer", "log_every"),
    "pointnet": ("trainer", "log_every"),
    "eid": ("trainer", "log_every"),
    "generate": ("stage2", "march.chunk"),
    "stylize": ("stylize", "march.chunk"),
    "evaluate": ("pure_clip", "grid"),
}
YAML_KINDS = fixtures.YAML_KINDS
#: The broken YAML kinds that parse: their error may name the config key instead of the file.
YAML_CONTENT_KINDS = (
    "section-number",
    "section-list",
    "unknown-top-key",
    "unknown-nested-key",
    "wrong-type-string",
    "wrong-type-bool",
    "wrong-type-float",
    "huge-float",
)
#: Prompts no model can be asked for (str, or bytes: not UTF-8).
PROMPTS: dict[str, str | bytes] = {
    "empty": "",
    "space": " ",
    "whitespace": " \t\n ",
    "escape-sequence": "\x1b[31ma red chair\x1b[0m",
    "bell": "a red\x07 chair",
    "delete-char": "a red\x7f chair",
    "c1-control": "a red\x85 chair",
    "non-utf8": b"a red \xff\xfe chair",
    "encoded-surrogate": b"a red \xed\xa0\x80 chair",
}
#: A 10,000-character prompt is no bad input here: CLIP reads its first tokens and the command
#: warns (tests/models/test_clip.py); it runs as a control.
LONG_PROMPT = ("a red chair " * 834)[:10000]


def file_cases(
    command: str, slot: str, table: dict[str, str], family: str = "file", **extra
) -> Iterator[Case]:
    """``command`` with each file of ``table`` in ``slot``; the error must name the file."""
    cmd = COMMANDS[command]
    for kind, path in table.items():
        yield cmd.case(f"{family}:{slot}={kind}", path_names(path), **{slot: path}, **extra)


def flag_file_cases(command: str, flag: str, table: dict[str, str]) -> Iterator[Case]:
    """``command`` with ``flag FILE`` added for each file of ``table``."""
    cmd = COMMANDS[command]
    for kind, path in table.items():
        yield cmd.case(f"file:{flag}={kind}", path_names(path), flags=(flag, path))


def rotate(table: dict, n: int, key: str) -> dict:
    """``n`` entries of ``table`` in a row, starting at a place set by ``key``
    (deterministically): a repetitive input class spread over the commands, so that each
    command gets a few and, over the commands, all of them are tried."""
    items = list(table.items())
    start = zlib.crc32(key.encode()) % len(items)
    return dict(items[(start + i) % len(items)] for i in range(min(n, len(items))))


def data_cases() -> Iterator[Case]:
    """Multi-view files: every kind into ``data check``; into each other reader a few generic
    ones and the damage that matters to it (what it reads beyond the header and cameras)."""
    damaged = {k: v for k, v in HDF5_DAMAGED.items() if k != "no-eval"}  # eval/ is optional
    yield from file_cases("data check", "file", {**GENERIC, **HDF5_WRONG, **damaged})
    header = pick(
        HDF5_DAMAGED,
        "height-string",
        "height-zero",
        "info-not-json",
        "world-mat-3x3",
        "caption-count-range",
        "bad-format",
    )
    yield from file_cases(
        "data info", "file", {**rotate(GENERIC, 2, "info"), **HDF5_WRONG, **header}
    )
    images = pick(
        HDF5_DAMAGED, "no-rgb", "rgb-wrong-size", "rgb-float", "object-index-range", "split-unknown"
    )
    yield from file_cases("data sheet", "file", {**rotate(GENERIC, 2, "sheet"), **images})
    masks = pick(HDF5_DAMAGED, "no-views", "object-index-range")
    yield from file_cases(
        "data carve",
        "file",
        {
            **rotate(GENERIC, 2, "carve"),
            **rotate(HDF5_WRONG, 1, "carve"),
            **rotate(CAMERAS_NONFINITE, 1, "carve"),
            **masks,
        },
    )
    yield from file_cases(
        "data export-folder",
        "file",
        {**rotate(GENERIC, 2, "export"), **rotate(HDF5_WRONG, 1, "export"), **images},
    )
    ground_truth = pick(HDF5_DAMAGED, "view-offset-range")  # eval/ is optional here too
    yield from file_cases(
        "eval svr",
        "data",
        {**rotate(GENERIC, 1, "eval svr"), **NONFINITE_READ["eval svr"], **ground_truth},
    )
    for command in ("eval clip", "eval stage1", "export --object", "evaluate", "fit svr"):
        some = {
            **rotate(GENERIC, 1, command),
            **rotate(HDF5_WRONG, 1, command),
            **rotate(NONFINITE_READ.get(command, CAMERAS_NONFINITE), 1, command),
        }
        yield from file_cases(command, "data", some)
    for command in ("fit clip", "fit stage1", "fit pointnet", "fit eid", "fit all"):
        table = NONFINITE_READ.get(command, CAMERAS_NONFINITE)
        yield from file_cases(command, "data", rotate(table, 1, command))
    yield from file_cases("fit all", "data", rotate(GENERIC, 1, "fit all"))


CKPT_KINDS = {
    "nan-weights": "{fx}/nan-weights.ckpt",
    "stage1-as-svr": "{fx}/stage1.ckpt",
    "svr-as-stage1": "{fx}/svr.ckpt",
    "eid-as-stage1": "{fx}/eid.ckpt",
}


def checkpoint_cases() -> Iterator[Case]:
    """Broken and wrong-kind checkpoints wherever a checkpoint is read: every kind into
    ``slim`` and ``import-iss``, a few (in rotation) into the other readers."""
    yield from file_cases(
        "slim",
        "checkpoint",
        {**rotate(GENERIC, 3, "slim"), **CKPT_WRONG, **pick(CKPT_KINDS, "nan-weights")},
    )
    yield from file_cases(
        "import-iss",
        "checkpoint",
        {
            **rotate(GENERIC, 2, "iss"),
            **rotate(CKPT_WRONG, 5, "iss"),
            "svr-as-iss": "{fx}/svr.ckpt",
        },
    )
    readers = {
        "export": ("checkpoint", "stage1-as-svr"),
        "eval svr": ("checkpoint", "nan-weights"),
        "eval stage1": ("checkpoint", "svr-as-stage1"),
        "generate": ("stage1", "eid-as-stage1"),
    }
    for command, (slot, kind) in readers.items():
        table = {
            **rotate(GENERIC, 1, command),
            **rotate(CKPT_WRONG, 2, command),
            **pick(CKPT_KINDS, kind),
        }
        yield from file_cases(command, slot, table)
    yield from file_cases("fit stage1", "svr", pick(CKPT_KINDS, "stage1-as-svr"))
    yield from flag_file_cases(
        "stylize",
        "--stage1",
        {**rotate(CKPT_WRONG, 1, "stylize"), **pick(CKPT_KINDS, "svr-as-stage1")},
    )
    for flag in ("--stage1-nobg", "--ei-d", "--pointnet", "--judge"):
        yield from flag_file_cases("evaluate", flag, rotate({**GENERIC, **CKPT_WRONG}, 1, flag))
    clips = {**CKPT_WRONG, "svr-as-clip": "{fx}/svr.ckpt"}
    for command, slot in (
        ("eval clip", "checkpoint"),
        ("eval stage1", "clip"),
        ("fit eid", "clip"),
    ):
        yield from file_cases(command, slot, rotate(clips, 1, command + slot))
    yield from flag_file_cases("generate", "--clip", rotate(clips, 1, "generate--clip"))


def clip_spec_cases() -> Iterator[Case]:
    """CLIP specs that are names, not files."""
    specs = {
        "unknown-model": "ViT-Bogus-99:openai",
        "unknown-config": "clip/bogus",
        "unknown-tag": "ViT-B-32:nosuchtag",
        "empty-spec": "",
    }
    for command, slot, n in (
        ("eval clip", "checkpoint", 4),
        ("generate", "--clip", 1),
        ("fit eid", "clip", 1),
    ):
        for kind, spec in rotate(specs, n, command).items():
            names = (spec,) if spec else ("--clip", "clip", "CLIP")
            where = {"flags": (slot, spec)} if slot.startswith("--") else {slot: spec}
            yield COMMANDS[command].case(f"spec:{slot}={kind}", names, **where)


def image_cases() -> Iterator[Case]:
    """Images of the wrong size, mode or content as export's input."""
    yield from file_cases("export", "image", {**rotate(GENERIC, 2, "image"), **IMAGES_WRONG})


#: Where each command reads a YAML config (a positional slot or a flag), and how many of the
#: broken YAML kinds it gets (all: the parser is shared).
YAML_PLACES = {
    "fit svr": ("config", 8),
    "generate": ("--preset", 6),
    "stylize": ("--preset", 2),
    "evaluate": ("--config", 2),
    "fit clip": ("config", 1),
    "fit stage1": ("config", 1),
    "fit pointnet": ("config", 1),
    "fit eid": ("config", 1),
}


def yaml_cases() -> Iterator[Case]:
    """Broken YAML configs for every command that reads one."""
    for command, (slot, n) in YAML_PLACES.items():
        stage = command.removeprefix("fit ")
        kinds = rotate({k: k for k in YAML_KINDS}, n, command)
        table = {k: f"{{fx}}/yaml/{stage}/{k}.yaml" for k in kinds}
        if command == "fit svr":
            table |= rotate(GENERIC, 1, "yaml")
        section, key = YAML_STAGES[stage]
        for kind, path in table.items():
            where = {"flags": (slot, path)} if slot.startswith("--") else {slot: path}
            names = path_names(path)
            if kind in YAML_CONTENT_KINDS:  # parsed YAML, wrong content: the key names it
                names += (f"'{section}'", f"'{key.rsplit('.', 1)[-1]}'", "bogus_")
            yield COMMANDS[command].case(f"yaml:{slot}={kind}", names, **where)
    for command, slot in (
        ("fit svr", "config"),
        ("generate", "--preset"),
        ("evaluate", "--config"),
    ):
        where = {"flags": (slot, "bogus")} if slot.startswith("--") else {slot: "svr/bogus"}
        yield COMMANDS[command].case(f"yaml:{slot}=unknown-name", ("bogus",), **where)


#: Bad values of numeric flags: command -> flag -> values.
FLAG_VALUES: dict[str, dict[str, tuple[str, ...]]] = {
    "data synth": {
        "--objects": ("-1", "0", "10000000"),
        "--views": ("0", "-1", "100000"),
        "--res": ("0", "-8", "100000"),
        "--seed": ("-1",),
        "--distance": ("nan", "inf", "-1", "0"),
        "--surface-points": ("0", "-1", "1000000000"),
        "--occ-points": ("-1", "1000000000"),
        "--workers": ("-1", "100000"),
    },
    "data sheet": {"--objects": ("0", "-1", "100000"), "--views": ("0", "1000"), "--seed": ("-1",)},
    "data carve": {
        "--grid": ("0", "-1", "100000"),
        "--occ-points": ("0", "-1"),
        "--surface-points": ("0", "-1"),
        "--views": ("0", "-1"),  # more views than there are: all of them
        "--seed": ("-1",),
    },
    "data import-blender": {
        "--bound": ("nan", "inf", "0", "-1"),
        "--splits": ("", ",,", "bogus"),
        "--category": ("", "a\nb"),
    },
    "data import-dvr": {"--categories": ("nope", ",,")},
    "eval svr": {
        "--input-views": ("0",),
        "--n-steps": ("1", "10000000"),
        "--max-objects": ("-1",),
        "--device": ("tpu",),
    },
    "eval clip": {"--views": ("0",), "--max-objects": ("-1",), "--batch-size": ("0",)},
    "eval stage1": {"--n-steps": ("0", "10000000"), "--render-objects": ("-1",)},
    "export": {
        "--resolution": ("4", "100000"),
        "--turntable-views": ("0", "100000"),
        "--device": ("cuda:99",),
    },
    "export --object": {"--view": ("-1", "1000")},
    "generate": {
        "--steps": ("0", "-1", "10000000"),
        "--views": ("0", "-1", "100000"),
        "--res": ("0", "4", "100000"),
        "--samples": ("0", "-1", "5000"),
        "--seed": ("-1",),
        "--device": ("tpu", "cuda:99"),
    },
    "stylize": {
        "--steps": ("0", "-1", "10000000"),
        "--views": ("0", "100000"),
        "--res": ("0", "100000"),
        "--seed": ("-1",),
        "--mode": ("bogus", ""),
        "--device": ("tpu",),
    },
    "gallery": {"--frames": ("0", "-1", "100000")},
    "fit all": {"--steps": ("0", "-1"), "--budget": ("0", "-5"), "--clip": ("clip/bogus",)},
    "evaluate": {
        "--samples": ("0", "1000000"),
        "--workers": ("0", "1000"),
        "--shard": ("3/2", "a/b"),
        "--methods": ("bogus",),
        "--fid-features": ("bogus", "torchscript:{fx}/pipe"),
    },
}
#: Flag values that could start many processes if accepted: run as an unprivileged user whose
#: process count prlimit caps.
RISKY = {("data synth", "--workers", "100000"), ("evaluate", "--workers", "1000")}


def flag_names(flag: str, value: str) -> tuple[str, ...]:
    """How an error may name a bad flag value: the flag, or a value that is a word or path
    (a number alone does not say which flag it came from)."""
    try:
        float(value)
    except ValueError:
        if len(value.strip()) >= 3:
            return (flag, value.split(":", 1)[-1])
    return (flag,)


def flag_cases() -> Iterator[Case]:
    """Every flag of :data:`FLAG_VALUES` with each of its bad values, unknown flags, and
    words where numbers belong."""
    for command, flags in FLAG_VALUES.items():
        for flag, values in flags.items():
            for value in values:
                user = "nobody" if (command, flag, value) in RISKY else "root"
                yield COMMANDS[command].case(
                    f"flag:{flag}={value!r}",
                    flag_names(flag, value),
                    flags=(flag, value),
                    user=user,
                )
    for command in ("generate", "data synth", "gallery"):
        yield COMMANDS[command].case("flag:unknown", ("--bogus",), flags=("--bogus",))
    for command, flag in (
        ("generate", "--steps"),
        ("data synth", "--res"),
        ("gallery", "--frames"),
    ):
        yield COMMANDS[command].case("flag:not-a-number", (flag,), flags=(flag, "many"))


#: Config keys whose values the override cases break: command -> {key: kind}; kinds: count
#: (a positive int), rate (a positive float), weight (a finite float >= 0), pair (a range).
OVERRIDE_KEYS: dict[str, dict[str, str]] = {
    "generate": {
        "stage2.steps": "count",
        "stage2.lr": "rate",
        "stage2.resolution": "count",
        "stage2.guidance.lambda_clip": "weight",
        "stage2.cameras.distance": "pair",
    },
    "stylize": {"stylize.resolution": "count", "stylize.lambda_prior": "weight"},
    "evaluate": {"render.views": "count", "shape.points": "count"},
    "fit svr": {"trainer.max_steps": "count", "optim.lr": "rate"},
    "fit clip": {"data.batch_size": "count"},
    "fit stage1": {"mapper.hidden": "count"},
    "fit pointnet": {"data.points": "count"},
    "fit eid": {"loss.lambda_bg": "weight"},
}
BAD_VALUES = {
    "count": ("-1", "0", "1e12", "1000000000", "nan", "many"),
    "rate": ("-1", "0", "nan", "inf"),
    "weight": ("-1", "nan", "inf"),
    "pair": ("[nan, nan]", "[-1, -1]", "[5, 1]", "3"),
}
#: How many bad values each key gets, and how many wrong-whatever-the-value overrides each
#: command gets (in rotation): fit commands start slowly.
VALUES_PER_KEY = {"generate": 2, "stylize": 2, "evaluate": 1}
SYNTAX_PER_COMMAND = {"generate": 6, "stylize": 2, "evaluate": 2, "fit svr": 2}


def syntax_overrides(key: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Overrides that are wrong whatever the value: kind -> (text, names)."""
    section = key.split(".")[0]
    leaf = key.rsplit(".", 1)[-1]
    return {
        "unknown-key": ("bogus=1", ("bogus",)),
        "unknown-nested-key": (f"{section}.bogus=1", ("bogus",)),
        "empty-key": ("=3", ("=3",)),
        "double-dot": (f"{section}..x=1", (f"{section}..x",)),
        "invalid-yaml-value": (f"{key}=[1, 2", (key,)),
        "mapping-value": (f"{key}={{a: 1}}", (key, leaf)),
        "python-tag": (f'{key}=!!python/object/apply:os.system ["touch {MARKER_PATH}"]', (key,)),
        "section-as-value": (f"{section}=5", (section,)),
    }


def override_cases() -> Iterator[Case]:
    """Bad KEY=VALUE overrides: wrong types, absurd numbers, unknown keys, bad syntax."""
    for command, keys in OVERRIDE_KEYS.items():
        cmd = COMMANDS[command]
        n = VALUES_PER_KEY.get(command, 1)
        for key, kind in keys.items():
            values = rotate({v: v for v in BAD_VALUES[kind]}, n, command + key)
            for value in values:
                names = (key, key.rsplit(".", 1)[-1])
                yield cmd.case(f"override:{key}={value}", names, overrides=(f"{key}={value}",))
        syntax = syntax_overrides(next(iter(keys)))
        count = SYNTAX_PER_COMMAND.get(command, 0)
        for kind, (text, names) in rotate(syntax, count, command).items():
            yield cmd.case(f"override:{kind}", names, overrides=(text,))


def _mkdir(rel: str, mode: int = 0o755) -> Setup:
    def setup(w: Path, fx: Path) -> None:
        (w / rel).mkdir()
        (w / rel).chmod(mode)

    return setup


def _touch(rel: str) -> Setup:
    def setup(w: Path, fx: Path) -> None:
        (w / rel).write_text("already here\n")

    return setup


def _mkfifo(rel: str) -> Setup:
    def setup(w: Path, fx: Path) -> None:
        os.mkfifo(w / rel)

    return setup


def _nonempty(rel: str) -> Setup:
    def setup(w: Path, fx: Path) -> None:
        (w / rel).mkdir()
        (w / rel / "mine.txt").write_text("keep me\n")

    return setup


def output_table(
    kind: str, suffix: str = ""
) -> dict[str, tuple[str, tuple[str, ...], Setup | None, str]]:
    """Output locations that cannot be used: name -> (path, names, setup, user), for an
    output ``kind`` "file" or "folder" (file names end in ``suffix``, e.g. ".png")."""
    out, pipe = "out" + suffix, "apipe" + suffix
    table = {
        "under-proc": ("/proc/iss3d-bad-" + out, ("/proc",), None, "root"),
        "under-proc-self": ("/proc/self/iss3d-bad-" + out, ("/proc/self",), None, "root"),
        "under-sys": ("/sys/iss3d-bad-" + out, ("/sys",), None, "root"),
        "parent-missing": ("{w}/missing/" + out, ("{w}/missing",), None, "root"),
        "parent-is-file": ("{w}/afile/" + out, ("{w}/afile",), _touch("afile"), "root"),
        "read-only-folder": ("{w}/ro/" + out, ("{w}/ro",), _mkdir("ro", 0o555), "nobody"),
        "long-name": ("{w}/" + "o" * 300 + suffix, ("{w}/oooooooooo",), None, "root"),
        "is-a-fifo": ("{w}/" + pipe, ("{w}/" + pipe,), _mkfifo(pipe), "root"),
    }
    if kind == "file":
        folder = "afolder" + suffix
        table["is-a-folder"] = ("{w}/" + folder, ("{w}/" + folder,), _mkdir(folder), "root")
    else:
        table["is-a-file"] = ("{w}/afile", ("{w}/afile",), _touch("afile"), "root")
        table["not-empty"] = ("{w}/full", ("{w}/full",), _nonempty("full"), "root")
    return table


#: Commands that fail fast (no model imports): they get every bad output location.
CHEAP_OUTPUTS = ("data synth", "gallery", "data import-dvr", "data carve", "data export-folder")


def output_cases() -> Iterator[Case]:
    """Every output slot with places it cannot be written to (all of them for the cheap
    commands, three in rotation for the others)."""
    for cmd in COMMANDS.values():
        for slot, kind in cmd.outputs.items():
            suffix = Path(cmd.slots[slot]).suffix if kind == "file" else ""
            table = output_table(kind, suffix)
            if cmd.name == "evaluate":
                del table["not-empty"]  # evaluate reuses its --out folder to resume
            if cmd.name not in CHEAP_OUTPUTS:
                table = rotate(table, 2 if cmd.name.startswith("fit") else 3, cmd.name)
            for name, (path, names, setup, user) in table.items():
                yield cmd.case(
                    f"output:{slot}={name}", names, setup=setup, user=user, **{slot: path}
                )


#: Prompt files of evaluate --texts (built by :func:`build_text_files`).
TEXT_FILES: dict[str, bytes] = {
    "empty": b"",
    "comments-only": b"# nothing\n\n   \n",
    "utf16": "a red chair\n".encode("utf-16"),
    "binary": b"\xff\xfe\x00\x81\n",
    "control-chars": b"a red\x07 chair\n\x1b[31mblue\n",
    "nul-byte": b"a red\x00 chair\n",
}


def build_text_files(fx: Path) -> None:
    """``fx/texts-<kind>.txt`` for every :data:`TEXT_FILES` entry."""
    for kind, content in TEXT_FILES.items():
        (fx / f"texts-{kind}.txt").write_bytes(content)


def prompt_cases() -> Iterator[Case]:
    """Bad prompts (generate: all; stylize's style text: a few) and prompt files (evaluate)."""
    for kind, prompt in PROMPTS.items():
        yield COMMANDS["generate"].case(f"prompt:{kind}", ("prompt",), prompt=prompt)
    for kind, prompt in rotate(PROMPTS, 3, "stylize").items():
        yield COMMANDS["stylize"].case(f"prompt:{kind}", ("style", "prompt"), style=prompt)
    texts = {f"texts-{k}": f"{{fx}}/texts-{k}.txt" for k in TEXT_FILES}
    yield from file_cases("evaluate", "texts", rotate(texts, 4, "texts"))


def _damage(rel: str, content: bytes | None) -> Setup:
    """Setup: replace ``w/rel`` by ``content`` (None: a FIFO; b"<dir>": a folder;
    b"<gone>": nothing)."""

    def setup(w: Path, fx: Path) -> None:
        path = w / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        if content is None:
            os.mkfifo(path)
        elif content == b"<dir>":
            path.mkdir()
        elif content != b"<gone>":
            path.write_bytes(content)

    return setup


def _payload_bytes() -> bytes:
    return pickle.dumps(fixtures.Payload(Path("/nonexistent") / fixtures.MARKER))


#: Damage to a copy of a generate output folder: kind -> (file, new content, see _damage).
RUN_DAMAGE: dict[str, tuple[str, bytes | None]] = {
    "latent-missing": ("latent.pt", b"<gone>"),
    "latent-random": ("latent.pt", bytes(range(256)) * 8),
    "latent-empty": ("latent.pt", b""),
    "latent-folder": ("latent.pt", b"<dir>"),
    "latent-fifo": ("latent.pt", None),
    "latent-pickle-payload": ("latent.pt", b"<payload>"),
    "report-not-json": ("report.json", b"{not json"),
    "report-list": ("report.json", b"[1, 2, 3]"),
    "report-utf16": ("report.json", '{"prompt": "a red chair"}'.encode("utf-16")),
    "report-fifo": ("report.json", None),
    "report-missing": ("report.json", b"<gone>"),
    "turntable-corrupt": ("turntable.png", b"\x89PNG\r\n\x1a\ncorrupt"),
    "turntable-fifo": ("turntable.png", None),
    "turntable-folder": ("turntable.png", b"<dir>"),
    "turntable-missing": ("turntable.png", b"<gone>"),
}


def run_folder_cases() -> Iterator[Case]:
    """Damaged generate outputs given to stylize (RUN_DIR: its latent) and gallery (runs: its
    report and turntable), and things that are no run folder at all."""
    not_runs = {**pick(GENERIC, "missing", "fifo", "text", "folder"), "world-as-run": WORLD}
    for kind, path in not_runs.items():
        yield COMMANDS["gallery"].case(f"run:runs={kind}", path_names(path), runs=path)
    for kind, path in rotate(not_runs, 2, "stylize").items():
        yield COMMANDS["stylize"].case(f"run:run={kind}", path_names(path), run=path)
    for kind, (rel, content) in RUN_DAMAGE.items():
        content = _payload_bytes() if content == b"<payload>" else content
        if kind.startswith("latent"):
            yield COMMANDS["stylize"].case(
                f"run:run={kind}", ("{w}/run",), setup=_damage(f"run/{rel}", content)
            )
        else:
            damage = _chain(copy_fixture("gen", "run"), _damage(f"run/{rel}", content))
            yield COMMANDS["gallery"].case(
                f"run:runs={kind}", ("{w}/run",), setup=damage, runs="{w}/run"
            )


def layout_cases() -> Iterator[Case]:
    """Broken DVR and Blender layouts, and roots that are not folders."""
    roots = pick(GENERIC, "missing", "fifo", "text", "folder", "dev-zero")
    for command in ("data import-dvr", "data import-blender", "data import-folder"):
        yield from file_cases(command, "root", rotate(roots, 3, command), family="layout")
    for kind in fixtures.FOLDER_KINDS:
        root = f"{{fx}}/folder-{kind}"
        yield COMMANDS["data import-folder"].case(f"layout:root=folder-{kind}", (root,), root=root)
    for kind in fixtures.DVR_EDITS:
        root = f"{{fx}}/dvr-{kind}"
        names = (f"{root}/metadata.yaml",) if kind.startswith("meta") else (root,)
        yield COMMANDS["data import-dvr"].case(f"layout:root=dvr-{kind}", names, root=root)
    for kind in fixtures.BLENDER_KINDS:
        root = f"{{fx}}/blender-{kind}"
        names = (root, "/etc/passwd") if kind == "path-escape" else (root,)  # the file read
        yield COMMANDS["data import-blender"].case(f"layout:root=blender-{kind}", names, root=root)


def controls() -> Iterator[Case]:
    """Every template as it is, and inputs that look bad but are accepted by design (a
    10,000-character prompt: truncated with a warning): must exit 0."""
    for cmd in COMMANDS.values():
        if cmd.control:
            yield Case(cmd.name, "control", cmd.argv(), expect="ok", setup=cmd.setup)
    generate = COMMANDS["generate"]
    yield Case("generate", "control:long-prompt", generate.argv(prompt=LONG_PROMPT), expect="ok")


GENERATORS = (
    controls,
    data_cases,
    checkpoint_cases,
    clip_spec_cases,
    image_cases,
    yaml_cases,
    flag_cases,
    override_cases,
    output_cases,
    prompt_cases,
    run_folder_cases,
    layout_cases,
)


def all_cases() -> list[Case]:
    """Every case, controls first (ids are unique)."""
    cases = [case for make in GENERATORS for case in make()]
    ids = [c.id for c in cases]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise AssertionError(f"duplicate case ids: {sorted(duplicates)[:5]}")
    return cases


#: The cases of a quick run: one per input class, cheap commands first.
QUICK = (
    "data check | control",
    "generate | control",
    "data check | file:file=fifo",
    "data check | file:file=nan-world-mat",
    "data info | file:file=height-string",
    "eval svr | file:data=nan-depth",
    "slim | file:checkpoint=torch-payload",
    "slim | file:checkpoint=pickle-payload",
    "export | file:image=wrong-size",
    "generate | yaml:--preset=alias-bomb",
    "data synth | flag:--workers='100000'",
    "generate | flag:--res='100000'",
    "gallery | flag:--frames='-1'",
    "generate | override:python-tag",
    "data synth | output:out=read-only-folder",
    "gallery | output:out=under-proc",
    "generate | prompt:non-utf8",
    "gallery | run:runs=report-list",
    "stylize | run:run=latent-pickle-payload",
    "data import-dvr | layout:root=dvr-meta-invalid",
    "data import-blender | layout:root=blender-deep-nesting",
    "fit svr | yaml:config=section-number",
    "data carve | flag:--grid='0'",
)


def quick_subset(cases: list[Case]) -> list[Case]:
    """The cases named in :data:`QUICK`."""
    chosen = [c for c in cases if c.id in QUICK]
    missing = set(QUICK) - {c.id for c in chosen}
    if missing:
        raise AssertionError(f"quick cases not generated: {sorted(missing)}")
    return chosen
