"""The HTML report and the overlay PNGs: built on the bundled samples with and without a reference, the page
parses, every image opens, the worst case comes first, empty masks render, and headless Chromium shows it."""
from __future__ import annotations

import base64
import io as bytes_io
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from autosam import cli, io, report
from autosam.errors import AutosamError
from autosam.sample import sample_dataset

mpimg = pytest.importorskip("matplotlib.image")

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
HIPPO_WORST = "hippocampus_165"  # its prediction is empty: Dice 0 for both labels, every other case scores > 0


class Page(HTMLParser):
    """Collects what the tests look at, and fails on unbalanced or misnested tags."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.images, self.ids, self.rows, self.gallery = [], [], [], [], [], []
        self.cells: list[dict] = []
        self.in_tbody = False
        self.text = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        if a.get("id"):
            self.ids.append(a["id"])
        if tag == "tbody":
            self.in_tbody = True
        if tag == "tr" and self.in_tbody and a.get("id", "").startswith("row-"):
            self.rows.append(a["id"][len("row-"):])
            self.cells.append([])
        if tag == "td" and self.in_tbody and self.cells:
            self.cells[-1].append(a.get("data-v"))
        if tag == "div" and "case" in (a.get("class") or "").split():
            self.gallery.append(a["id"][len("case-"):])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()
        if tag == "tbody":
            self.in_tbody = False

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> Page:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    page = Page()
    page.feed(text)
    page.close()
    assert not page.errors, page.errors[:3]
    assert not page.stack, f"unclosed tags {page.stack}"
    assert len(page.ids) == len(set(page.ids)), "duplicate element ids"
    assert "http://" not in text and "https://" not in text, "the page must not load anything"
    page.source = text
    return page


def open_images(page: Page) -> list[np.ndarray]:
    """Every <img> is an embedded PNG that decodes to a real picture."""
    assert page.images
    out = []
    for src in page.images:
        assert src.startswith("data:image/png;base64,"), src[:60]
        png = base64.b64decode(src.split(",", 1)[1], validate=True)
        img = mpimg.imread(bytes_io.BytesIO(png), format="png")
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert img[..., :3].std() > 0.02  # not a blank picture
        out.append(img)
    return out


def mean_dice_column(page: Page) -> list[float]:
    return [float(cells[2]) for cells in page.cells]


@pytest.fixture(scope="module")
def hippo(tmp_path_factory):
    """The hippocampus sample with a prediction folder of known quality and a coarse folder (eroded references)."""
    root = tmp_path_factory.mktemp("report_hippo")
    src = sample_dataset("hippocampus")
    pred, coarse = root / "pred", root / "coarse"
    pred.mkdir()
    coarse.mkdir()
    shutil.copy(src / "dataset.json", pred / "dataset.json")
    for f in sorted((src / "labelsTr").iterdir()):
        ref, props = io.read_label(f)
        case = f.name[: -len(".nii.gz")]
        eroded = np.where(ndimage.binary_erosion(ref > 0), ref, 0).astype(np.int16)
        p = {"hippocampus_148": ref, "hippocampus_149": np.roll(ref, 1, axis=1), HIPPO_WORST: np.zeros_like(ref),
             "hippocampus_221": eroded, "hippocampus_319": np.where(ref == 2, 2, 0),
             "hippocampus_320": ref}[case]
        io.write_seg(p.astype(np.int16), pred / f.name, props)
        io.write_seg(eroded, coarse / f.name, props)
    return {"root": root, "pred": pred, "coarse": coarse, "gt": src / "labelsTr", "images": src / "imagesTr"}


@pytest.fixture(scope="module")
def hippo_report(hippo):
    out = hippo["root"] / "out" / "report.html"
    rc = cli.main(["report", str(hippo["pred"]), "-o", str(out), "--gt", str(hippo["gt"]), "--coarse",
                   str(hippo["coarse"]), "-i", str(hippo["images"])])
    assert rc == 0
    return out


def test_report_with_reference_and_coarse(hippo_report, capsys):
    page = parse(hippo_report)
    assert not list(hippo_report.parent.glob(".tmp*")), "temporary file left behind"
    images = open_images(page)
    assert len(images) == 6 + 2  # one picture per case, one summary plot per label
    # the worst case first, in the table and in the gallery; the table is sorted by mean Dice
    assert page.rows[0] == HIPPO_WORST and page.gallery[0] == HIPPO_WORST
    assert sorted(page.rows) == sorted(page.gallery) == sorted(f"hippocampus_{n}" for n in
                                                               (148, 149, 165, 221, 319, 320))
    dice = mean_dice_column(page)
    assert dice[0] == 0.0 and dice == sorted(dice) and dice[-1] == 1.0
    text = " ".join(page.text)
    for word in ("reference", "coarse", "refined", "Anterior", "Posterior", "NSD", "HD95", "coarse Dice",
                 "empty prediction", "∞"):
        assert word in text, word
    assert "table.sortable" in page.source and "addEventListener('click'" in page.source


def test_report_scores_are_the_evaluation_scores(hippo, hippo_report):
    from autosam.evaluation import case_metrics

    page = parse(hippo_report)
    row = page.rows.index("hippocampus_149")
    ref, props = io.read_label(hippo["gt"] / "hippocampus_149.nii.gz")
    hyp, _ = io.read_label(hippo["pred"] / "hippocampus_149.nii.gz")
    m = case_metrics(ref, hyp, props["spacing"], [1, 2])
    cells = page.cells[row]  # rank, case, mean Dice, changed, then Dice, NSD, HD95, coarse Dice per label
    assert float(cells[4]) == pytest.approx(m[1]["Dice"]) and float(cells[5]) == pytest.approx(m[1]["NSD"])
    assert float(cells[6]) == pytest.approx(m[1]["HD95"]) and float(cells[8]) == pytest.approx(m[2]["Dice"])
    assert float(cells[2]) == pytest.approx((m[1]["Dice"] + m[2]["Dice"]) / 2)


def test_report_without_reference(hippo, tmp_path):
    # with the coarse folder: overlays and the share SAM changed per case, most changed first
    out = tmp_path / "coarse_only.html"
    assert cli.main(["report", str(hippo["pred"]), "-o", str(out), "--coarse", str(hippo["coarse"]),
                     "-i", str(hippo["images"])]) == 0
    page = parse(out)
    assert len(open_images(page)) == 6 + 2  # cases + one plot of the changed share per label
    assert page.rows[0] == HIPPO_WORST  # empty prediction: 100% of the coarse voxels changed
    assert float(page.cells[0][2]) == 1.0
    text = " ".join(page.text)
    assert "changed" in text and "mean Dice" not in text and "NSD" not in text
    assert page.rows[-1] == "hippocampus_221"  # its prediction is the coarse map: nothing changed
    # neither reference nor coarse: overlays only (no table, no plots), here without images
    out = tmp_path / "plain.html"
    assert cli.main(["report", str(hippo["pred"]), "-o", str(out)]) == 0
    page = parse(out)
    assert len(open_images(page)) == 6 and not page.rows and "cases-table" not in page.ids
    assert len(page.gallery) == 6 and "No images were given" in page.source


def test_empty_prediction_and_empty_reference_render_2d(tmp_path):
    src = sample_dataset("hc18")
    root = tmp_path / "hc18"
    pred, gt = root / "pred", root / "labelsTr"
    pred.mkdir(parents=True)
    gt.mkdir()
    shutil.copytree(src / "imagesTr", root / "imagesTr")
    shutil.copy(src / "dataset.json", root / "dataset.json")
    for f in sorted((src / "labelsTr").iterdir()):
        seg, props = io.read_label(f)
        p, r = seg.copy(), seg.copy()
        if f.name.startswith("719"):
            p[:] = 0
        if f.name.startswith("800"):
            r[:] = 0
        if f.name.startswith("801"):
            p = np.roll(seg, 20, axis=2)
        io.write_seg(p, pred / f.name, props)
        io.write_seg(r, gt / f.name, props)
    out = root / "report.html"  # images found beside labelsTr, dataset.json beside it too
    assert cli.main(["report", str(pred), "-o", str(out), "--gt", str(gt)]) == 0
    page = parse(out)
    assert len(open_images(page)) == 3 + 1
    assert set(page.rows[:2]) == {"719_HC", "800_HC"} and page.rows[2] == "801_HC"
    text = " ".join(page.text)
    assert "empty prediction" in text and "empty reference" in text and "∞" in text
    assert "slices:" not in text  # a 2D case is one slice


def test_representative_slices_known_answer():
    ref = np.zeros((10, 8, 8), np.int16)
    ref[2:9, 2:6, 2:6] = 1
    ref[3, 1:7, 1:7] = 1  # the largest slice
    seg = ref.copy()
    seg[7, :, :] = 0  # the worst error
    picks = report.representative_slices(seg, 0, [1], reference=ref)
    assert picks == [("largest label", 3), ("worst error", 7), ("middle", 5)]
    # both empty: the middle of the volume and a neighbour
    empty = np.zeros_like(ref)
    assert [i for _, i in report.representative_slices(empty, 0, [1], reference=empty)] == [4, 5]
    # one slice (2D): one picture
    assert len(report.representative_slices(seg[:1], 0, [1], reference=ref[:1])) == 1
    # no reference: where SAM changed most
    assert report.representative_slices(seg, 0, [1], coarse=ref)[1] == ("most changed", 7)


def test_write_overlay(tmp_path):
    src = sample_dataset("hippocampus")
    case = io.read_case("hippocampus_148", [src / "imagesTr" / "hippocampus_148_0000.nii.gz"])
    ref, _ = io.read_label(src / "labelsTr" / "hippocampus_148.nii.gz")
    coarse = np.where(ndimage.binary_erosion(ref > 0), ref, 0)
    labels = {"background": 0, "Anterior": 1, "Posterior": 2}
    out = tmp_path / "overlays" / "hippocampus_148.png"
    report.write_overlay(out, case.image, ref, labels, coarse=coarse, reference=ref, spacing=case.spacing)
    start = time.perf_counter()
    report.write_overlay(out, case.image, np.roll(ref, 1, axis=2), labels, coarse=coarse, reference=ref,
                         spacing=case.spacing, axis=0)
    assert time.perf_counter() - start < 1.0
    img = mpimg.imread(out)
    assert img.shape[0] > 200 and img.shape[1] > 400 and img[..., :3].std() > 0.05
    assert sorted(p.name for p in out.parent.iterdir()) == ["hippocampus_148.png"]  # written atomically
    # a 2D case, an empty segmentation, and labels given as a list
    hc = sample_dataset("hc18")
    case = io.read_case("801_HC", [hc / "imagesTr" / "801_HC_0000.png"])
    report.write_overlay(tmp_path / "801_HC.png", case.image, np.zeros(case.image.shape[1:], np.int16), [1],
                         spacing=case.spacing)
    assert mpimg.imread(tmp_path / "801_HC.png").shape[1] > 300
    with pytest.raises(AutosamError, match="shape"):
        report.write_overlay(tmp_path / "bad.png", case.image, ref, [1])
    assert not (tmp_path / "bad.png").exists()


def test_bad_input_is_one_line_and_writes_nothing(hippo, tmp_path, capsys):
    gt = tmp_path / "labels"
    shutil.copytree(hippo["gt"], gt)
    (gt / "hippocampus_320.nii.gz").unlink()
    out = tmp_path / "r.html"
    assert cli.main(["report", str(hippo["pred"]), "-o", str(out), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "hippocampus_320.nii.gz" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".tmp*"))
    out.write_text("old")
    assert cli.main(["report", str(hippo["pred"]), "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "old"


def test_without_matplotlib_one_line_install_hint(hippo, tmp_path, monkeypatch, capsys):
    code = "import sys; sys.modules['matplotlib'] = None; import autosam.report, autosam.commands.report"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # importing needs no matplotlib
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "r.html"
    assert cli.main(["report", str(hippo["pred"]), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'autosam[report]'" in err
    assert not out.exists()


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.skipif(_chromium() is None, reason="no Chromium binary (CI installs Debian's chromium in .ci/run)")
def test_page_renders_in_headless_chromium(hippo_report, tmp_path):
    shot = tmp_path / "screenshot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,1600",
           "--hide-scrollbars", hippo_report.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[:2] == (1600, 1200)
    assert img.std() > 0.1  # not blank
    colours = np.unique((img.reshape(-1, 3) * 255).round().astype(np.uint8), axis=0)
    assert len(colours) > 200  # text, tables, plots and pictures, not one flat colour
    # the dark header band, the white sections and the plots all show
    assert img[:60].mean() < 0.3 and img[200:1000].mean() > 0.7


def test_overlays_option_writes_one_png_per_case_and_nothing_when_not_given(tmp_path, capsys):
    """``--overlays DIR`` on a folder verb (here ``segment --no-sam``) writes one picture per case into its own
    folder; without it no picture is written; the output folder itself is refused as the overlay folder."""
    from PIL import Image

    from autosam.cli import main

    hc18 = sample_dataset("hc18")
    base = ["segment", "-i", str(hc18 / "imagesTr"), "--prompter", "hc18", "--no-sam", "--device", "cpu"]
    assert main(base + ["-o", str(tmp_path / "plain")]) == 0
    assert not list((tmp_path / "plain").glob("*_overlay*")) and not (tmp_path / "overlays").exists()
    assert main(base + ["-o", str(tmp_path / "out"), "--overlays", str(tmp_path / "overlays")]) == 0
    pictures = sorted(p.name for p in (tmp_path / "overlays").iterdir())
    assert pictures == ["719_HC.png", "800_HC.png", "801_HC.png"]
    for name in pictures:
        with Image.open(tmp_path / "overlays" / name) as img:
            pixels = np.asarray(img.convert("RGB"), dtype=np.float32)
        assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    capsys.readouterr()
    assert main(base + ["-o", str(tmp_path / "o2"), "--overlays", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "overlay folder" in err[0] and not (tmp_path / "o2").exists()
