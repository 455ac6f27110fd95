"""The command's failure paths as a new user meets them: nothing lost, no traceback.

Each case runs `pyanom` in a subprocess (as a user would) and checks the message, the exit
status and that no input or earlier output changed.
"""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import pytest
from PIL import Image

from cli_helpers import digest, failed_cleanly, run

from pyanom.cli import main

FIT_FAST = ["--set", "image_size=64", "--set", "coreset_ratio=0.05"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, texture_set) -> Path:
    """A private copy of the synthetic set, so a test that failed to protect it harms no other test."""
    root = tmp_path_factory.mktemp("data") / "texture"
    shutil.copytree(texture_set, root)
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory, data) -> Path:
    path = tmp_path_factory.mktemp("model") / "m.pyanom"
    assert main(["fit", "patchcore", str(data), "--out", str(path), *FIT_FAST]) == 0
    return path


# -- the model file ------------------------------------------------------------------------
def test_out_over_an_input_image_is_refused_and_the_image_kept(data):
    before = digest(data)
    code, out, err = run("fit", "patchcore", data, "--out", data / "test" / "good" / "000.png", *FIT_FAST)
    failed_cleanly(code, err, "000.png", ".pyanom")
    assert "fitting" not in out  # refused before any work
    assert digest(data) == before


def test_out_over_a_file_that_is_not_a_model_is_refused(tmp_path, data):
    other = tmp_path / "notes.pyanom"
    other.write_text("someone's file")
    code, out, err = run("fit", "patchcore", data, "--out", other, *FIT_FAST)
    failed_cleanly(code, err, "notes.pyanom", "not a pyanom model")
    assert other.read_text() == "someone's file"


def test_an_existing_model_needs_force(tmp_path, data, model):
    target = tmp_path / "m.pyanom"
    shutil.copy(model, target)
    before = target.read_bytes()
    code, out, err = run("fit", "patchcore", data, "--out", target, *FIT_FAST)
    failed_cleanly(code, err, "--force")
    assert target.read_bytes() == before and "fitting" not in out
    code, out, err = run("fit", "patchcore", data, "--out", target, "--force", *FIT_FAST, "--set", "seed=1")
    assert code == 0, err
    assert target.read_bytes() != before


def test_missing_folders_of_out_are_created_before_fitting(tmp_path, data):
    target = tmp_path / "newdir" / "sub" / "m.pyanom"
    assert main(["fit", "patchcore", str(data), "--out", str(target), *FIT_FAST]) == 0
    assert target.is_file() and not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]


def test_an_unwritable_out_fails_before_fitting(tmp_path, data):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = run("fit", "patchcore", data, "--out", blocker / "m.pyanom", *FIT_FAST)
    failed_cleanly(code, err, str(blocker))
    assert "fitting" not in out


# -- heatmaps and results --------------------------------------------------------------------
def _three_000s(root: Path, source: Path) -> list[Path]:
    """x/good/000.png, x/good/000.jpg and y/good/000.png: one name, three images."""
    image = Image.open(source).convert("RGB")
    paths = [root / "x" / "good" / "000.png", root / "x" / "good" / "000.jpg", root / "y" / "good" / "000.png"]
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        image.save(p)
    return paths


def test_heatmap_names_are_unique_and_a_rerun_describes_one_run(tmp_path, data, model):
    inputs = _three_000s(tmp_path / "in", data / "test" / "good" / "000.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("not pyanom's")
    code, stdout, err = run("predict", model, tmp_path / "in", "--out", out)
    assert code == 0, err
    maps = sorted(p.relative_to(out / "heatmaps").as_posix() for p in (out / "heatmaps").rglob("*.png"))
    assert maps == ["x/good/000.jpg.png", "x/good/000.png.png", "y/good/000.png.png"]
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert {Path(r["path"]).resolve() for r in rows} == {p.resolve() for p in inputs}
    assert all((out / r["heatmap"]).is_file() for r in rows)  # every row names its own heatmap

    # Again with one input only: the other two heatmaps go, someone else's file stays.
    code, stdout, err = run("predict", model, inputs[2], "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in (out / "heatmaps").rglob("*.png")) == ["000.png.png"]
    assert len(list(csv.DictReader((out / "scores.csv").open()))) == 1
    assert (out / "mine.txt").read_text() == "not pyanom's"


def test_evaluate_heatmaps_keep_the_folder_structure(tmp_path, data, model):
    out = tmp_path / "hm"
    code, stdout, err = run("evaluate", model, data, "--heatmaps", out)
    assert code == 0, err
    names = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
    expected = {p.relative_to(data).as_posix() + ".png" for p in (data / "test").rglob("*.png")}
    assert names == expected


def test_one_unreadable_image_does_not_stop_predict(tmp_path, data, model):
    folder = tmp_path / "batch"
    folder.mkdir()
    for name in ("000.png", "001.png", "002.png"):
        shutil.copy(data / "test" / "good" / name, folder / name)
    good = (folder / "001.png").read_bytes()
    (folder / "001.png").write_bytes(good[: len(good) // 2])  # truncated
    code, stdout, err = run("predict", model, folder, "--out", tmp_path / "out")
    assert code == 1 and "1 of 3 images could not be read" in err and "Traceback" not in err
    rows = {Path(r["path"]).name: r for r in csv.DictReader((tmp_path / "out" / "scores.csv").open())}
    assert set(rows) == {"000.png", "001.png", "002.png"}
    assert rows["001.png"]["score"] == "" and "001.png" in rows["001.png"]["error"]
    assert rows["000.png"]["score"] and rows["002.png"]["score"] and not rows["000.png"]["error"]


def test_predict_looks_into_sub_folders(tmp_path, data, model):
    code, stdout, err = run("predict", model, data / "test", "--out", tmp_path / "out")
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "out" / "scores.csv").open()))
    assert len(rows) == len(list((data / "test").rglob("*.png"))) == 12
    code, stdout, err = run("predict", model, data / "test", "--no-recursive", "--out", tmp_path / "out2")
    failed_cleanly(code, err, "sub-folders were not searched")


# -- messages instead of tracebacks ------------------------------------------------------------
def test_a_second_demo_asks_for_overwrite(tmp_path):
    (tmp_path / "data" / "train").mkdir(parents=True)
    code, stdout, err = run("demo", "--out", tmp_path)
    failed_cleanly(code, err, "--overwrite")


def test_cuda_without_cuda_is_a_message(tmp_path, data):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal cannot happen")
    code, stdout, err = run("fit", "patchcore", data, "--out", tmp_path / "m.pyanom", "--device", "cuda")
    failed_cleanly(code, err, "--device cuda", "CUDA is not usable")
    assert not (tmp_path / "m.pyanom").exists()


def test_debug_shows_the_traceback(tmp_path, data):
    code, stdout, err = run("fit", "patchcore", data, "--out", tmp_path / "m.png", "--debug")
    assert code != 0 and "Traceback" in err


def test_images_over_max_pixels_are_refused_before_decoding(tmp_path, model):
    big = tmp_path / "big.png"
    Image.new("L", (400, 300)).save(big)
    code, stdout, err = run("predict", model, big, "--max-pixels", "100000", "--out", tmp_path / "out")
    assert code == 1 and "Traceback" not in err
    row = next(csv.DictReader((tmp_path / "out" / "scores.csv").open()))
    assert "big.png" in row["error"] and "--max-pixels" in row["error"] and "megapixels" in row["error"]


def test_no_decompression_warning_under_pyanoms_limit(tmp_path):
    """100 MP is over PIL's warning level (89.5 MP) and under pyanom's default limit."""
    from PIL import Image as PILImage

    from pyanom.data.files import checked_size, image_mode, set_max_pixels

    big = tmp_path / "line_scan.png"
    PILImage.new("1", (2_000, 50_000)).save(big)
    pil_limit = PILImage.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        assert checked_size(big) == (2_000, 50_000)
        assert image_mode(big)[:2] == (2_000, 50_000)
    assert PILImage.MAX_IMAGE_PIXELS == pil_limit  # PIL's guard is back for code outside pyanom
    set_max_pixels(50_000_000)
    try:
        with pytest.raises(ValueError, match="over the limit of 50"):
            checked_size(big)
    finally:
        from pyanom.data.files import DEFAULT_MAX_PIXELS

        set_max_pixels(DEFAULT_MAX_PIXELS)


def test_ten_good_images_are_enough_to_fit(tmp_path, data):
    root = tmp_path / "ten" / "train" / "good"
    root.mkdir(parents=True)
    for p in sorted((data / "train" / "good").glob("*.png"))[:10]:
        shutil.copy(p, root / p.name)
    assert main(["fit", "patchcore", str(tmp_path / "ten"), "--layout", "mvtec", "--out",
                 str(tmp_path / "m.pyanom"), *FIT_FAST]) == 0


def test_too_few_good_images_say_what_to_do(tmp_path, data):
    root = tmp_path / "two" / "train" / "good"
    root.mkdir(parents=True)
    for p in sorted((data / "train" / "good").glob("*.png"))[:2]:
        shutil.copy(p, root / p.name)
    code, stdout, err = run("fit", "patchcore", tmp_path / "two", "--layout", "mvtec", "--out",
                            tmp_path / "m.pyanom", *FIT_FAST)
    failed_cleanly(code, err, "at least 3", "Add good images")


# -- surprises are said once ---------------------------------------------------------------------
def test_greyscale_and_aspect_changes_are_reported_once(tmp_path, data, model):
    folder = tmp_path / "mixed"
    folder.mkdir()
    src = Image.open(data / "test" / "good" / "000.png")
    for i in range(3):
        src.convert("L").save(folder / f"grey{i}.png")
    src.convert("RGBA").save(folder / "rgba.png")
    src.resize((128, 64)).save(folder / "wide.png")
    code, stdout, err = run("predict", model, folder, "--out", tmp_path / "out")
    assert code == 0, err
    notes = [line for line in stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 2, stdout
    assert "4 of 5 images are not RGB (3 L, 1 RGBA)" in notes[0]
    assert "1 of 5 images have another aspect ratio" in notes[1]


def test_siamese_says_how_labels_are_decided(tmp_path, data):
    import pyanom
    from pyanom.data import open_dataset

    root = tmp_path / "folders"
    for image in data.glob("t*/*/*.png"):
        folder = root / image.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, folder / f"{image.parent.parent.name}_{image.name}")
    det = pyanom.create("siamese", image_size=64, epochs=1, batch_size=8)
    det.fit(open_dataset(root, "train", image_size=32), seed=0, progress=False)
    det.save(tmp_path / "s.pyanom")
    code, stdout, err = run("predict", tmp_path / "s.pyanom", root / "good", "--out", tmp_path / "out")
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "out" / "scores.csv").open()))
    assert rows and {r["decided_by"] for r in rows} == {"nearest_training_image"}
    assert "labels by nearest_training_image" in stdout
    code, stdout, err = run("evaluate", tmp_path / "s.pyanom", root, "--heatmaps", tmp_path / "hm")
    assert code == 0, err
    assert "siamese gives no anomaly maps: no heatmaps written" in stdout


# -- what the command tells about itself -----------------------------------------------------------
def _setting_lines(stdout: str, name: str) -> tuple[str, str]:
    """A setting's two lines in `pyanom info`: type, bounds and default; then its whole help."""
    lines = stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith(name + " "))
    return lines[at], lines[at + 1].strip()


def test_info_lists_settings_with_types_defaults_bounds_and_whole_help():
    code, stdout, err = run("info", "patchcore")
    assert code == 0, err
    head, _ = _setting_lines(stdout, "coreset_ratio")
    assert "float in (0, 1], default 0.1" in head
    _, help_text = _setting_lines(stdout, "num_neighbors")
    assert help_text == "memory entries whose neighbourhood reweights the image score (eq. 7)"
    assert "..." not in stdout
    code, stdout, err = run("info", "segdec")
    _, swa = _setting_lines(stdout, "swa_epochs")
    assert "weights" in swa and swa.endswith(")")


def test_version_separates_compiled_from_usable_cuda():
    import torch

    code, stdout, err = run("--version")
    info = json.loads(stdout)
    assert "cuda" not in info and {"cuda_compiled", "cuda_usable", "backends_compiled"} <= set(info)
    assert info["cuda_usable"] == (info["cuda_compiled"] and torch.cuda.is_available())
    assert ("cuda" in info["backends"]) == info["cuda_usable"]


def test_a_bad_instruction_set_override_is_one_line_naming_the_variable():
    for argv in (("--version",), ("list",)):
        code, stdout, err = run(*argv, env={"PYANOM_CPU_ISA": "sse9"})
        assert code == 2 and "Traceback" not in err, err
        assert "PYANOM_CPU_ISA must be auto, generic, avx2 or avx512, got 'sse9'" in err


def test_cli_outputs_are_ignored_by_git():
    ignored = (Path(__file__).resolve().parents[2] / ".gitignore").read_text().split()
    assert {"pyanom-demo/", "pyanom-predictions/"} <= set(ignored)
