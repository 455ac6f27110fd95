"""A new user's first hour (issue 33): every command guards every file it writes, folders are read
as users keep them, and each refusal is one line saying what to do (exit status 2).

Each case runs `pyanom` in a subprocess and checks the message, the exit status and that no input
or earlier output changed. Tiny images (64 px) keep them fast.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from cli_helpers import digest, failed_cleanly, run

from pyanom.data import make_inspection_set

FIT = ["--set", "image_size=64", "--set", "coreset_ratio=0.05"]
TRAIN = ["--set", "image_size=32", "--set", "width=8", "--set", "latent_dim=16", "--set", "batch_size=8"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """MVTec layout: 10 good training images; 4 good and 6 defective test images with masks."""
    root = tmp_path_factory.mktemp("first") / "parts"
    make_inspection_set(root, n_train=10, n_test_good=4, n_test_defect=6, size=64, seed=3)
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory, data) -> Path:
    path = tmp_path_factory.mktemp("model") / "m.pyanom"
    code, _, err = run("fit", "patchcore", data, "--out", path, *FIT)
    assert code == 0, err
    return path


def labelled(source: Path, root: Path) -> Path:
    """source's images as users keep them: good/, and defect/<type>/ for each defect type."""
    for image in sorted(source.glob("t*/*/*.png")):
        kind = image.parent.name
        folder = root / "good" if kind == "good" else root / "defect" / kind
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, folder / f"{image.parent.parent.name}_{image.name}")
    return root


def flat(images, root: Path) -> Path:
    root.mkdir(parents=True)
    for image in images:
        shutil.copy(image, root / f"{image.parent.parent.name}_{image.name}")
    return root


# -- one output policy ------------------------------------------------------------------------------
def test_evaluate_json_never_replaces_an_input_the_model_or_a_file_pyanom_did_not_write(tmp_path, data, model):
    before, model_bytes = digest(data), model.read_bytes()
    image = data / "test" / "good" / "000.png"
    code, out, err = run("evaluate", model, data, "--json", image)
    failed_cleanly(code, err, f"--json {image}: is inside the data being read ({data})")
    code, out, err = run("evaluate", model, data, "--json", model)
    failed_cleanly(code, err, f"--json {model}: is the model being evaluated; choose another --json")
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    code, out, err = run("evaluate", model, data, "--json", notes)
    failed_cleanly(code, err, "exists and is not a metrics JSON pyanom wrote; refusing to overwrite it")
    assert digest(data) == before and model.read_bytes() == model_bytes and notes.read_text() == '{"mine": 1}'
    metrics = tmp_path / "metrics.json"
    for _ in range(2):  # its own metrics file is replaced by the next run
        code, out, err = run("evaluate", model, data, "--json", metrics)
        assert code == 0, err
    assert json.loads(metrics.read_text())["count"] == 10


def test_evaluate_json_given_a_folder_is_refused_before_evaluating(tmp_path, data, model):
    folder = tmp_path / "mixed"
    folder.mkdir()
    code, out, err = run("evaluate", model, data, "--json", folder)
    failed_cleanly(code, err, f"--json {folder}: is a folder; give a file name, e.g. --json {folder / 'metrics.json'}")
    assert "image_auroc" not in out and not list(folder.iterdir())


def test_a_fresh_predict_out_keeps_the_users_own_files(tmp_path, data, model):
    out = tmp_path / "out"
    (out / "heatmaps").mkdir(parents=True)
    (out / "scores.csv").write_text("my own scores")
    (out / "heatmaps" / "000.png.png").write_bytes(b"my own picture")
    before = digest(out)
    code, stdout, err = run("predict", model, data / "test" / "good", "--out", out)
    failed_cleanly(code, err, f"--out {out}: already holds heatmaps/000.png.png and 1 more, which pyanom did not "
                              "write; move them, or choose an empty or new --out")
    assert digest(out) == before
    code, stdout, err = run("predict", model, data / "test" / "good", "--out", tmp_path / "out" / "new")
    assert code == 0, err  # a new folder inside is fine; the files around it stay
    assert (out / "scores.csv").read_text() == "my own scores"


@pytest.mark.parametrize("option", ["--heatmaps", "--report"])
def test_evaluate_never_writes_into_the_data_it_reads(data, model, option):
    before = digest(data)
    for target in (data, data / "test" / "maps"):
        code, out, err = run("evaluate", model, data, option, target)
        failed_cleanly(code, err, f"{option} {target}: is inside the data being read ({data}), where it would be "
                                  f"read as data next time; choose a {option} outside {data}")
    assert digest(data) == before


def test_evaluate_report_keeps_a_users_index_html(tmp_path, data, model):
    page = tmp_path / "report" / "index.html"
    page.parent.mkdir()
    page.write_text("my page")
    code, out, err = run("evaluate", model, data, "--report", page.parent)
    failed_cleanly(code, err, "already holds index.html, which pyanom did not write")
    assert page.read_text() == "my page"


def test_fit_outputs_stay_out_of_the_data_and_off_other_files(tmp_path, data):
    before = digest(data)
    code, out, err = run("fit", "patchcore", data, "--out", data / "m.pyanom", *FIT)
    failed_cleanly(code, err, "is inside the data being read")
    code, out, err = run("fit", "patchcore", data.parent, "--each", "--out", data / "models", *FIT)
    failed_cleanly(code, err, "is inside the data being read")
    code, out, err = run("fit", "autoencoder", data, "--out", tmp_path / "a.pyanom", *TRAIN,
                         "--set", f"checkpoint={data / 'train' / 'good' / '000.png'}")
    failed_cleanly(code, err, "checkpoint", "is inside the data being read")
    mine = tmp_path / "run.ckpt"
    mine.write_text("not a checkpoint")
    code, out, err = run("fit", "autoencoder", data, "--out", tmp_path / "a.pyanom", *TRAIN, "--set", f"checkpoint={mine}")
    failed_cleanly(code, err, f"checkpoint {mine}: exists and is not a training checkpoint pyanom wrote")
    code, out, err = run("fit", "autoencoder", data, "--out", tmp_path / "a.pyanom", *TRAIN,
                         "--set", f"checkpoint={tmp_path / 'a.pyanom'}")
    failed_cleanly(code, err, "is the model file this fit writes")
    assert digest(data) == before and mine.read_text() == "not a checkpoint"
    assert "fitting" not in out and not (tmp_path / "a.pyanom").exists()


def test_demo_overwrite_replaces_only_a_demo(tmp_path):
    mine = tmp_path / "data" / "train" / "good" / "000.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"my own part")
    code, out, err = run("demo", "--out", tmp_path, "--overwrite", *FIT)
    failed_cleanly(code, err, "train/good/000.png", "which pyanom did not write")
    assert mine.read_bytes() == b"my own part"


def test_export_out_and_exported_models(tmp_path, data, model):
    existing = tmp_path / "bottle.onnx"
    existing.write_text("someone's file")
    code, out, err = run("export", model, "--out", existing)
    failed_cleanly(code, err, f"--out {existing}: exists and is not a folder; choose another --out")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "model.onnx").write_text("my own model")
    code, out, err = run("export", model, "--out", taken)
    failed_cleanly(code, err, "already holds model.onnx, which pyanom did not write")
    assert existing.read_text() == "someone's file" and (taken / "model.onnx").read_text() == "my own model"

    exported = tmp_path / "exported"
    for _ in range(2):  # an earlier export is pyanom's own: replaced
        code, out, err = run("export", model, "--out", exported)
        assert code == 0, err
    code, out, err = run("export", exported, "--out", tmp_path / "again")
    failed_cleanly(code, err, f"{exported} is an exported model already", "export the .pyanom model file")
    code, out, err = run("evaluate", exported, data)
    failed_cleanly(code, err, f"{exported} is an exported model: evaluate the .pyanom model file")


def test_onnxruntime_asked_for_an_openvino_export(tmp_path, data):
    folder = tmp_path / "ov"
    folder.mkdir()
    (folder / "pyanom-export.json").write_text(json.dumps({
        "format": "pyanom-export", "format_version": 1, "model_format": "openvino", "files": ["model.xml", "model.bin"]}))
    code, out, err = run("predict", folder, data / "test" / "good", "--runtime", "onnxruntime", "--out", tmp_path / "p")
    failed_cleanly(code, err, f"{folder} is an openvino export, which openvino runs, not onnxruntime: leave out "
                              "--runtime onnxruntime (or export the model again with --format onnx")


# -- folders as users keep them ----------------------------------------------------------------------
def test_a_flat_folder_of_good_images_fits_as_all_good(tmp_path, data):
    good = flat(sorted((data / "train" / "good").glob("*.png")), tmp_path / "goodparts")
    model = tmp_path / "m.pyanom"
    code, out, err = run("fit", "patchcore", good, "--out", model, *FIT)
    assert code == 0, err
    assert f"{good}: layout flat: 10 images directly in the folder, all taken as good" in out
    before = digest(good)
    code, out, err = run("evaluate", model, good)
    failed_cleanly(code, err, f"m.pyanom was fitted on every image of {good}: none is left to evaluate on")
    code, out, err = run("fit", "patchcore", good, "--layout", "folders", "--out", tmp_path / "n.pyanom", *FIT)
    failed_cleanly(code, err, "layout folders needs class sub-folders", "its 10 images lie directly in it: use "
                              "layout flat")
    assert digest(good) == before

    others = flat(sorted((data / "test" / "good").glob("*.png")), tmp_path / "more")
    code, out, err = run("evaluate", model, others, "--json", tmp_path / "metrics.json")
    assert code == 0, err
    assert f"evaluating on all 4 images of {others} (m.pyanom was not fitted on them)" in out
    notes = json.loads((tmp_path / "metrics.json").read_text())["notes"]
    assert "pixel metrics undefined: no masks" in notes and not any("hold no defect pixel" in n for n in notes)


def test_the_normal_class_is_named_on_the_command_line(tmp_path, data):
    root = labelled(data, tmp_path / "parts")
    (root / "good").rename(root / "pass")
    (root / "defect").rename(root / "fail")
    code, out, err = run("fit", "patchcore", root, "--out", tmp_path / "m.pyanom", *FIT)
    failed_cleanly(code, err, "cannot tell which class is the normal one among fail, pass",
                   "--normal-class")
    code, out, err = run("fit", "patchcore", root, "--normal-class", "pass", "--out", tmp_path / "m.pyanom", *FIT)
    assert code == 0, err
    code, out, err = run("evaluate", tmp_path / "m.pyanom", root, "--json", tmp_path / "metrics.json")
    assert code == 0, err  # the model remembers its normal class
    assert json.loads((tmp_path / "metrics.json").read_text())["num_good"] == 4


def test_a_labelled_folder_is_evaluated_on_what_the_fit_held_out_and_another_on_all(tmp_path, data):
    root = labelled(data, tmp_path / "parts")
    model = tmp_path / "m.pyanom"
    code, out, err = run("fit", "patchcore", root, "--out", model, *FIT)
    assert code == 0, err
    # unsupervised: every defect image goes to the test part (none would be used in training);
    # nested defect folders keep their names as defect types
    assert ("every defect image to test: the detector learns from good images only), image labels only (no masks); "
            "train good 10; test defect/crack 2, defect/scratch 2, defect/spot 2, good 4") in out
    metrics = tmp_path / "metrics.json"
    code, out, err = run("evaluate", model, root, "--json", metrics)
    assert code == 0, err
    assert (f"m.pyanom was fitted on {root}: evaluating on the 10 images held out from that fit "
            "(test_fraction 0.3, seed 0)") in out
    report = json.loads(metrics.read_text())
    assert report["count"] == 10 and set(report["per_defect_type"]) == {"defect/crack", "defect/scratch", "defect/spot"}

    code, out, err = run("evaluate", model, root, "--test-fraction", "1.0", "--json", metrics)
    assert code == 0, err
    assert json.loads(metrics.read_text())["count"] == 20

    other_source = tmp_path / "other_source"
    make_inspection_set(other_source, n_train=4, n_test_good=2, n_test_defect=3, size=64, seed=9)
    other = labelled(other_source, tmp_path / "other")
    code, out, err = run("evaluate", model, other, "--json", metrics)
    assert code == 0, err
    assert f"evaluating on all 9 images of {other} (m.pyanom was not fitted on them)" in out
    assert json.loads(metrics.read_text())["count"] == 9

    shutil.copy(other / "good" / "train_000.png", root / "good" / "new_000.png")
    code, out, err = run("evaluate", model, root)
    failed_cleanly(code, err, f"{root} has changed since m.pyanom was fitted on it")


def test_symlinked_class_folders(tmp_path, data):
    good = flat(sorted((data / "train" / "good").glob("*.png")) + sorted((data / "test" / "good").glob("*.png")),
                tmp_path / "goodparts")
    root = tmp_path / "set1"
    root.mkdir()
    (root / "good").symlink_to(Path("..") / "goodparts")
    shutil.copytree(data / "test" / "scratch", root / "scratch")
    model = tmp_path / "m.pyanom"
    code, out, err = run("fit", "patchcore", root, "--out", model, *FIT)
    assert code == 0, err
    code, out, err = run("evaluate", model, root, "--heatmaps", tmp_path / "hm")
    assert code == 0, err
    assert {p.parent.name for p in (tmp_path / "hm").rglob("*.png")} == {"good", "scratch"}
    assert good.is_dir() and len(list(good.iterdir())) == 14


# -- messages that say what to do -----------------------------------------------------------------------
def test_a_checkpoint_of_other_images_of_the_same_count_and_resuming(tmp_path, data):
    first = flat(sorted((data / "train" / "good").glob("*.png")), tmp_path / "a")
    second = flat(sorted((data / "train" / "good").glob("*.png")), tmp_path / "b")
    for image in second.iterdir():  # the same names and count, other pixels
        Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(image)
    ckpt = tmp_path / "run.ckpt"
    fit = ["--out", tmp_path / "a.pyanom", *TRAIN, "--set", f"checkpoint={ckpt}"]
    code, out, err = run("fit", "autoencoder", first, *fit, "--set", "epochs=1")
    assert code == 0, err
    code, out, err = run("fit", "autoencoder", first, *fit, "--set", "epochs=2", "--force")
    assert code == 0, err
    assert f"pyanom: resuming from epoch 2 of 2: 1 done, from checkpoint {ckpt}" in err
    code, out, err = run("fit", "autoencoder", second, *fit, "--set", "epochs=2", "--force")
    failed_cleanly(code, err, f"checkpoint {ckpt} belongs to another run (the same number of training images, 8, "
                              "but not the same images: other files, or files changed since); delete it to start "
                              "afresh, or give another file: --set checkpoint=FILE")


def test_ctrl_c_of_a_fit_without_checkpoint_says_how_to_have_one(tmp_path, data):
    good = flat(sorted((data / "train" / "good").glob("*.png")), tmp_path / "good")
    proc = subprocess.Popen([sys.executable, "-P", "-m", "pyanom.cli", "fit", "autoencoder", str(good), "--out",
                             str(tmp_path / "a.pyanom"), *TRAIN, "--set", "epochs=100000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    seen = bytearray()
    training = threading.Event()

    def read():
        for chunk in iter(lambda: proc.stderr.read1(256), b""):
            seen.extend(chunk)
            if b"autoencoder: training" in seen:
                training.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert training.wait(300), seen.decode()
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        reader.join(timeout=10)
        pytest.fail("the fit did not stop within 120 s of Ctrl-C; the end of what it printed:\n"
                    + seen.decode(errors="replace")[-3000:])
    reader.join(timeout=10)
    err = seen.decode()
    assert proc.returncode == 130, err
    assert ("pyanom fit: interrupted: training stopped and nothing was kept; to be able to stop a fit and resume it, "
            "give it a checkpoint file: --set checkpoint=FILE") in err
    assert not (tmp_path / "a.pyanom").exists()


def test_max_pixels_says_its_unit(tmp_path, model, data):
    code, out, err = run("predict", model, data / "test" / "good" / "000.png", "--max-pixels", "100",
                         "--out", tmp_path / "p")
    assert code == 1, err
    row = (tmp_path / "p" / "scores.csv").read_text()
    assert "64x64 is 0.0 megapixels, over the limit of 100 pixels; if the image is genuine, raise it: " \
           "--max-pixels 4096" in row


def test_the_parquet_results_have_an_extra_that_reads_them():
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    extra = re.search(r"^parquet = \[(.*)\]$", pyproject, re.M)
    assert extra and "pandas" in extra.group(1) and "pyarrow" in extra.group(1)
