"""A corpus of hostile inputs, each run through the real commands: crafted checkpoints (every metadata field wrong
in type, range and size; lying headers; non-float weights), special and unwritable output locations, full disks,
non-UTF-8 file names and class names made to break the CSV.

The checkpoint and output cases run in ONE child process (torch imported once) whose address space is limited to
``ADDRESS_SPACE_LIMIT``: an input that made cnnctl try to allocate gigabytes fails there instead of succeeding.
Every case must end in its own clear line (exit code, the file and the field named) and never in the catch-all
``unexpected ...`` that is kept for real bugs; nothing may be written outside the output location.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import resource
import stat
import struct
import subprocess
import sys
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from cnnctl import checkpoint
from cnnctl.checkpoint import CheckpointMeta
from cnnctl.data.base import Preprocessing
from cnnctl.models import build_model

HERE = Path(__file__).parent
DRIVER = HERE / "hostile_driver.py"
# torch, torchvision and onnxruntime map ~4 GB of address space (VmPeak measured 4.0 GB for summary, predict and
# both exports of a small model); a single image_size of 100,000 asked for 10 GB before it was refused.
ADDRESS_SPACE_LIMIT = 6 * 2**30
IS_ROOT = os.geteuid() == 0


# ------------------------------------------------------------------------------------------------ the corpus


def _good(arch: str = "simplecnn", **arch_args: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    torch.manual_seed(0)
    channels = 3 if arch == "smallvgg" else 1
    model = build_model(arch, num_classes=10, in_channels=channels, **arch_args)
    meta = CheckpointMeta(arch, dict(arch_args), [str(i) for i in range(10)],
                          Preprocessing(channels, (28, 28), 0, (0.5,) * channels, (0.25,) * channels))
    return checkpoint.state_tensors(model), json.loads(meta.to_json())


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A mutation that sets one (dotted) field of the metadata document."""
    def mutate(document: dict[str, Any]) -> dict[str, Any]:
        *parents, last = path.split(".")
        target = document
        for key in parents:
            target = target[key]
        target[last] = value
        return document

    return mutate


def _all(*mutations: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def mutate(document: dict[str, Any]) -> dict[str, Any]:
        for change in mutations:
            document = change(document)
        return document

    return mutate


def _raw(text: str) -> Callable[[dict[str, Any]], str]:
    return lambda _: text


# (case id, mutation of the simplecnn metadata, a fragment the message must hold)
METADATA_CASES: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("meta-null", _raw("null"), "must be a JSON object, not null"),
    ("meta-list", _raw("[1, 2]"), "must be a JSON object, not a list"),
    ("meta-string", _raw('"lenet5"'), "must be a JSON object, not a string"),
    ("meta-nested-5000", _raw('{"arch": ' + "[" * 5000 + "]" * 5000 + "}"), "nested too deeply"),
    ("meta-not-json", _raw("{'arch': 1"), "is not JSON"),
    ("format-newer", _set("format", 99), "written by a newer cnnctl"),
    ("format-string", _set("format", "1"), "'format' must be an integer"),
    ("arch-int", _set("arch", 5), "'arch' must be a string, not an integer"),
    ("arch-unknown", _set("arch", "lenet55"), "'arch' names an architecture"),
    ("arch-args-list", _set("arch_args", [1]), "'arch_args' must be an object"),
    ("arch-args-unknown", _set("arch_args", {"width": 8}), "'arch_args.width' is not an option of simplecnn"),
    ("dropout-string", _set("arch_args", {"dropout": "half"}), "'arch_args.dropout' must be a number"),
    ("dropout-negative", _set("arch_args", {"dropout": -1.0}), "'arch_args.dropout' is -1.0, outside [0, 1)"),
    ("classes-int", _set("classes", 10), "'classes' must be a list of class names, not an integer"),
    ("classes-string", _set("classes", "0123456789"), "'classes' must be a list of class names, not a string"),
    ("classes-ints", _set("classes", list(range(10))), "'classes[0]' must be a string"),
    ("classes-empty-name", _set("classes", [""] + [str(i) for i in range(1, 10)]), "'classes[0]' is empty"),
    ("classes-twice", _set("classes", ["a"] * 10), "'classes' names 'a' twice"),
    ("classes-one", _set("classes", ["a"]), "'classes' has 1 names"),
    ("classes-200k", _set("classes", [f"c{i}" for i in range(200_000)]), "'classes' has 200,000 names"),
    ("classes-long-name", _set("classes", ["x" * 5000] + [str(i) for i in range(1, 10)]), "'classes[0]' is 5,000"),
    ("classes-vs-tensors", _all(_set("classes", [str(i) for i in range(7)]), _set("num_classes", 7)),
     "fc.weight (10, 320) vs (7, 320)"),
    ("num-classes", _set("num_classes", 7), "'num_classes' is 7 but 'classes' has 10 names"),
    ("dataset-int", _set("dataset", 5), "'dataset' must be a string, not an integer"),
    ("data-dir-list", _set("data_dir", ["/"]), "'data_dir' must be a string, not a list"),
    ("epoch-negative", _set("epoch", -1), "'epoch' is -1, outside 0.."),
    ("epoch-string", _set("epoch", "3"), "'epoch' must be an integer"),
    ("metrics-string", _set("metrics", "good"), "'metrics' must be an object"),
    ("metric-text", _set("metrics", {"val_acc": "high"}), "'metrics.val_acc' must be a number"),
    ("versions-list", _set("versions", ["1"]), "'versions' must be an object"),
    ("config-string", _set("config", "x"), "'config' must be an object"),
    ("preprocessing-null", _set("preprocessing", None), "'preprocessing' must be an object, not null"),
    ("channels-string", _set("preprocessing.channels", "1"), "'preprocessing.channels' must be an integer"),
    ("channels-zero", _set("preprocessing.channels", 0), "'preprocessing.channels' is 0, outside 1..3"),
    ("channels-two", _set("preprocessing.channels", 2), "'preprocessing.channels' is 2"),
    ("image-size-100000", _set("preprocessing.image_size", [100_000, 100_000]),
     "'preprocessing.image_size' is 100000, outside 1..2,048"),
    ("image-size-negative", _set("preprocessing.image_size", [-28, 28]), "'preprocessing.image_size' is -28"),
    ("image-size-one", _set("preprocessing.image_size", [28]), "'preprocessing.image_size' must be [height, width]"),
    ("image-size-string", _set("preprocessing.image_size", "28x28"), "'preprocessing.image_size' must be"),
    ("image-size-vs-arch", _all(_set("preprocessing.image_size", [32, 32]), _set("input_shape", [1, 32, 32])),
     "gives 32x32 inputs (with padding), but simplecnn takes 28x28"),
    ("pad-100000", _set("preprocessing.pad", 100_000), "'preprocessing.pad' is 100000, outside 0..512"),
    ("pad-float", _set("preprocessing.pad", 1.5), "'preprocessing.pad' must be an integer"),
    ("mean-length", _set("preprocessing.mean", [0.5, 0.5, 0.5]), "'preprocessing.mean' has 3 values"),
    ("mean-string", _set("preprocessing.mean", "0.5"), "'preprocessing.mean' must be a list of 1 numbers"),
    ("std-zero", _set("preprocessing.std", [0]), "'preprocessing.std' holds 0, outside 1e-06"),
    ("std-nan", _set("preprocessing.std", [math.nan]), "'preprocessing.std' holds nan"),
    ("std-infinite", _set("preprocessing.std", [math.inf]), "'preprocessing.std' holds inf"),
    ("input-shape", _set("input_shape", [1, 9, 9]), "'input_shape' is [1, 9, 9]"),
    ("extra-list", _set("preprocessing.extra", [1]), "'preprocessing.extra' must be an object"),
]

SMALLVGG_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("width-negative", {"width": -3}, "'arch_args.width' is -3, outside 1..65,536"),
    ("width-string", {"width": "wide"}, "'arch_args.width' must be an integer"),
    ("width-bool", {"width": True}, "'arch_args.width' must be an integer"),
    ("width-30000", {"width": 30_000}, "does not match its architecture (smallvgg with arch_args {\"width\": 30000})"),
    ("width-10**9", {"width": 10**9}, "'arch_args.width' is 1000000000, outside 1..65,536"),
]


def _header_file(path: Path, header: dict[str, Any], data: bytes = b"", claimed: int | None = None) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if claimed is None else claimed) + raw + data)


def build_corpus(folder: Path) -> list[dict[str, Any]]:
    """Write every crafted checkpoint into ``folder``; return ``{id, file, expect, tensor_level}`` per case."""
    cases: list[dict[str, Any]] = []
    tensors, document = _good()

    def add(case_id: str, expect: str, *, tensor_level: bool = False) -> Path:
        path = folder / f"{case_id}.safetensors"
        cases.append({"id": case_id, "file": str(path), "expect": expect, "tensor_level": tensor_level})
        return path

    for case_id, mutate, expect in METADATA_CASES:
        changed = mutate(copy.deepcopy(document))
        text = changed if isinstance(changed, str) else json.dumps(changed)
        save_file(tensors, str(add(case_id, expect)), metadata={"cnnctl": text})
    vgg_tensors, vgg_document = _good("smallvgg", width=4)
    for case_id, args, expect in SMALLVGG_CASES:
        save_file(vgg_tensors, str(add(case_id, expect)),
                  metadata={"cnnctl": json.dumps({**vgg_document, "arch_args": args})})
    text = json.dumps(document)
    for dtype, name in ((torch.int8, "I8"), (torch.bool, "BOOL"), (torch.float8_e4m3fn, "F8_E4M3")):
        cast = {key: value.to(dtype) for key, value in tensors.items()}
        save_file(cast, str(add(f"weights-{name.lower()}", f"tensor conv1.bias is {name}", tensor_level=True)),
                  metadata={"cnnctl": text})
    _header_file(add("header-claims-200mb", "its header claims 209,715,200 bytes, more than the 16,777,216",
                     tensor_level=True), {}, claimed=200 * 2**20)
    many = {f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i in range(60_000)}
    many["__metadata__"] = {"cnnctl": text}
    _header_file(add("header-60000-tensors", "it lists more than 50,000 tensors", tensor_level=True),
                 many, bytes(4 * 60_000))
    _header_file(add("header-offsets-past-end", "tensor 'fc.bias' has a damaged entry or lies past the end",
                     tensor_level=True),
                 {"fc.bias": {"dtype": "F32", "shape": [10], "data_offsets": [0, 10**12]}}, bytes(40))
    good = folder / "good.safetensors"
    save_file(tensors, str(good), metadata={"cnnctl": text})
    add("truncated", "not a readable safetensors", tensor_level=True).write_bytes(good.read_bytes()[:300])
    save_file(tensors, str(add("no-cnnctl-metadata", "without cnnctl metadata")))
    return cases


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.lstat().st_mode, p.lstat().st_size) for p in sorted(folder.rglob("*"))}


def _limited_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def run_batch(runs: list[dict[str, Any]], work: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """All ``runs`` through the real CLI in one child process with a limited address space."""
    (work / "runs.json").write_text(json.dumps(runs))
    child_env = {**os.environ, "MALLOC_ARENA_MAX": "2", "CNNCTL_DATA": str(work / "no-data"), **(env or {})}
    done = subprocess.run([sys.executable, str(DRIVER), str(work / "runs.json"), str(work / "results.json")],
                          capture_output=True, text=True, timeout=600, preexec_fn=_limited_address_space,
                          env=child_env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((work / "results.json").read_text())


def assert_clear_line(result: dict[str, Any], code: int, *fragments: str, progress: bool = False) -> str:
    """One ``error:`` line on stderr holding every fragment, never the catch-all; ``progress`` allows the lines
    a command prints before it (train's data loading)."""
    lines = result["stderr"].strip().splitlines()
    assert result["code"] == code, result
    assert (len(lines) >= 1 if progress else len(lines) == 1) and lines[-1].startswith("error: "), result["stderr"]
    assert sum(line.startswith("error: ") for line in lines) == 1, result["stderr"]
    assert "unexpected" not in lines[-1] and "Traceback" not in result["stderr"], lines[-1]
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def _write(path: Path, tensors: dict[str, torch.Tensor], document: dict[str, Any]) -> Path:
    save_file(tensors, str(path), metadata={"cnnctl": json.dumps(document)})
    return path


def _mount_tmpfs(folder: Path, options: str, mounts: list[Path]) -> bool:
    """Mount a tmpfs (root only) and add it to ``mounts``; False if it cannot be done here (the tests that need
    it then say so)."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = IS_ROOT and subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                                         capture_output=True).returncode == 0
    if mounted:
        mounts.append(folder)
    return mounted


HOSTILE_CLASSES = ["a;b:0.9", "=HYPERLINK(\"http://x\")", "+1", "-2", "@SUM(A1)", "100%", "tab\there", "7", "8",
                   "9"]


# ------------------------------------------------------------------- one child process runs every case below


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    mounts: list[Path] = []
    try:
        yield _run_every_case(tmp_path_factory.mktemp("hostile"), mounts)
    finally:
        for mount in reversed(mounts):
            subprocess.run(["umount", str(mount)], check=True)


def _run_every_case(work: Path, mounts: list[Path]) -> dict[str, Any]:
    from dataset_files import write_image_folder

    tensors, document = _good()
    runs: list[dict[str, Any]] = []

    # crafted checkpoints, each through every command that reads one
    folder, out = work / "corpus", work / "out"
    folder.mkdir()
    out.mkdir()
    cases = build_corpus(folder)
    images = work / "images"
    write_image_folder(images, ("a", "b"), 6, size=20, grey=True)
    for case in cases:
        file = case["file"]
        commands = {
            "summary": ["summary", file],
            "eval": ["eval", file, "--dataset", "mnist"],
            "predict": ["predict", file, str(images), "--output", str(out / "p.csv")],
            "export": ["export", file, "--format", "torchscript", "--output", str(out) + "/"],
        }
        if case["tensor_level"]:  # --pretrained reads only the tensors, not the metadata
            commands["pretrained"] = ["train", "simplecnn", "--data", str(images), "--pretrained", file,
                                      "--epochs", "1", "--out", str(out / "runs"), "--no-plots", "--threads", "1"]
        runs += [{"id": f"{case['id']}/{command}", "argv": argv} for command, argv in commands.items()]

    # special and unwritable output locations
    model_file = _write(work / "m.safetensors", tensors, document)
    places = work / "places"
    places.mkdir()
    os.mkfifo(places / "fifo")
    (places / "to-stdout").symlink_to("/proc/self/fd/1")
    (places / "dangling").symlink_to(places / "nowhere")
    (places / "folder").mkdir()
    (places / "file").write_text("keep me")
    targets = {"fifo": places / "fifo", "stdout-link": places / "to-stdout", "dangling-link": places / "dangling",
               "under-a-file": places / "file" / "x", "too-long": places / ("n" * 300)}
    if IS_ROOT:
        os.mknod(places / "chardev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
        targets["chardev"] = places / "chardev"
    readonly_mounted = _mount_tmpfs(places / "readonly", "size=1m,ro", mounts)
    if readonly_mounted:
        targets["read-only-mount"] = places / "readonly" / "x"
    for name, target in targets.items():
        runs += [
            {"id": f"{name}/predict", "argv": ["predict", str(model_file), str(images), "-o", str(target)]},
            {"id": f"{name}/export", "argv": ["export", str(model_file), "-f", "torchscript", "-o", str(target)]},
            {"id": f"{name}/train", "argv": ["train", "simplecnn", "--dataset", "mnist", "--out", str(target)]},
            {"id": f"{name}/eval", "argv": ["eval", str(model_file), "--dataset", "mnist", "--plots", str(target)]},
        ]
    runs += [{"id": "folder/predict", "argv": ["predict", str(model_file), str(images), "-o", str(places / "folder")]},
             {"id": "stdout/predict", "argv": ["predict", str(model_file), str(images), "-o", "-"]},
             {"id": "stdout/export", "argv": ["export", str(model_file), "-o", "-"]}]
    kept = ("fifo", "to-stdout", "folder", "file", "chardev")
    modes = {name: (places / name).lstat().st_mode for name in kept if os.path.lexists(places / name)}

    # class names made to break the CSV, and file names that are not UTF-8
    hostile = _write(work / "hostile-classes.safetensors", tensors, {**document, "classes": HOSTILE_CLASSES})
    odd_images = work / "odd-images"
    write_image_folder(odd_images, ("x",), 3, size=20, grey=True)
    os.rename(next((odd_images / "x").iterdir()), os.fsencode(odd_images / "x") + b"/=\xff\xfe-latin1.png")
    with open(os.fsencode(odd_images / "x") + b"/caf\xe9.png", "wb") as handle:
        handle.write(b"not an image")
    runs += [{"id": "csv/stdout", "argv": ["predict", str(hostile), str(odd_images), "--topk", "10"]},
             {"id": "csv/file", "argv": ["predict", str(hostile), str(odd_images), "--topk", "10", "-o",
                                         str(work / "hostile.csv")]},
             {"id": "csv/json", "argv": ["predict", str(hostile), str(odd_images), "--json"]}]

    # a PNG whose header promises more rows than its data holds (torchvision's decoder crashes the process)
    lying = work / "lying-images"
    write_image_folder(lying, ("x",), 2, size=20, grey=True)
    png = bytearray(next((lying / "x").iterdir()).read_bytes())
    png[16:24] = struct.pack(">II", 300, 300)  # IHDR width and height, then its CRC
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    (lying / "x" / "lying.png").write_bytes(bytes(png))
    runs.append({"id": "lying-png/predict", "argv": ["predict", str(model_file), str(lying)]})

    # a full disk: a small tmpfs holding an earlier export and a filler
    disk = work / "small-disk"
    disk_mounted = _mount_tmpfs(disk, "size=96k", mounts)
    if disk_mounted:
        (disk / "m.torchscript.pt").write_bytes(b"previous export")
        (disk / "filler").write_bytes(bytes(60 * 1024))  # the 50 KB model no longer fits
        runs += [{"id": f"full-disk/{format}", "argv": ["export", str(model_file), "--format", format, "--output",
                                                        str(disk) + "/"]} for format in ("torchscript", "onnx")]
    before = _snapshot(work)
    results = run_batch(runs, work)
    saved_error = ""
    if disk_mounted:  # checkpoint.save itself (training's writer) on the same full disk
        from cnnctl.errors import CnnctlError

        model, meta = checkpoint.load(model_file)
        try:
            checkpoint.save(disk / "last.safetensors", model, meta)
        except CnnctlError as error:
            saved_error = str(error)
    after = _snapshot(work)
    return {"results": {r["id"]: r for r in results["results"]}, "vm_peak_kb": results["vm_peak_kb"],
            "cases": {case["id"]: case for case in cases}, "before": before, "after": after, "work": work,
            "modes": modes, "modes_after": {name: (places / name).lstat().st_mode for name in modes},
            "readonly_mounted": readonly_mounted, "disk_mounted": disk_mounted, "saved_error": saved_error}


# ---------------------------------------------------------------------------------------- checkpoint corpus

ALL_CASE_IDS = [case_id for case_id, _, _ in METADATA_CASES] + [case_id for case_id, _, _ in SMALLVGG_CASES] + [
    "weights-i8", "weights-bool", "weights-f8_e4m3", "header-claims-200mb", "header-60000-tensors",
    "header-offsets-past-end", "truncated", "no-cnnctl-metadata"]


@pytest.mark.parametrize("case_id", ALL_CASE_IDS)
def test_crafted_checkpoint_is_one_clear_line_in_every_command(batch: dict[str, Any], case_id: str) -> None:
    case = batch["cases"][case_id]
    results = [r for key, r in batch["results"].items() if key.split("/")[0] == case_id]
    assert len(results) == (5 if case["tensor_level"] else 4)
    for result in results:
        assert_clear_line(result, 1, Path(case["file"]).name, case["expect"],
                          progress=result["id"].endswith("/pretrained"))


def test_every_case_stays_in_bounded_memory_and_none_reaches_the_catch_all(batch: dict[str, Any]) -> None:
    assert batch["vm_peak_kb"] * 1024 < ADDRESS_SPACE_LIMIT
    for result in batch["results"].values():
        assert "unexpected" not in result["stderr"] and result["code"] != -1, result


def test_refused_commands_write_nothing(batch: dict[str, Any]) -> None:
    changed = {name for name in set(batch["before"]) | set(batch["after"])
               if batch["before"].get(name) != batch["after"].get(name)}
    allowed = {"runs.json", "results.json", "hostile.csv", "out/runs"}  # the batch, the one CSV asked for,
    assert changed <= allowed, changed - allowed                      # and train's --out folder


def test_the_untouched_checkpoint_of_the_corpus_works(tmp_path: Path) -> None:
    """The corpus differs from a working checkpoint only in what each case changes."""
    cases = build_corpus(tmp_path)
    assert len(cases) == len(ALL_CASE_IDS)
    model, meta = checkpoint.load(tmp_path / "good.safetensors")
    assert meta.classes == [str(i) for i in range(10)] and meta.preprocessing.input_shape == (1, 28, 28)


# -------------------------------------------------------------------------------------- output locations

OUTPUT_EXPECTATIONS = {
    "fifo": ("it is a named pipe (FIFO), not a regular file", "it is a file, not a folder"),
    "stdout-link": ("it is a symbolic link to /proc/self/fd/1, a named pipe (FIFO)", "it is a file, not a folder"),
    "dangling-link": ("which does not exist", "which does not exist"),
    "chardev": ("it is a character device, not a regular file", "it is a file, not a folder"),
    "under-a-file": ("file is a file, not a folder", "file is a file, not a folder"),
    "too-long": ("file name too long for the file system", "file name too long for the file system"),
    "read-only-mount": ("read-only file system", "read-only file system"),
}


@pytest.mark.parametrize("place", list(OUTPUT_EXPECTATIONS))
@pytest.mark.parametrize("command", ["predict", "export", "train", "eval"])
def test_special_and_unwritable_outputs_are_refused_before_any_work(batch: dict[str, Any], place: str,
                                                                    command: str) -> None:
    if place == "chardev" and not IS_ROOT:
        pytest.skip("a character device can only be made (os.mknod) as root")
    if place == "read-only-mount" and not batch["readonly_mounted"]:
        pytest.skip("mounting a read-only tmpfs needs root, and mount failed")
    result = batch["results"][f"{place}/{command}"]
    file_message, folder_message = OUTPUT_EXPECTATIONS[place]
    # train --out and eval --plots name folders: a FIFO, a link or a device where a folder should be is a file
    expected = file_message if command in ("predict", "export") else folder_message
    option = {"predict": "--output", "export": "--output", "train": "--out", "eval": "--plots"}[command]
    line = assert_clear_line(result, 2, option, expected)
    assert "mnist" not in line  # refused before any data or checkpoint was looked at


def test_special_outputs_keep_their_type_and_stdout_works(batch: dict[str, Any]) -> None:
    assert batch["modes_after"] == batch["modes"]  # the FIFO, the link and the device are not regular files now
    assert (batch["work"] / "places" / "file").read_text() == "keep me"
    assert_clear_line(batch["results"]["folder/predict"], 2, "it is a folder, not a regular file")
    to_stdout = batch["results"]["stdout/predict"]
    assert to_stdout["code"] == 0, to_stdout
    rows = list(csv.DictReader(io.StringIO(to_stdout["stdout"])))
    assert len(rows) == 12 and all(row["class"] in [str(i) for i in range(10)] for row in rows)
    assert_clear_line(batch["results"]["stdout/export"], 2, "--output - (standard output) is not possible")


# ------------------------------------------------------------------------------ names that break the CSV


def test_csv_cells_are_escaped_and_safe_for_spreadsheets(batch: dict[str, Any]) -> None:
    for key, text in (("csv/stdout", batch["results"]["csv/stdout"]["stdout"]),
                      ("csv/file", (batch["work"] / "hostile.csv").read_text(encoding="utf-8"))):
        assert batch["results"][key]["code"] == 0, batch["results"][key]
        rows = list(csv.DictReader(io.StringIO(text)))
        assert len(rows) == 4
        good = [row for row in rows if not row["error"]]
        assert len(good) == 3
        for row in good:
            pairs = [cell.rsplit(":", 1) for cell in row["topk"].removeprefix("'").split(";")]
            names = [urllib.parse.unquote(name) for name, _ in pairs]
            assert sorted(names) == sorted(HOSTILE_CLASSES)  # every name comes back, ';', ':' and '%' included
            assert math.isclose(sum(float(p) for _, p in pairs), 1.0, abs_tol=1e-3)
            if row["class"].startswith("'"):
                assert row["class"][1:] in HOSTILE_CLASSES and row["class"][1] in "=+-@\t"
            else:
                assert row["class"] in HOSTILE_CLASSES and row["class"][0] not in "=+-@\t"
        odd = [row for row in rows if "latin1" in row["path"]]
        assert len(odd) == 1 and "/=\\xff\\xfe-latin1.png" in odd[0]["path"]  # escaped, not lost
        broken = [row for row in rows if row["error"]]
        assert broken[0]["path"].endswith("caf\\xe9.png") and "caf\\xe9.png" in broken[0]["error"]


def test_undecodable_file_names_are_escaped_in_json_and_on_the_terminal(batch: dict[str, Any]) -> None:
    result = batch["results"]["csv/json"]
    assert result["code"] == 0, result
    rows = json.loads(result["stdout"])
    assert {row["path"].rsplit("/", 1)[1] for row in rows} >= {"=\\xff\\xfe-latin1.png", "caf\\xe9.png"}
    assert "could not read" in result["stderr"] and "caf\\xe9.png" in result["stderr"]


# ------------------------------------------------------------------------------------------------ full disks


def test_full_disk_while_saving_a_checkpoint_names_the_folder_and_keeps_the_previous(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """safetensors reports ENOSPC as its own SafetensorError, not OSError; simulated in the writer."""
    import safetensors
    import safetensors.torch

    from cnnctl.errors import CnnctlError

    tensors, document = _good()
    model, meta = checkpoint.load(_write(tmp_path / "source.safetensors", tensors, document))
    target = tmp_path / "run" / "last.safetensors"
    checkpoint.save(target, model, meta)
    previous = target.read_bytes()

    def full_disk(tensors: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"partial")
        raise safetensors.SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(CnnctlError) as caught:
        checkpoint.save(target, model, meta)
    message = str(caught.value)
    assert "no space left on device" in message and "the previous version is intact" in message
    assert str(target.parent) in message
    assert target.read_bytes() == previous and sorted(p.name for p in target.parent.iterdir()) == ["last.safetensors"]


def test_full_disk_in_export_and_checkpoint_save_on_a_real_small_tmpfs(batch: dict[str, Any]) -> None:
    if not batch["disk_mounted"]:
        pytest.skip("mounting a small tmpfs to fill needs root (mount failed or not root); the writer-level "
                    "test above covers ENOSPC")
    disk = batch["work"] / "small-disk"
    for format, kept in (("torchscript", "the previous version is intact"), ("onnx", "nothing was written")):
        line = assert_clear_line(batch["results"][f"full-disk/{format}"], 1, "no space left on device while writing",
                                 str(disk), kept)
        assert "--opset" not in line
    assert "no space left on device while writing" in batch["saved_error"] and str(disk) in batch["saved_error"]
    assert "small-disk/m.torchscript.pt" in batch["before"]  # the earlier export: not replaced by a partial one
    assert batch["after"]["small-disk/m.torchscript.pt"] == batch["before"]["small-disk/m.torchscript.pt"]


# --------------------------------------------------------------------------------------------- permissions


def test_unreadable_checkpoint_and_unwritable_out_say_permission_denied(tmp_path: Path) -> None:
    """Modes only bind a process without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH: as root, the child drops them."""
    import shlex
    import shutil

    tensors, document = _good()
    locked = _write(tmp_path / "locked.safetensors", tensors, document)
    locked.chmod(0o000)
    closed = tmp_path / "closed"
    closed.mkdir()
    _write(closed / "inside.safetensors", tensors, document)
    closed.chmod(0o600)  # no x: nothing inside can even be looked up
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    readable = _write(tmp_path / "ok.safetensors", tensors, document)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_file({"step": torch.zeros(1)}, str(run_dir / "state.safetensors"), metadata={"cnnctl_state": "{}"})
    (run_dir / "state.safetensors").chmod(0o000)
    expected = {
        "state": (["train", "--resume", str(run_dir)], "cannot read the training state", "permission denied"),
        "locked": (["summary", str(locked)], "cannot read checkpoint", "locked.safetensors: permission denied"),
        "closed": (["predict", str(closed / "inside.safetensors"), str(tmp_path)],
                   "inside.safetensors: permission denied"),
        "out": (["train", "simplecnn", "--dataset", "mnist", "--out", str(readonly / "runs")],
                "cannot create --out", "permission denied"),
        "export": (["export", str(readable), "-o", str(readonly) + "/"], "cannot write into --output",
                   "permission denied"),
    }
    runs = [{"id": key, "argv": argv} for key, (argv, *_) in expected.items()]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    command = [sys.executable, str(DRIVER), str(tmp_path / "runs.json"), str(tmp_path / "results.json")]
    if IS_ROOT:
        capsh = shutil.which("capsh")
        if capsh is None:
            pytest.skip("running as root and capsh (to drop CAP_DAC_OVERRIDE) is not installed")
        command = [capsh, "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", shlex.join(command)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        closed.chmod(0o755)
        readonly.chmod(0o755)
    results = {r["id"]: r for r in json.loads((tmp_path / "results.json").read_text())["results"]}
    for key, (_, *fragments) in expected.items():
        assert_clear_line(results[key], 1 if key in ("locked", "closed", "state") else 2, *fragments)


def test_large_inputs_get_smaller_prediction_batches() -> None:
    """256 images of 3x2048x2048 would be 3.2 GB of floats in one batch; the batch shrinks to stay near 256 MB."""
    from cnnctl.engine.predict import MAX_BATCH_VALUES, Predictor

    model = build_model("smallvgg", num_classes=10, in_channels=3, width=4)
    classes = [str(i) for i in range(10)]
    large = CheckpointMeta("smallvgg", {"width": 4}, classes, Preprocessing(3, (2048, 2048)))
    small = CheckpointMeta("smallvgg", {"width": 4}, classes, Preprocessing(3, (32, 32)))
    assert Predictor(model, large, batch_size=256).batch_size == MAX_BATCH_VALUES // (3 * 2048 * 2048) == 5
    assert Predictor(model, small, batch_size=256).batch_size == 256


def test_png_whose_header_lies_is_an_error_row_not_a_crash(batch: dict[str, Any]) -> None:
    result = batch["results"]["lying-png/predict"]
    assert result["code"] == 0, result
    rows = {Path(row["path"]).name: row for row in csv.DictReader(io.StringIO(result["stdout"]))}
    assert len(rows) == 3 and sum(bool(row["error"]) for row in rows.values()) == 1
    assert "its header says 300x300 pixels but its image data ends after" in rows["lying.png"]["error"]
