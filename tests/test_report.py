"""convnet report: pages opened in a real headless Chromium, checked as a reader sees them.

One browser serves the whole module. Each page must load with no console error, show
every section with pixels that are not all one colour, ask the network for nothing, and
hold exactly the numbers of ``convnet summary --json`` and ``convnet eval --json``.
VGG-16 and DenseNet-121 pages must stay under 10 MB and load in under 2 seconds.
"""

import base64
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convnet.cli import main
from convnet.models import from_notation
from convnet.report import SECTIONS, build_report, run_config, write_report
from convnet.spec import resolve_model
from convnet.train.loop import TrainConfig, train

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
NET = "INPUT 8x8x1 -> CONV 8 -> RELU -> POOL -> CONV 16 -> BN -> RELU -> FC 10"
MAX_BYTES = 10 * 1024 * 1024
MAX_LOAD_MS = 2000


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for the module, logging the console."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip("needs Debian's chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1280,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """The test's files: a digits run and sample images, made once."""
    root = tmp_path_factory.mktemp("report")
    run = root / "run"
    train(TrainConfig(data="digits", model=NET, epochs=3, out=str(run)), progress=False,
          log=lambda *args: None)
    yy, xx = np.mgrid[:96, :96]
    disc = ((xx - 48) ** 2 + (yy - 40) ** 2 < 600)[..., None]
    picture = np.where(disc, 250, np.stack([xx * 2, yy * 2, 255 - xx * 2], -1))
    for i in range(3):
        Image.fromarray(np.roll(picture, 20 * i, axis=1).astype(np.uint8)).save(
            root / f"picture{i}.png")
    return root


def open_page(browser, path):
    """Load a page; returns the navigation timing (ms). The page must log no error."""
    browser.get(Path(path).resolve().as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    return browser.execute_script(
        "return performance.getEntriesByType('navigation')[0].toJSON()")


def check_page(browser, path):
    """Every section there, drawn (not one colour), and nothing asked of the network."""
    timing = open_page(browser, path)
    for key in SECTIONS:
        element = browser.find_element("id", key)
        with Image.open(io.BytesIO(element.screenshot_as_png)) as shot:
            assert shot.convert("RGB").getcolors(1) is None, f"{key} is blank"
    links = browser.execute_script(
        "return Array.from(document.querySelectorAll('[src], [href]'))"
        ".map(e => e.getAttribute('src') || e.getAttribute('href'))")
    assert links and all(v.startswith(("data:", "#")) for v in links), \
        [v[:60] for v in links if not v.startswith(("data:", "#"))]
    assert browser.execute_script(
        "return performance.getEntriesByType('resource').length") == 0
    for image in browser.find_elements("css selector", "img"):   # every picture decoded
        assert browser.execute_script("return arguments[0].naturalWidth", image) > 0
    return timing


def summary_json(capsys, *argv):
    capsys.readouterr()
    assert main(["summary", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def check_summary_table(browser, expected):
    """The table in the page, read from the DOM, equals ``convnet summary --json``."""
    rows = browser.execute_script("""
        const read = tr => Object.fromEntries(Array.from(tr.querySelectorAll('td[data-key]'))
            .flatMap(td => [[td.dataset.key, JSON.parse(td.dataset.value)],
                            [td.dataset.key + ' text', td.textContent]]));
        return {layers: Array.from(document.querySelectorAll(
                    '#summary-table tbody tr[data-name]')).map(read),
                total: read(document.querySelector('#summary-table tr.total')),
                memory: read(document.querySelector('#memory-table'))};""")
    keys = ("name", "type", "output_volume", "params", "macs", "receptive_field", "jump",
            "activation_bytes")
    assert [{k: row[k] for k in keys} for row in rows["layers"]] == \
        [{k: row[k] for k in keys} for row in expected["layers"]]
    for row, want in zip(rows["layers"], expected["layers"]):
        assert row["params text"] == f"{want['params']:,}"
        assert row["macs text"] == f"{want['macs']:,}"
    total = rows["total"]
    assert (total["total_params"], total["total_macs"]) == \
        (expected["total_params"], expected["total_macs"])
    assert (total["receptive_field"], total["jump"]) == \
        (expected["receptive_field"], expected["jump"])
    for key in ("activations", "activation_gradients", "parameters_total", "misc",
                "training_total", "inference_total"):
        assert rows["memory"][key] == expected["memory"][key], key


def test_a_model_file_away_from_its_run_is_summarized_by_its_optimizer(pages, tmp_path,
                                                                       capsys):
    """Without its run's checkpoint, the page had counted the model's memory by SGD's x2
    where ``convnet summary`` (which it names) takes the optimizer the file records."""
    import re
    import shutil
    for name in ("model.json", "model.safetensors"):
        shutil.copy(pages / "run" / name, tmp_path / name)
    page = tmp_path / "page.html"
    assert main(["report", str(tmp_path / "model.json"), "--out", str(page)]) == 0
    text = page.read_text()
    expected = summary_json(capsys, str(tmp_path / "model.json"))
    assert expected["optimizer"] == "adam" and "<code>convnet summary</code> (batch 1, adam," \
        in text
    shown = re.search(r'data-key="parameters_total" data-value="(\d+)"', text).group(1)
    assert int(shown) == expected["memory"]["parameters_total"]


def test_the_digits_report_shows_a_trained_run(browser, pages, capsys):
    model = pages / "run" / "model.json"
    page = pages / "digits.html"
    assert main(["report", str(model), "--data", "digits", "--out", str(page)]) == 0
    check_page(browser, page)
    trained = browser.find_element("id", "trained")
    assert trained.get_attribute("data-trained") == "true"
    assert "Trained weights" in trained.text
    # the summary at the run's batch size and optimizer (the memory its training needed)
    config = run_config(pages / "run")
    settings = ["--batch", str(config["batch_size"]), "--optimizer", config["optimizer"]]
    assert settings != ["--batch", "1", "--optimizer", "sgd"]       # not summary's defaults
    check_summary_table(browser, summary_json(capsys, str(model), *settings))
    assert f"convnet summary {' '.join(settings)}" in browser.find_element("id", "summary").text

    # accuracy, the confusion matrix with class names, the most confidently wrong images
    capsys.readouterr()
    assert main(["eval", str(model), "--data", "digits", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    accuracy = browser.find_element("id", "accuracy")
    assert json.loads(accuracy.get_attribute("data-value")) == evaluated["accuracy"]
    cells = browser.execute_script(
        "return Array.from(document.querySelectorAll('#confusion tbody tr'))"
        ".map(tr => Array.from(tr.querySelectorAll('td')).map(td => +td.textContent))")
    assert cells == evaluated["confusion"]
    heads = [e.text for e in browser.find_elements("css selector", "#confusion tbody th")]
    assert heads == evaluated["classes"]                   # digits: named by their index
    wrong = browser.find_elements("css selector", "#wrong figure")
    errors = evaluated["images"] - sum(evaluated["confusion"][i][i] for i in range(10))
    assert len(wrong) == min(8, errors)
    probs = [float(f.text.rsplit("(", 1)[1].rstrip(")")) for f in wrong]
    assert probs == sorted(probs, reverse=True)

    # the run: curves and settings from the checkpoint
    assert browser.find_element("id", "curves").get_attribute("naturalWidth") == "900"
    def setting(key):
        return browser.find_element("css selector", f'#settings dd[data-key="{key}"]').text

    assert (setting("epochs"), setting("data"), setting("model")) == ("3", "digits", NET)

    # activations: the input and every stage with a volume, all channels, in one grid each
    stages = browser.find_elements("css selector", "details.sample[open] figure.stage")
    net = resolve_model(str(model))
    shape, expected = net.input_shape, []
    for name, layer in net.named_children():
        shape = layer.output_shape(shape)
        if len(shape) == 3:
            expected.append((name, shape[0]))
    assert [s.get_attribute("data-stage") for s in stages] == [n for n, _ in expected]
    for (_, channels), stage in zip(expected, stages):
        assert f"all {channels} maps" in stage.text
        grid = stage.find_element("css selector", "img.grid")
        assert int(grid.get_attribute("data-count")) == channels
        natural = browser.execute_script("return arguments[0].naturalWidth", grid)
        cols, tw = int(grid.get_attribute("data-cols")), int(grid.get_attribute("data-tw"))
        assert natural == cols * (tw + 1) + 1
    samples = browser.find_elements("css selector", "details.sample")
    assert len(samples) == 4                       # one test image of each of 4 classes
    # hovering a map names its channel, and moves nothing: the readout had widened its
    # caption, pushing the next grid aside (or onto the next row) under the mouse
    from selenium.webdriver import ActionChains

    def boxes():
        return [(s.location["x"], s.location["y"], s.size["width"], s.size["height"])
                for s in stages]
    for width in (1280, 1000, 700):
        browser.set_window_size(width, 1000)
        before = boxes()
        for stage in stages:     # each grid at its own width (captions had squeezed them)
            grid = stage.find_element("css selector", "img.grid")
            drawn = int(grid.get_dom_attribute("width"))   # the HTML's, not the layout's
            assert grid.size["width"] == drawn, (width, stage.text)
        for stage in stages:
            grid = stage.find_element("css selector", "img.grid")
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", grid)
            size, cols = grid.size, int(grid.get_attribute("data-cols"))
            rows = -(-int(grid.get_attribute("data-count")) // cols)
            ActionChains(browser).move_to_element_with_offset(   # the first map's middle,
                grid, int(size["width"] * (1 / cols - 1) / 2),   # from the grid's centre
                int(size["height"] * (1 / rows - 1) / 2)).perform()
            caption = browser.find_element("id", grid.get_attribute("data-caption")).text
            assert caption == "channel 0" and boxes() == before, (width, stage.text)
    browser.set_window_size(500, 1000)     # a phone: the settings had been a letter a line
    assert min(dd.size["width"] for dd in browser.find_elements(
        "css selector", "dl.settings dd")) > 150
    browser.set_window_size(1280, 1000)


def test_an_untrained_zoo_model_says_so_at_the_top(browser, pages, capsys):
    page = pages / "lenet5.html"
    images = [str(pages / f"picture{i}.png") for i in range(2)]
    assert main(["report", "lenet5", "--images", *images, "--out", str(page)]) == 0
    err = capsys.readouterr().err
    assert "converted to 32x32 L" in err          # what was done to the images is said
    check_page(browser, page)
    status = browser.find_element("id", "status")
    assert "Untrained: random initial weights" in status.text
    assert browser.find_element("id", "trained").get_attribute("data-trained") == "false"
    assert "Random initial weights" in browser.find_element("id", "filters").text
    assert "Give --data" in browser.find_element("id", "evaluation").text
    assert "No training record" in browser.find_element("id", "training").text
    assert len(browser.find_elements("css selector", "details.sample")) == 2
    check_summary_table(browser, summary_json(capsys, "lenet5"))


@pytest.mark.parametrize("name, adds, joins, lanes", [
    ("resnet18", 8, 0, 2),                   # eight residual blocks: body and shortcut
    ("googlenet_torchvision", 0, 9, 4),      # nine inception modules of four branches
])
def test_branches_are_drawn_as_branches(browser, pages, capsys, name, adds, joins, lanes):
    page = pages / f"{name}.html"
    assert main(["report", name, "--input", "3x64x64", "--images",
                 str(pages / "picture0.png"), "--out", str(page)]) == 0
    check_page(browser, page)
    svg = browser.find_element("css selector", "#architecture svg")
    assert len(svg.find_elements("css selector", "g.fork.add")) == adds
    assert len(svg.find_elements("css selector", "g.fork.concat")) == joins
    model = resolve_model(name, input_shape=(3, 64, 64))
    convs = sum(type(layer).__name__ == "Conv2d" for _, layer in model.named_layers())
    assert len(svg.find_elements("css selector", "g.volume.conv")) == convs
    assert {int(fork.get_attribute("data-lanes"))
            for fork in svg.find_elements("css selector", "g.fork")} == {lanes}
    check_summary_table(browser, summary_json(capsys, name, "--input", "3x64x64"))


def test_googlenets_auxiliary_heads_are_drawn_as_side_branches(browser, pages):
    """A GoogLeNet with its auxiliary heads had failed: the volume after a head was
    taken to be the head's scores, and the next Inception module refused it."""
    from convnet.zoo.googlenet import googlenet_torchvision
    model = googlenet_torchvision(input_size=64, aux_logits=True)
    model.input_shape = (3, 64, 64)
    page = pages / "googlenet_aux.html"
    write_report(model, page, source="googlenet with aux heads",
                 images=[str(pages / "picture0.png")])
    check_page(browser, page)
    svg = browser.find_element("css selector", "#architecture svg")
    assert len(svg.find_elements("css selector", "g.fork.side")) == 2
    assert len(svg.find_elements("css selector", "g.fork.concat")) == 9


@pytest.mark.parametrize("name", ["vgg16", "densenet121"])
def test_large_models_stay_small_and_fast(browser, pages, name):
    page = pages / f"{name}.html"
    started = time.perf_counter()
    write_report(resolve_model(name), page, source=name,
                 images=[str(pages / f"picture{i}.png") for i in range(3)])
    seconds = time.perf_counter() - started
    size = page.stat().st_size
    timing = check_page(browser, page)
    print(f"{name}: {size / 1e6:.2f} MB, written in {seconds:.1f} s, loaded in "
          f"{timing['loadEventEnd']:.0f} ms", file=sys.stderr)
    assert size < MAX_BYTES
    assert timing["loadEventEnd"] < MAX_LOAD_MS
    assert seconds < 30
    assert browser.find_elements("css selector", "details.sample figure.stage")


def test_train_writes_the_report_unless_told_not_to(tmp_path, capsys):
    args = ["train", "--model", NET, "--epochs", "1", "--limit", "200", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert f"report: {tmp_path / 'a' / 'report.html'}" in capsys.readouterr().out
    page = (tmp_path / "a" / "report.html").read_text()
    assert 'id="accuracy"' in page and 'id="curves"' in page
    (tmp_path / "a" / "report.html").unlink()   # a resumed run writes it too
    assert main(["train", "--resume", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    assert 'id="accuracy"' in (tmp_path / "a" / "report.html").read_text()
    assert main([*args, "--out", str(tmp_path / "b"), "--no-report"]) == 0
    assert not (tmp_path / "b" / "report.html").exists()
    # --overwrite removes the earlier run's report with its other files
    assert main([*args, "--out", str(tmp_path / "a"), "--overwrite", "--no-report"]) == 0
    assert not (tmp_path / "a" / "report.html").exists()


def test_without_matplotlib_train_notes_it_and_report_says_what_to_install(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # import matplotlib fails
    assert main(["train", "--model", NET, "--epochs", "1", "--limit", "100", "--quiet",
                 "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "no report.html" in err and "convnet[plot]" in err
    assert (tmp_path / "run" / "model.json").is_file()
    assert main(["report", "lenet5", "--out", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'convnet[plot]'" in err


def test_a_damaged_run_record_is_a_note_and_the_page_is_still_written(
        pages, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(pages / "run", run)
    (run / "history.json").write_text("[1, 2")
    assert main(["report", str(run / "model.json"), "--out", str(tmp_path / "r.html")]) == 0
    err = capsys.readouterr().err
    assert "history.json: not JSON" in err and "the checkpoint's record of them" in err
    page = (tmp_path / "r.html").read_text()
    assert 'id="settings"' in page and 'id="curves"' in page   # the checkpoint's curves
    (run / "history.json").unlink()               # the checkpoint's history stands in
    (run / "checkpoint.safetensors").write_bytes(b"not a checkpoint")
    assert main(["report", str(run / "model.json"), "--out", str(tmp_path / "r.html"),
                 "--overwrite"]) == 0
    assert "training settings skipped" in capsys.readouterr().err
    assert "No training record" not in (tmp_path / "r.html").read_text()
    (run / "history.json").write_text("[" + "[]," * 1_100_000 + "[]]")
    assert main(["report", str(run / "model.json"), "--out", str(tmp_path / "r.html"),
                 "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert "training curves skipped" in err and "MAX_JSON_VALUES" in err
    # numbers no curve can hold: an epoch of 400 digits (an OverflowError) or 1e308
    good = json.dumps([{"epoch": 1, "loss": 1.0, "acc": 0.5, "val_loss": 1.0,
                        "val_acc": 0.5}])
    for bad in ('"epoch": 1' + "0" * 400, '"epoch": 1e308', '"epoch": 0',
                '"loss": 1' + "0" * 400):
        (run / "history.json").write_text(good.replace(
            '"loss": 1.0' if "loss" in bad else '"epoch": 1', bad))
        assert main(["report", str(run / "model.json"), "--out", str(tmp_path / "r.html"),
                     "--overwrite"]) == 0
        err = capsys.readouterr().err
        assert "training curves skipped" in err and "history.json" in err, (bad, err)


def test_a_model_trained_with_tta_is_evaluated_with_it_as_eval_does(pages, tmp_path, capsys):
    """The model file records flip TTA: the page's accuracy, its wrong images and their
    probabilities are the TTA ones, as `convnet eval` gives by default, and it says so."""
    from convnet.io import load_model
    from convnet.train.inference import evaluation_data, top_k
    run = tmp_path / "run"
    shutil.copytree(pages / "run", run)
    record = json.loads((run / "model.json").read_text())
    record["info"]["tta"] = True
    (run / "model.json").write_text(json.dumps(record))
    assert main(["eval", str(run / "model.json"), "--data", "digits", "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["tta"] is True
    page = tmp_path / "r.html"
    assert main(["report", str(run / "model.json"), "--data", "digits", "--out",
                 str(page)]) == 0
    text = page.read_text()
    shown = float(text.split('id="accuracy" data-value="', 1)[1].split('"', 1)[0])
    assert shown == evaluated["accuracy"]
    assert "with flip TTA, as the model was trained" in text
    model = load_model(run / "model.json")
    x, y, _, _ = evaluation_data(model, "digits")
    idx, p = top_k(model, x, 1, tta=True)
    wrong = np.flatnonzero(idx[:, 0] != y)
    top = wrong[np.argmax(p[wrong, 0])]
    assert f"#{top}: true {y[top]}<br>predicted {idx[top, 0]} ({p[top, 0]:.3f})" in text
    # predict takes the recorded TTA too (--no-tta turns it off)
    image = tmp_path / "a.png"
    Image.fromarray((np.arange(64).reshape(8, 8) * 4).astype(np.uint8)).save(image)
    lines = []
    for flag in ([], ["--no-tta"]):
        assert main(["predict", str(run / "model.json"), str(image), "--top", "1",
                     *flag]) == 0
        lines.append(capsys.readouterr().out)
    assert lines[0] != lines[1]
    # and the activations' "predicted" line is predict's (TTA included)
    assert main(["predict", str(run / "model.json"), str(image)]) == 0
    predicted = capsys.readouterr().out.split(": ", 1)[1].strip()
    assert main(["report", str(run / "model.json"), "--images", str(image), "--out",
                 str(tmp_path / "i.html")]) == 0
    assert f"predicted: {predicted}</p>" in (tmp_path / "i.html").read_text()


def test_json_text_is_strict_json_with_null_for_what_is_not_finite():
    from convnet.io.weights import json_text
    value = {"a": [1.0, float("nan"), (float("inf"), {"b": -float("inf")})], "c": "NaN"}
    text = json_text(value, indent=1)
    assert "NaN," not in text and "Infinity" not in text
    assert json.loads(text) == {"a": [1.0, None, [None, {"b": None}]], "c": "NaN"}


@pytest.mark.parametrize("write", ["json.dumps", "json_text"])
def test_a_diverged_run_keeps_its_curves(pages, tmp_path, capsys, write):
    """A validation loss that became NaN: the history is drawn (with gaps), not called
    missing; whether history.json holds it as NaN (runs of before) or as null (now)."""
    from convnet.io.weights import json_text
    run = tmp_path / "run"
    shutil.copytree(pages / "run", run)
    history = json.loads((run / "history.json").read_text())
    history[-1]["val_loss"] = float("nan")
    (run / "history.json").write_text({"json.dumps": json.dumps, "json_text": json_text}[
        write](history))
    assert main(["report", str(run / "model.json"), "--out", str(tmp_path / "r.html")]) == 0
    text = (tmp_path / "r.html").read_text()
    assert 'id="curves"' in text and "holds no training history" not in text
    assert "training curves skipped" not in capsys.readouterr().err


def test_a_damaged_history_file_gives_the_checkpoints_curves(pages, tmp_path, capsys):
    """A damaged history.json had skipped the curves the checkpoint beside it keeps, and
    the page then said the run "holds no training history"."""
    run = tmp_path / "run"
    shutil.copytree(pages / "run", run)
    (run / "history.json").write_text('[{"epoch":')
    assert main(["report", str(run / "model.json"), "--out", str(tmp_path / "r.html")]) == 0
    text = (tmp_path / "r.html").read_text()
    assert 'id="curves"' in text and "holds no training history" not in text
    assert "history.json: not JSON" in text and "the training curves are the checkpoint" \
        in text
    (run / "checkpoint.safetensors").unlink()          # nothing else to draw them from
    assert main(["report", str(run / "model.json"), "--out", str(tmp_path / "s.html")]) == 0
    text = (tmp_path / "s.html").read_text()
    assert 'id="curves"' not in text and "training curves skipped" in text
    assert f"{run}: its training history could not be read (see the notes above)" in text
    (run / "history.json").unlink()           # a damaged checkpoint may have held it too
    (run / "checkpoint.safetensors").write_bytes(b"not a checkpoint")
    assert main(["report", str(run / "model.json"), "--out", str(tmp_path / "t.html")]) == 0
    assert f"{run}: its training history could not be read" in (tmp_path / "t.html"
                                                                  ).read_text()


def test_weights_of_unknown_origin_are_not_called_random(pages, tmp_path):
    """A model handed over in Python (no ``trained`` flag) gets no "random weights" note
    beside its accuracy; an untrained zoo model does."""
    from convnet.io import load_model
    model = load_model(pages / "run" / "model.json")
    assert not hasattr(model, "trained")
    write_report(model, tmp_path / "r.html", data="digits")
    text = (tmp_path / "r.html").read_text()
    assert "unknown origin" in text and "random weights: expect" not in text
    assert main(["report", "INPUT 8x8x1 -> FC 10", "--data", "digits", "--out",
                 str(tmp_path / "u.html")]) == 0
    assert "random weights: expect about 1/10" in (tmp_path / "u.html").read_text()


def test_a_run_directory_whose_name_is_not_utf8_gets_its_report(pages, tmp_path, capsys):
    """A directory named in Latin-1 bytes (Python shows the byte as a surrogate): the page
    had failed to encode; the name now shows with a "?"."""
    run = tmp_path / os.fsdecode(b"caf\xe9")
    shutil.copytree(pages / "run", run)
    page = tmp_path / "r.html"
    assert main(["report", str(run / "model.json"), "--out", str(page)]) == 0
    assert "caf?" in page.read_text(encoding="utf-8")


def test_many_classes_make_a_picture_not_a_table_of_k_squared_cells():
    """1000 classes had made a 107 MB table that a browser could not open; above
    MAX_TABLE_CLASSES the matrix is a picture of the shares and a list of the most
    confused pairs, largest first."""
    from convnet.report import build
    k = 1000
    rng = np.random.default_rng(0)
    confusion = np.diag(rng.integers(5, 10, k))
    confusion[3, 7], confusion[8, 2], confusion[5, 5] = 9, 4, 0
    classes = [f"class {i}" for i in range(k)]
    result = {"accuracy": 0.5, "loss": 1.0, "confusion": confusion}
    html = build._evaluation_section((result, classes, []), "many", True)
    assert len(html) < 200_000
    assert 'id="confusion" src="data:image/png' in html and "<td title=" not in html
    assert 'width="1000"' in html                 # a pixel a cell: nothing dropped
    uri = html.split('id="confusion" src="', 1)[1].split('"', 1)[0]
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert picture[3, 7] < 255 and picture[5, 5] == 255 and picture[0, 1] == 255   # white: 0
    assert '<div class="scroll"><table id="confused-pairs">' in html   # not widening the page
    pairs = html.split('id="confused-pairs"', 1)[1]
    assert pairs.index("<td>class 3</td><td>class 7</td>") < pairs.index(
        "<td>class 8</td><td>class 2</td>")
    assert pairs.count("<tr>") == 3      # the header and the two confused pairs
    small = build._evaluation_section((dict(result, confusion=confusion[:10, :10]),
                                       classes[:10], []), "few", True)
    assert '<table class="confusion" id="confusion">' in small


def test_the_pointer_over_the_confusion_picture_names_the_cells_classes(browser, tmp_path):
    """Above 100 classes the picture had no labels: no cell could be traced to its
    classes. The pointer names them (the names as text, not HTML)."""
    from selenium.webdriver import ActionChains

    from convnet.report import build
    from convnet.report.page import document
    k = 150
    confusion = np.diag(np.full(k, 3))
    classes = [f"<b>c{i}</b>" for i in range(k)]
    result = {"accuracy": 1.0, "loss": 0.1, "confusion": confusion}
    page = tmp_path / "c.html"
    page.write_text(document("c", build._evaluation_section((result, classes, []), "d",
                                                            True)))
    open_page(browser, page)
    img = browser.find_element("id", "confusion")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", img)
    width, height = img.size["width"], img.size["height"]
    for row, col in ((3, 140), (77, 77)):       # offsets from the centre, to mid-cell
        ActionChains(browser).move_to_element_with_offset(
            img, int((col + 0.5) / k * width - width / 2),
            int((row + 0.5) / k * height - height / 2)).perform()
        caption = browser.find_element("id", "confusion-cell").text
        assert caption == f"true <b>c{row}</b>, predicted <b>c{col}</b>", caption
    assert not browser.find_elements("css selector", "#confusion-cell b")


def test_long_class_names_wrap_instead_of_widening_the_page(browser, pages, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pages / "run", run)
    record = json.loads((run / "model.json").read_text())
    record["info"]["classes"] = [f"{i}-" + "x" * 200 for i in range(10)]
    (run / "model.json").write_text(json.dumps(record))
    page = tmp_path / "r.html"
    assert main(["report", str(run / "model.json"), "--images", str(pages / "picture0.png"),
                 "--out", str(page)]) == 0
    open_page(browser, page)
    assert browser.execute_script("return document.documentElement.scrollWidth "
                                  "<= window.innerWidth")
    # a long image file name, in the notes at the top and in the samples, wraps too
    image = tmp_path / ("y" * 240 + ".png")
    shutil.copy(pages / "picture0.png", image)
    page = tmp_path / "long.html"
    assert main(["report", str(pages / "run" / "model.json"), "--images", str(image),
                 "--out", str(page)]) == 0
    assert "y" * 240 in page.read_text()
    open_page(browser, page)
    assert browser.execute_script("return document.documentElement.scrollWidth "
                                  "<= window.innerWidth")


@pytest.mark.parametrize("argv", [["report", "lenet5"], ["show", "filters", "lenet5"]])
def test_report_and_show_replace_a_file_only_with_overwrite(tmp_path, capsys, argv):
    """A run's report.html or curve.png is not replaced by a page or picture of another
    model without --overwrite; the refusal comes before the model is read."""
    out = tmp_path / ("report.html" if argv[0] == "report" else "curve.png")
    out.write_bytes(b"the run's own")
    assert main([*argv, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{out}: already there; pass --overwrite to replace it" in err
    assert err.count("\n") == 1 and out.read_bytes() == b"the run's own"
    assert main([*argv, "--out", str(out), "--overwrite"]) == 0
    assert out.read_bytes() != b"the run's own"


@pytest.mark.parametrize("argv, message", [
    (["nonet"], "not a zoo name"),
    (["lenet5", "--images", "missing.png"], "missing.png"),
    (["INPUT 8x8x1 -> FC 3", "--data", "digits"], "has 3 outputs but digits has 10"),
    (["INPUT 64 -> FC 3", "--images", "a.png"], "need a model that takes images"),
    (["lenet5", "--out", "no/such/dir/r.html"], "no/such/dir does not exist"),
])
def test_bad_input_is_one_named_line(tmp_path, capsys, argv, message):
    assert main(["report", "--out", str(tmp_path / "r.html"), *argv]) == 1   # last --out wins
    err = capsys.readouterr().err
    assert err.startswith("convnet report: error:") and err.count("\n") == 1
    assert message in err


def test_the_training_summary_says_which_epoch_best_json_holds(pages, tmp_path):
    """best.json is the epoch of the lowest validation loss, which the page had left to
    be confused with its "best validation accuracy" epoch."""
    run = tmp_path / "run"
    shutil.copytree(pages / "run", run)
    history = json.loads((run / "history.json").read_text())
    for row, (acc, loss) in zip(history, ((0.5, 0.9), (0.9, 0.7), (0.8, 0.4))):
        row["val_acc"], row["val_loss"] = acc, loss
    (run / "history.json").write_text(json.dumps(history))
    assert main(["report", str(run / "model.json"), "--out", str(tmp_path / "r.html")]) == 0
    text = (tmp_path / "r.html").read_text()
    assert ("best validation accuracy 0.9000 at epoch 2. best.json holds epoch 3, the "
            "lowest validation loss (0.4000).") in text


def test_a_label_smoothed_training_loss_is_named_and_its_gap_explained(
        pages, monkeypatch, tmp_path):
    """Digits trains with label smoothing 0.1: its training loss (against smoothed
    targets) sat next to the plain validation loss as if the two were one measure."""
    import convnet.plot as plot
    seen = []
    real = plot.plot_history

    def spy(history, path, **kwargs):
        seen.append(kwargs.get("label_smoothing"))
        return real(history, path, **kwargs)
    monkeypatch.setattr(plot, "plot_history", spy)
    source = str(pages / "run" / "model.json")
    assert run_config(pages / "run")["label_smoothing"] == 0.1    # the digits default
    text = build_report(resolve_model(source), source=source)
    assert seen == [0.1]                               # the curve's legend names it
    assert "last: training loss (label smoothing 0.1) " in text
    note = text.split('id="smoothing">', 1)[1].split("</p>", 1)[0]
    assert "The two differ by the smoothing term" in note
    assert "0.5003 for 10 classes" in note             # the smoothed targets' entropy
    # without the run's checkpoint (its largest file, deleted), as the model file records
    import shutil
    shutil.copytree(pages / "run", tmp_path / "run")
    (tmp_path / "run" / "checkpoint.safetensors").unlink()
    source = str(tmp_path / "run" / "model.json")
    text = build_report(resolve_model(source), source=source)
    assert seen[-1] == 0.1 and "last: training loss (label smoothing 0.1) " in text


def test_the_confusion_tables_name_column_keeps_a_readable_width(browser, tmp_path):
    """100 classes with long names: `overflow-wrap: anywhere` had let the name column
    shrink to the width of "predicted", a few letters a line."""
    from convnet.report import build
    from convnet.report.page import STYLE, document
    rule = next(line for line in STYLE.splitlines() if "tbody th" in line)
    assert "min-width: 10em" in rule
    k = 100
    classes = [f"class {i}: a long name of the kind that folders have" for i in range(k)]
    result = {"accuracy": 1.0, "loss": 0.1, "confusion": np.eye(k, dtype=np.int64) * 5}
    page = tmp_path / "c.html"
    page.write_text(document("c", build._evaluation_section((result, classes, []), "d", True)))
    open_page(browser, page)
    width, em = browser.execute_script(
        "const th = document.querySelector('#confusion tbody th');"
        "return [th.getBoundingClientRect().width, parseFloat(getComputedStyle(th).fontSize)]")
    assert width >= 10 * em, (width, em)


def test_sample_images_past_max_samples_are_noted_with_the_real_reason(pages, monkeypatch):
    """Five images: the fifth was dropped "for the page's size cap", and only on the
    page; the note names MAX_SAMPLES and goes to the log with the other notes."""
    from convnet.report.build import MAX_SAMPLES
    said = []
    images = [str(pages / f"picture{i % 3}.png") for i in range(MAX_SAMPLES + 1)]
    text = build_report(resolve_model(NET), source=NET, images=images, log=said.append)
    line = (f"activations of the first {MAX_SAMPLES} of {MAX_SAMPLES + 1} images: the "
            f"report draws at most {MAX_SAMPLES} (MAX_SAMPLES)")
    assert line in said and line in text and "size cap" not in text
    assert text.count('<details class="sample"') == MAX_SAMPLES
    # the images past them are not read (a thousand files had all been decoded)
    from convnet.train import inference
    read = []
    real = inference.load_images
    monkeypatch.setattr(inference, "load_images",
                        lambda paths, *a, **k: read.append(len(paths)) or real(paths, *a, **k))
    build_report(resolve_model(NET), source=NET, images=images * 50, log=said.append)
    assert read == [MAX_SAMPLES]


def test_a_model_whose_outputs_are_not_finite_says_so():
    """NaN weights: the page had shown an accuracy (argmax of NaN picks class 0),
    "predicted 0 (nan)" captions, data-value="NaN" (JSON.parse refuses it) and a numpy
    warning on stderr. It now says the outputs are not finite, and warns of nothing."""
    import html
    import re
    import warnings

    from convnet.report.page import data_value
    model = resolve_model(NET)
    for _, layer in model.named_layers():
        if layer.params.get("weight") is not None and layer.params["weight"].ndim > 1:
            layer.params["weight"][...] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = build_report(model, source="nan", data="digits")
    def strict(constant):
        raise ValueError(f"not JSON: {constant}")
    for value in re.findall(r'data-value="([^"]*)"', text):
        json.loads(html.unescape(value), parse_constant=strict)
    assert data_value(float("nan")) == ' data-value="null"'
    evaluation = text.split('<section id="evaluation">', 1)[1]
    assert '<b id="accuracy" data-value="null">not known</b>' in evaluation
    assert re.search(r"outputs are not finite \(NaN or infinity\) for (\d+) of the \1 test "
                     r"images", evaluation)
    assert 'id="confusion"' not in evaluation and 'id="wrong"' not in evaluation
    activations = text.split('<section id="activations">', 1)[1].split("</section>", 1)[0]
    assert activations.count("predicted: nothing, the model&#x27;s outputs are not finite "
                             "(NaN or infinity)") == 4
    assert "predicted: 0" not in activations and "values not finite, drawn dark" in activations
    assert "72 of the 72 weights are not finite (NaN or infinity), drawn black" in text


def test_filters_after_a_locally_connected_first_layer_name_their_layer():
    """The first weighted layer is LocallyConnected2d: the CONV layer after it was shown
    as "First-layer filters"; the section now names the layer and says why."""
    text = build_report(resolve_model("INPUT 12x12x1 -> LC 4 -> RELU -> CONV 6 -> FC 10"),
                        source="lc")
    filters = text.split('<section id="filters">', 1)[1].split("</section>", 1)[0]
    assert "<h2>Filters of layer 2</h2>" in filters and "First-layer" not in filters
    assert ("These are the filters of layer 2, not of the first layer: the first weighted "
            "layer, 0 (LocallyConnected2d), is not a CONV layer.") in filters


def test_the_report_evaluates_the_test_images_in_one_pass(monkeypatch):
    """The report had run the test set through the model twice (evaluate, then top_k),
    each twice with flip TTA: a --time-limit run overran by the report's time."""
    from convnet.data import load_dataset
    from convnet.report import build
    from convnet.train import inference
    from convnet.train.inference import evaluate, top_k

    model = from_notation(NET, rng=np.random.default_rng(0))
    x, y = load_dataset("digits").test
    x = x.astype(np.float32)
    calls, real = [], inference.class_scores
    monkeypatch.setattr(inference, "class_scores", lambda *a: calls.append(1) or real(*a))
    result, wrong = build._evaluate(model, x, y, [str(i) for i in range(10)], {"tta": True})
    batches = -(-len(x) // inference.inference_batch(model, x.shape[1:]))
    assert len(calls) == batches
    monkeypatch.undo()
    assert result["accuracy"] == evaluate(model, x, y, tta=True)["accuracy"]
    idx, p = top_k(model, x, 1, tta=True)
    assert [w[2:4] for w in wrong] == [(int(idx[j, 0]), float(p[j, 0])) for *_, j in wrong]


def test_a_fine_tuning_runs_summary_counts_what_it_froze(tmp_path):
    """--freeze had been left out of the report's summary: all parameters "trainable",
    and their optimizer state counted, where the run's log said otherwise."""
    from convnet.report.build import build_report
    staged = "INPUT 8x8x1 -> CONV 8 -> RELU -> POOL -> FC 10"
    quiet = dict(log=lambda *a: None, progress=False)
    base = train(TrainConfig(data="digits", model=staged, epochs=1, out=str(tmp_path / "a")),
                 **quiet)
    tuned = train(TrainConfig(data="digits", epochs=1, out=str(tmp_path / "b"),
                              init_from=str(base.model_path), freeze=("0",)), **quiet)
    model = resolve_model(str(tuned.model_path))
    text = build_report(model, source=str(tuned.model_path))
    assert "(trainable 1,290, frozen 80)" in text, text[text.find("trainable"):][:80]
    assert "with the stages its --freeze kept fixed counted as frozen" in text
    assert "80 *</td>" in text and "* frozen: parameters held at their values" in text
    assert not any(layer.frozen for _, layer in model.named_layers())   # put back


def test_a_model_of_vectors_says_it_has_no_activation_maps(tmp_path):
    """FC layers from the input on: the Activations section had promised every stage's
    output volume and shown none, without a word."""
    from PIL import Image

    from convnet.report.build import build_report
    Image.new("L", (8, 8), 90).save(tmp_path / "a.png")
    model = from_notation("INPUT 8x8x1 -> FC 20 -> RELU -> FC 10",
                          rng=np.random.default_rng(0))
    text = build_report(model, images=[str(tmp_path / "a.png")])
    section = text[text.index('id="activations"'):]
    assert "No stage of this model outputs a volume" in section
    assert "then every stage's output volume" not in section
    conv = from_notation(NET, rng=np.random.default_rng(0))
    assert "then every stage's output volume" in build_report(
        conv, images=[str(tmp_path / "a.png")])


def test_hostile_names_reach_the_page_only_escaped(tmp_path):
    """Layer names, class names and image file names are the user's: each reaches the
    page (text, attributes, the architecture's SVG) escaped, never as markup."""
    from PIL import Image

    from convnet.layers import Conv2d, Flatten, Linear, ReLU
    from convnet.models.containers import Sequential
    from convnet.report.build import build_report
    evil = '<img src=x onerror=alert(1)>"\'&'
    model = Sequential({f"{evil}conv": Conv2d(1, 4, 3, padding=1, dtype=np.float32),
                        f"{evil}relu": ReLU(), "flat": Flatten(),
                        f"{evil}fc": Linear(4 * 8 * 8, 2, dtype=np.float32)})
    model.input_shape = (1, 8, 8)
    model.info = {"classes": [f"{evil}cat", "</script><script>alert(2)</script>"]}
    image = tmp_path / f"{evil[:24].replace('/', '_')}.png"
    Image.new("L", (8, 8), 90).save(image)
    text = build_report(model, images=[str(image)])
    for raw in ("<img src=x", "<script>alert", "onerror=alert(1)>"):
        assert raw not in text, raw
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "&lt;/script&gt;&lt;script&gt;alert(2)" in text
    assert text.count("<script>") == 1          # the page's own
