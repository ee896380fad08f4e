"""Hostile input, tried as a careful new user would (issue 10), on every input surface but the
data files (those are in test_hostile_data.py): notebook parameters, study files, run
directories read by ``study status`` and ``medssl report``, checkpoints and weights files, and
command-line flags.

What each case must give: one line naming the file / parameter and what was expected, a
non-zero exit from the command line with no traceback, nothing half-written and nothing
silently changed. Nothing here trains a model; study files are only planned (``--dry-run``).
"""

from __future__ import annotations

import io
import json
import re
import textwrap
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch

from medssl_utils import cli, params, results, training, validate
from medssl_utils import study as st
from medssl_utils.errors import DataError, ParameterError
from medssl_utils.models import build_unet, encoder_state, save_checkpoint
from medssl_utils.training import loop
from run_kit import LINEAGES, finetune_result, params_for, step_history, volume_rows, write_run

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
SMALL = (16, 8, 8, 8, 8)


def one_line_error(capsys, *argv: str) -> str:
    """Run the CLI; it must exit 2 with exactly one ``medssl: error:`` line and no traceback."""
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and lines[0].startswith("medssl: error: ") and "Traceback" not in captured.err, lines
    return lines[0].removeprefix("medssl: error: ")


def offline(encoder):
    return False, f"init 'timm': no cached weights for {encoder} (test)"


# =============================================================================== notebook parameters
@pytest.mark.parametrize("name", params.NOTEBOOKS)
def test_parameters_cells_agree_with_the_declaration(name):
    """Every notebook's parameters cell lists exactly the declared parameters, its defaults pass
    the checks, and the cell after it checks them with params.check_notebook."""
    assert params.cell_disagreements(NOTEBOOKS / f"{name}.ipynb") == []


def _edited_copy(tmp_path: Path, name: str, edit) -> Path:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    i = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    edit(cells[i], cells[i + 1])
    out = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, out)
    return out


def test_a_disagreeing_parameters_cell_is_detected(tmp_path):
    def typo(cell, _):
        cell.source = cell.source.replace("recalibrate_bn: int = 64", "recalibrate_bm: int = 64")

    found = params.cell_disagreements(_edited_copy(tmp_path, "02_finetune", typo))
    assert any("recalibrate_bn is declared but not in the parameters cell" in p for p in found)
    assert any("recalibrate_bm is in the parameters cell but not declared" in p for p in found)

    def other_default(cell, _):  # a valid value, but not the config class's
        cell.source = cell.source.replace("image_size: int = 64", "image_size: int = 128")

    found = params.cell_disagreements(_edited_copy(tmp_path, "02_finetune", other_default))
    assert found == ["02_finetune.ipynb: parameter image_size defaults to 128 in the parameters cell but to 64 in "
                     "FinetuneConfig (one set of defaults: change the class, then the cell)"]

    def list_for_tuple(cell, _):  # [64, 32, ...] in the cell is the class's tuple: the same default
        assert "decoder_channels: list[int] = [64, 32, 16, 16, 16]" in cell.source

    assert params.cell_disagreements(_edited_copy(tmp_path, "02_finetune", list_for_tuple)) == []

    def bad_default(cell, _):
        cell.source = cell.source.replace("knn_every: int = 0", "knn_every: int = -1")

    found = params.cell_disagreements(_edited_copy(tmp_path, "01_pretrain", bad_default))
    assert found[0] == ("01_pretrain.ipynb: the parameters cell's defaults fail the checks: knn_every=-1: "
                        "expected a whole number >= 0") and "knn_every defaults to -1" in found[1]

    def hand_made_check(_, check):
        check.source = "cfg = training.FinetuneConfig(dataset=dataset, run_dir=run_dir)"

    found = params.cell_disagreements(_edited_copy(tmp_path, "02_finetune", hand_made_check))
    assert found and "does not call" in found[0]


def test_a_parameters_line_papermill_cannot_read_is_detected(tmp_path):
    """papermill skips a line holding a second '=' (in a string or a comment) and then calls the
    parameter unknown; a missing or wrong annotation leaves --help-notebook without its type."""
    def equals_in_string(cell, _):
        cell.source = cell.source.replace("cases\\x3d32", "cases=32")

    found = params.cell_disagreements(_edited_copy(tmp_path, "02_finetune", equals_in_string))
    assert found[0].startswith("02_finetune.ipynb: papermill warns: Unable to parse line 3 'dataset: str ")
    assert "02_finetune.ipynb: papermill does not see parameter dataset in the parameters cell" in found

    def equals_in_comment(cell, _):
        cell.source = cell.source.replace("eval_every: int = 50", "eval_every: int = 50  # e.g. eval_every=25")

    found = params.cell_disagreements(_edited_copy(tmp_path, "02_finetune", equals_in_comment))
    assert "02_finetune.ipynb: papermill does not see parameter eval_every in the parameters cell" in found

    def no_annotation(cell, _):
        cell.source = cell.source.replace("eval_every: int = 50", "eval_every = 50")

    found = params.cell_disagreements(_edited_copy(tmp_path, "02_finetune", no_annotation))
    assert found == ["02_finetune.ipynb: parameter eval_every is annotated None in the parameters cell; expected "
                     "int (its declared type int in the form papermill reads)"]

    def union_unquoted(cell, _):
        cell.source = cell.source.replace("lr: Optional[float] = None", "lr: float | None = None")

    found = params.cell_disagreements(_edited_copy(tmp_path, "02_finetune", union_unquoted))
    assert found and "parameter lr is annotated float | None" in found[0]


def test_papermill_annotations_of_the_declared_types():
    a = params.papermill_annotation
    assert [a("int"), a("list[str]"), a("dict"), a("tuple[int, ...]"), a("str | os.PathLike")] == [
        "int", "list[str]", "dict", "list[int]", "str"]
    assert [a("float | None"), a("bool | str"), a("str | os.PathLike | None"), a("str | list[str]")] == [
        "Optional[float]", "Union[bool, str]", "Optional[str]", "Union[str, list[str]]"]


@pytest.mark.parametrize("name", params.NOTEBOOKS)
def test_every_declared_type_can_be_checked_and_described(name):
    for p in params.declared(name).values():
        assert validate.describe_type(p.type)  # raises TypeError for an annotation the checks cannot read


def _run_validation_cell(name: str, **injected):
    """The notebook's own parameters cell, papermill's injected values, then its validation cell."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    i = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
    scope = {"params": params}
    exec(cells[i].source, scope)  # noqa: S102 - the project's own notebook
    scope.update(injected)
    exec(cells[i + 1].source, scope)  # noqa: S102
    return scope


def test_notebooks_forward_every_config_parameter():
    """A config field the old parameters cells lacked (num_workers, recalibrate_bn, devices, knn_every)
    was injected by papermill and silently ignored; now it reaches the run's config."""
    cfg = _run_validation_cell("02_finetune", num_workers=3, recalibrate_bn=0, devices=2, warmup_steps=7)["cfg"]
    assert (cfg.num_workers, cfg.recalibrate_bn, cfg.devices, cfg.warmup_steps) == (3, 0, 2, 7)
    cfg = _run_validation_cell("01_pretrain", knn_every=0, weight_decay=0.5, balanced=False)["cfg"]
    assert (cfg.knn_every, cfg.weight_decay, cfg.balanced) == (0, 0.5, False)


@pytest.mark.parametrize("name, injected, message", [
    ("02_finetune", {"recalibrate_bn": -1}, "recalibrate_bn=-1: expected a whole number >= 0"),
    ("02_finetune", {"overwrite": "no"}, "overwrite='no': expected True or False"),
    ("02_finetune", {"save_predictions": "false"}, "save_predictions='false': expected True or False"),
    ("02_finetune", {"augment": {"flip_p": 0.5}}, "augment.flip_p: not an option of SegAugment; did you mean"),
    ("01_pretrain", {"method_options": {"hiden_dim": 64}}, "method_options.hiden_dim: not an option of byol"),
    ("01_pretrain", {"balanced": "yes"}, "balanced='yes': expected True or False"),
    ("00_explore_data", {"n_views": 0}, "n_views=0: expected a whole number in 1..16"),
    ("00_explore_data", {"gallery": "mni"}, "gallery='mni': expected a list of strings"),
    ("03_analysis", {"target": 1.5}, "target=1.5: expected a fraction in (0, 1]"),
    ("03_analysis", {"results_dir": []}, "results_dir=[]: expected a folder or a non-empty list"),
    ("03_analysis", {"reference": 3}, "reference=3: expected a string or None"),
])
def test_validation_cells_refuse_bad_values(name, injected, message):
    with pytest.raises(ParameterError, match="^" + re.escape(message)):
        _run_validation_cell(name, **injected)


FT = dict(labelled_slices=3, encoder="test_resnet")


@pytest.mark.parametrize("kw, message", [
    # values that were accepted before and then meant something else, or failed deep inside the run
    (dict(labelled_slices=None, labelled_fraction=True), "labelled_fraction=True: expected a number or None"),
    (dict(progress="yes"), r"progress='yes' is not allowed; expected one of \[True, False, 'auto'\]"),
    (dict(decoder_channels=[64, "a"]), r"decoder_channels=\[64, 'a'\]: expected a list of whole numbers"),
    (dict(decoder_channels=[64, 32, 16, 8, 4, 2]), "decoder_channels=.*expected 1 to 5 positive integers"),
    (dict(encoder="resnet181"), "encoder='resnet181' is not a timm model name; did you mean 'resnet18'"),
    (dict(encoder=5), "encoder=5: expected a string"),
    (dict(lr="1e-4"), r"lr='1e-4': expected a number or None \(this is the text '1e-4': YAML reads .* write 1.0e-4\)"),
    (dict(eval_every="10"), r"eval_every='10': expected a whole number \(this is the text '10', not a number"),
    (dict(split="papre"), "split='papre' is not allowed; .*did you mean 'paper'"),
    (dict(loss="DICE_CE"), "loss='DICE_CE' is not allowed; .*did you mean 'dice_ce'"),
    (dict(augment={"output_size": 96}), r"augment.output_size: not settable here: image_size \(64\) sets it"),
    (dict(augment={"rotation": "a lot"}), r"augment.rotation='a lot': expected a number"),
    (dict(augment={"rotation": 400}), r"augment.rotation=400"),
    (dict(augment=["flip"]), r"augment=\['flip'\]: expected a mapping"),
    (dict(init=5), "init=5: expected a string or a path"),
])
def test_finetune_config_refuses_wrong_types_and_values(tmp_path, kw, message):
    with pytest.raises(ParameterError, match=message):
        training.FinetuneConfig(**{**FT, "run_dir": str(tmp_path / "r"), **kw})
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("kw, message", [
    (dict(method_options={"hiden_dim": 8}), "method_options.hiden_dim: not an option of byol's constructor; "
                                            "did you mean hidden_dim"),
    (dict(method="simclr", method_options={"base_momentum": 0.9}),
     "method_options.base_momentum: not an option of simclr's constructor; expected one of gather_distributed"),
    (dict(method="hssl", method_options={"num_tasks": 3}), "method_options.num_tasks: not an option of hssl"),
    (dict(method_options={"hidden_dim": "big"}), "method_options.hidden_dim='big': expected a whole number"),
    (dict(augment={"blur": 0.5}), "augment.blur: not an option of SSLAugment; did you mean blur_p"),
    (dict(augment={"scale": [0.5, 2.0]}), r"augment.scale\[1\]=2.0 is out of range; expected a number in \(0, 1\]"),
    (dict(method="BYOL"), "method='BYOL' is not allowed; .*did you mean 'byol'"),
    (dict(knn_max_bank=0), "knn_max_bank=0: expected a whole number >= 1"),
    (dict(save_epochs=["1"]), r"save_epochs=\['1'\]: expected a list of whole numbers"),
    (dict(datasets="natural"), "datasets='natural': expected a list of strings"),
])
def test_pretrain_config_refuses_wrong_types_and_values(tmp_path, kw, message):
    with pytest.raises(ParameterError, match=message):
        training.PretrainConfig(**{"encoder": "test_resnet", "run_dir": str(tmp_path / "r"), **kw})


def test_unknown_augment_and_method_options_fail_before_the_run_with_nothing_written(tmp_path):
    """Issue 10: unknown keys inside augment / method_options failed late with a bare TypeError naming
    neither, and left no result.json. Now the run stops before anything is made, naming the key."""
    with pytest.raises(ParameterError, match=r"^augment.flip_p: not an option of SegAugment; did you mean"):
        training.finetune(dataset="natural", labelled_slices=3, augment={"flip_p": 0.5}, run_dir=str(tmp_path / "f"),
                          encoder="test_resnet", image_size=32, decoder_channels=SMALL)
    with pytest.raises(ParameterError, match=r"^method_options.hiden_dim: not an option of byol's constructor"):
        training.pretrain(datasets=["natural"], method_options={"hiden_dim": 8}, run_dir=str(tmp_path / "p"),
                          encoder="test_resnet", image_size=32, decoder_channels=SMALL)
    assert not (tmp_path / "f").exists() and not (tmp_path / "p").exists()


# =============================================================================== study files
STUDY = """\
results_dir: res
defaults: {{encoder: test_resnet, image_size: 32}}
pretrain:
  stages:
    byol: {{method: byol, datasets: [natural]{stage}}}
finetune:
  dataset: natural
  params: {{max_steps: 10{params}}}
  labelled_slices: [4]
  seeds: 1
  strategies:
    random: random
    byol: {{init: "stage:byol"{strategy}}}
"""


def make_study(tmp_path: Path, stage: str = "", params_: str = "", strategy: str = "", text: str | None = None,
               name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text if text is not None else STUDY.format(stage=stage, params=params_, strategy=strategy))
    return path


def dry_run(path: Path):
    out = io.StringIO()
    summary = st.run_study(path, dry_run=True, check_timm=offline, out=out)
    return summary, out.getvalue()


def test_the_base_study_plans(tmp_path):
    summary, _ = dry_run(make_study(tmp_path))
    assert summary.counts["would run"] == 3


@pytest.mark.parametrize("where, text, key, message", [
    # issue 10: a misspelt parameter ran with the default
    ("params_", ", eval_evry: 1", "finetune.params.eval_evry",
     "not a parameter of 02_finetune.ipynb; did you mean eval_every"),
    ("stage", ", epoch: 3", "pretrain.stages.byol.epoch", "not a parameter of 01_pretrain.ipynb; did you mean epochs"),
    ("strategy", ", lr_rate: 0.1", "finetune.strategies.byol.lr_rate", "not a parameter of 02_finetune.ipynb"),
    # the wrong type or value, each at the key that set it
    ("params_", ", batch_size: '8'", "finetune.params.batch_size", "batch_size='8': expected a whole number"),
    ("params_", ", lr: 1e-4", "finetune.params.lr", r"lr='1e-4': .*write 1.0e-4"),
    ("strategy", ", lr: -1", "finetune.strategies.byol.lr", "lr=-1: expected a positive finite number"),
    ("params_", ", lr: .inf", "finetune.params.lr", "lr=inf: expected a positive finite number"),
    ("params_", ", overwrite: 'no'", "finetune.params.overwrite", "overwrite='no': expected True or False"),
    ("stage", ", save_epochs: [9], epochs: 3", "pretrain.stages.byol.save_epochs",
     r"save_epochs\[...\]=9: expected a whole number in 1..3"),
    ("stage", ", optimizer: adam_w", "pretrain.stages.byol.optimizer",
     "optimizer='adam_w' is not allowed; .*did you mean 'adamw'"),
    # issue 10: unknown keys inside augment / method_options, now before any run starts
    ("stage", ", augment: {flip_p: 0.5}", "pretrain.stages.byol.augment.flip_p",
     "not an option of SSLAugment; did you mean vflip_p or hflip_p"),
    ("stage", ", method_options: {hiden_dim: 8}", "pretrain.stages.byol.method_options.hiden_dim",
     "not an option of byol's constructor; did you mean hidden_dim"),
    ("params_", ", augment: {rotation: 500}", "finetune.params.augment", "augment.rotation=500"),
    ("params_", ", load_decoder: yes", "finetune.params.load_decoder",  # the random arm has no checkpoint
     "load_decoder=True needs init to be a medssl checkpoint"),
])
def test_study_parameters_are_checked_at_dry_run(tmp_path, capsys, where, text, key, message):
    path = make_study(tmp_path, **{where: text})
    with pytest.raises(ParameterError, match=f"^{re.escape(str(path))}: {re.escape(key)}: "
                                             f"{message}"):
        dry_run(path)
    line = one_line_error(capsys, "study", "run", path, "--dry-run")
    assert line.startswith(f"{path}: {key}: ")
    one_line_error(capsys, "study", "run", path)  # a real run stops before starting anything
    assert not (tmp_path / "res").exists()


def test_a_defaults_key_of_one_notebook_only_is_refused(tmp_path):
    text = STUDY.format(stage="", params="", strategy="").replace("image_size: 32}", "image_size: 32, eval_every: 5}")
    with pytest.raises(ParameterError, match=r"defaults.eval_every: not a parameter of 01_pretrain.ipynb \(it is one "
                                             r"of 02_finetune.ipynb's: set it in finetune.params\)"):
        dry_run(make_study(tmp_path, text=text))


def test_unknown_task_parameter_is_named_by_its_task(tmp_path):
    text = textwrap.dedent("""\
        results_dir: res
        finetune:
          labelled_fraction: [1.0]
          seeds: 1
          strategies: {scratch: random}
          tasks:
            cardiac: {dataset: natural, params: {max_step: 5}}
        """)
    with pytest.raises(ParameterError, match="finetune.tasks.cardiac.params.max_step: not a parameter of "
                                             "02_finetune.ipynb; did you mean max_steps"):
        dry_run(make_study(tmp_path, text=text))


def test_a_custom_notebooks_own_parameters_are_allowed_and_typos_still_caught(tmp_path):
    custom = _edited_copy(tmp_path, "02_finetune", lambda cell, _: setattr(cell, "source", cell.source + "\nnote = ''"))
    text = STUDY.format(stage="", params=", note: hello", strategy="") + f"notebooks: {{finetune: {custom}}}\n"
    dry_run(make_study(tmp_path, text=text))
    with pytest.raises(ParameterError, match="finetune.params.nte: not a parameter of 02_finetune.ipynb; did you "
                                             "mean note"):
        dry_run(make_study(tmp_path, text=text.replace("note: hello", "nte: hello")))


def test_a_notebook_that_is_not_a_notebook_is_one_line(tmp_path, capsys):
    bad = tmp_path / "nb.ipynb"
    bad.write_text("{not json")
    text = STUDY.format(stage="", params="", strategy="") + f"notebooks: {{finetune: {bad}}}\n"
    path = make_study(tmp_path, text=text)
    assert one_line_error(capsys, "study", "run", path, "--dry-run").startswith(f"notebook {bad}: cannot be read as a "
                                                                                 "Jupyter notebook")


@pytest.mark.parametrize("text, line, key", [
    # issue 10: duplicate strategy or stage names silently replaced each other
    (STUDY.format(stage="", params="", strategy="").replace("    random: random\n",
                                                            "    random: random\n    random: timm\n"), 13, "random"),
    (STUDY.format(stage="", params="", strategy="").replace(
        "    byol: {method: byol, datasets: [natural]}\n",
        "    byol: {method: byol, datasets: [natural]}\n    byol: {method: simclr, datasets: [natural]}\n"), 6, "byol"),
    (STUDY.format(stage="", params="", strategy="") + "results_dir: other\n", 14, "results_dir"),
    (STUDY.format(stage="", params=", max_steps: 20", strategy=""), 8, "max_steps"),
])
def test_duplicate_keys_are_refused_with_file_and_line(tmp_path, capsys, text, line, key):
    path = make_study(tmp_path, text=text)
    message = one_line_error(capsys, "study", "run", path, "--dry-run")
    assert message.startswith(f"{path}:{line}: key {key!r} appears twice in one mapping (first on line ")
    assert one_line_error(capsys, "study", "status", path) == message


def test_merge_keys_still_work_and_may_be_overridden(tmp_path):
    text = textwrap.dedent("""\
        results_dir: res
        x-common: &common {max_steps: 10, eval_every: 5, batch_size: 4}
        finetune:
          dataset: natural
          params:
            <<: *common
            eval_every: 2
          labelled_slices: [4]
          seeds: 1
          strategies: {random: random}
        """)
    with pytest.raises(ParameterError, match="x-common: unknown key"):  # anchors live inside known keys
        st.load_study(make_study(tmp_path, text=text))
    text = text.replace("x-common: &common {max_steps: 10, eval_every: 5, batch_size: 4}\n", "").replace(
        "  params:\n    <<: *common\n",
        "  params:\n    <<: &common {max_steps: 10, eval_every: 5, batch_size: 4}\n")
    study = st.load_study(make_study(tmp_path, text=text))
    assert {k: study.runs[0].params[k] for k in ("max_steps", "eval_every", "batch_size")} == \
        {"max_steps": 10, "eval_every": 2, "batch_size": 4}


def test_shipped_studies_pass_the_parameter_checks():
    for path in sorted((Path(__file__).resolve().parents[2] / "studies").glob("*.yaml")):
        st.check_parameters(st.load_study(path))


@pytest.mark.parametrize("content, message", [
    # issue 10: a study file that is not UTF-8 gave a traceback
    ("name: caf\u00e9\n".encode("latin-1"),
     r":1: not UTF-8 text \(byte 0xe9 at offset 9\); save the study file as UTF-8"),
    ("name: x\n".encode("utf-16"), r":1: not UTF-8 text \(byte 0xff at offset 0\)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", r":1: not UTF-8 text"),
    (b"", ": expected a mapping, got None"),
    (b"- a\n- b\n", r": expected a mapping, got \['a', 'b'\]"),
    (b"name: a\n---\nname: b\n", ":2: not valid YAML: expected a single document"),
    (b"name: a\n\tresults_dir: b\n", ":2: not valid YAML: found character '\\\\t'"),
    (b"finetune: {dataset: natural\n", ":2: not valid YAML"),
])
def test_unreadable_study_files_are_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "s.yaml"
    path.write_bytes(content)
    for command in ("run", "status"):
        line = one_line_error(capsys, "study", command, path)
        assert re.match(re.escape(str(path)) + message, line), line


def test_study_path_mistakes_are_one_line(tmp_path, capsys):
    assert one_line_error(capsys, "study", "run", tmp_path) == (f"study file {tmp_path} is a folder; expected a YAML "
                                                                "file such as studies/quick.yaml")
    assert one_line_error(capsys, "study", "run", tmp_path / "none.yaml").endswith("does not exist")


def test_results_dir_that_is_a_file_is_one_line_and_untouched(tmp_path, capsys):
    path = make_study(tmp_path)
    (tmp_path / "res").write_text("my notes")
    line = one_line_error(capsys, "study", "run", path)
    assert line == f"study {path}: results_dir: {tmp_path / 'res'} is a file; expected a folder for the study's runs"
    _, plan = dry_run(path)
    assert f"warning: results_dir: {tmp_path / 'res'} is a file" in plan
    one_line_error(capsys, "study", "run", path, "--results-dir", tmp_path / "res")
    assert (tmp_path / "res").read_text() == "my notes"


# =============================================================================== run directories: status
def _write_result(run: st.Run, text: str | bytes) -> Path:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    path = run.run_dir / "result.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("content, why", [
    # issue 10: a truncated result.json showed as "pending"
    ('{"status": "complete", "kind": "fine', "not valid JSON"),
    (b"", "empty"),
    (b'{"status": "compl\xe9te"}', "not UTF-8 text (byte 0xe9 at offset 17)"),
    ('["complete"]', "holds a JSON list, expected an object"),
    ('{"status": "done"}', "status 'done'; expected one of complete, failed, skipped, running"),
    ('{"kind": "finetune"}', "status None"),
])
def test_status_reports_an_unreadable_result_json_with_its_file(tmp_path, capsys, content, why):
    path = make_study(tmp_path)
    run = st.load_study(path).run("finetune/random/n4/seed0")
    result = _write_result(run, content)
    state, error = st.read_state(run)
    assert state == "unreadable" and error.startswith(f"{result}: unreadable (") and why in error
    assert cli.main(["study", "status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 unreadable" in out and f"unreadable finetune/random/n4/seed0: {result}: unreadable" in out
    _, plan = dry_run(path)  # the plan says the file is replaced before anything replaces it
    assert f"warning: {result}: unreadable (" in plan and "finetune/random/n4/seed0 is executed again and replaces it" \
        in plan
    assert result.read_bytes() == (content if isinstance(content, bytes) else content.encode())


def test_a_notebook_run_dir_with_an_unreadable_result_is_not_silently_rerun(tmp_path):
    cfg = training.FinetuneConfig(labelled_slices=3, encoder="test_resnet", run_dir=str(tmp_path / "r"))
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "result.json").write_text('{"status": "comp')
    with pytest.raises(DataError, match=r"r/result.json: unreadable \(the file is not valid JSON \(JSONDecodeError: .*delete the file, or set "
                                        r"overwrite=True"):
        loop.prepare_run(cfg, "finetune")
    assert (tmp_path / "r" / "result.json").read_text() == '{"status": "comp'
    cfg.overwrite = True
    assert loop.prepare_run(cfg, "finetune")[1] is None and not (tmp_path / "r" / "result.json").exists()


def test_resume_state_that_is_not_one_is_one_line(tmp_path):
    module = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    for bad, why in (({"step": 3}, "KeyError"), ([1, 2], "TypeError"),
                     ({"step": 1, "model": {"w": torch.ones(1)}, "optimizer": {}}, "RuntimeError")):
        torch.save(bad, tmp_path / "last.pt")
        with pytest.raises(DataError, match=f"last.pt: the resume state does not fit this run \\({why}: .*delete it"):
            loop.load_state(tmp_path / "last.pt", module, opt)


# =============================================================================== run directories: the report
def _good_run(root: Path, seed: int, **kw) -> Path:
    return write_run(root / "finetune" / "random" / "n3" / f"seed{seed}",
                     params=params_for("phantom:cardiac", seed, slices=3),
                     result=finetune_result(strategy_lineage=LINEAGES["random"], dataset="phantom:cardiac", seed=seed,
                                            test_dice=0.7, val_final=0.7, slices=3),
                     history=step_history(30, 0.7), test=volume_rows(0.7), **kw)


def test_non_numeric_history_values_are_listed_not_silently_nan(tmp_path):
    """Issue 10: non-numeric values in history.csv became NaN in the report with no problem listed."""
    run = _good_run(tmp_path, 0)
    hist = pd.read_csv(run / "history.csv")
    hist["val_dice"] = hist["val_dice"].astype(object)
    hist.loc[2, "val_dice"] = "0.7O"  # a letter O
    hist["loss"] = hist["loss"].astype(object)
    hist.loc[4, "loss"] = "abc"
    hist.to_csv(run / "history.csv", index=False)
    res = results.gather(tmp_path)
    assert list(res.problems["problem"]) == [
        "history.csv: 2 values that are not a number, read as NaN (columns loss, val_dice; first on line 4: "
        "val_dice='0.7O')"]
    assert res.history["val_dice"].isna().sum() > 0 and res.history["loss"].dtype.kind == "f"


def test_other_non_numbers_and_damaged_files_of_a_run_are_listed(tmp_path):
    run = _good_run(tmp_path, 0)
    test = pd.read_csv(run / "test_metrics.csv")
    test["dice"] = test["dice"].astype(object)
    test.loc[0, "dice"] = "high"
    test.to_csv(run / "test_metrics.csv", index=False)
    result = json.loads((run / "result.json").read_text())
    result["test"]["mean_dice"] = "high"
    result["steps"] = [100]
    (run / "result.json").write_text(json.dumps(result))
    (run / "study.json").write_text('{"strategy": "ran')
    problems = list(results.gather(tmp_path).problems["problem"])
    assert problems == [
        "study.json is not valid JSON (JSONDecodeError: Unterminated string starting at: line 1 column 14 (char 13)) "
        "(strategy, budget and seed taken from the folder layout)",
        "result.json: steps is [100], not a number (read as NaN)",
        "result.json: test.mean_dice is 'high', not a number (read as NaN)",
        "test_metrics.csv: 1 value that is not a number, read as NaN (column dice; first on line 2: dice='high')"]


def test_report_prints_every_problem_counted_and_exits_1(tmp_path, capsys, monkeypatch):
    """Issue 10: `medssl report` mentioned problems only inside report.html."""
    monkeypatch.setattr("medssl_utils.report.page.figure_png", lambda fig, **kw: b"\x89PNG stub")
    for seed in (0, 1):
        _good_run(tmp_path / "r", seed)
    assert cli.main(["report", str(tmp_path / "r")]) == 0
    assert "problem" not in capsys.readouterr().out
    truncated = tmp_path / "r" / "finetune" / "random" / "n3" / "seed1" / "result.json"
    truncated.write_text(truncated.read_text()[:40])
    hist = tmp_path / "r" / "finetune" / "random" / "n3" / "seed0" / "history.csv"
    hist.write_text(hist.read_text().replace("0.1,", "O.1,", 1))
    assert cli.main(["report", str(tmp_path / "r")]) == 1
    out = capsys.readouterr().out
    lines = out[out.index("2 problems in 2 runs"):].splitlines()
    assert lines[0] == "2 problems in 2 runs (also listed in report.html):"
    assert lines[1].startswith(f"  {hist.parent}: history.csv: 1 value that is not a number, read as NaN")
    assert lines[2].startswith(f"  {truncated.parent}: result.json is not valid JSON (JSONDecodeError")
    assert (tmp_path / "r" / "report" / "report.html").is_file()


def test_report_output_folder_that_is_a_file_is_one_line(tmp_path, capsys):
    _good_run(tmp_path / "r", 0)
    (tmp_path / "out").write_text("keep")
    assert one_line_error(capsys, "report", tmp_path / "r", "--out", tmp_path / "out") == \
        f"{tmp_path / 'out'}: is a file; expected a folder for the report (out_dir / --out)"
    assert (tmp_path / "out").read_text() == "keep"


# =============================================================================== checkpoints and weights files
@pytest.fixture(scope="module")
def unet():
    return build_unet("resnet18", decoder_channels=SMALL)


def _medssl_ckpt(path: Path, unet, **kw) -> Path:
    return save_checkpoint(path, encoder_state=encoder_state(unet), encoder_name="resnet18", in_channels=1,
                           lineage_stage={"method": "byol"}, **kw)


def test_a_folder_as_weights_file_is_refused_when_the_run_is_made(tmp_path):
    (tmp_path / "weights").mkdir()
    for init in (f"file:{tmp_path / 'weights'}", str(tmp_path / "weights")):
        with pytest.raises(DataError, match=f"{tmp_path / 'weights'} is a folder, not a weights file"):
            training.FinetuneConfig(labelled_slices=3, init=init, encoder="test_resnet", run_dir=str(tmp_path / "r"))
    text = STUDY.format(stage="", params="", strategy="").replace("    random: random\n",
                                                                  f"    random: file:{tmp_path / 'weights'}\n")
    _, plan = dry_run(make_study(tmp_path, text=text))
    assert "is a folder, not a weights file (give the file in it" in plan


@pytest.mark.parametrize("content, message", [
    (lambda p, u: torch.save([1, 2, 3], p), "holds a list, not a state dict"),
    (lambda p, u: torch.save(torch.ones(3), p), "holds a Tensor, not a state dict"),
    (lambda p, u: torch.save("weights", p), "holds a str, not a state dict"),
    (lambda p, u: torch.save({"epoch": 3, "lr": 0.1}, p), "holds no tensors"),
    (lambda p, u: p.write_bytes(b""), "cannot read weights file .*w.pt: .*(truncated|corrupted)"),
    (lambda p, u: p.write_bytes(_medssl_ckpt(p.parent / "whole.pt", u).read_bytes()[:5000]),
     "cannot read weights file .*w.pt: .*(truncated|corrupted)"),
])
def test_weights_files_that_are_not_weights_are_one_line(tmp_path, unet, content, message):
    path = tmp_path / "w.pt"
    content(path, unet)
    for init in (f"file:{path}", str(path)):
        with pytest.raises(DataError, match=message):
            build_unet("resnet18", init=init, decoder_channels=SMALL)


def test_non_finite_weights_never_start_a_run(tmp_path, unet):
    state = encoder_state(unet)
    broken = {k: (v.clone().fill_(float("nan")) if k.endswith("layer1.0.conv1.weight") else v)
              for k, v in state.items()}
    foreign = tmp_path / "foreign.pth"
    torch.save({k.removeprefix("model."): v for k, v in broken.items()}, foreign)
    with pytest.raises(DataError, match=r"foreign.pth: 1 encoder tensors hold NaN or infinite values \(e.g. "
                                        r"layer1.0.conv1.weight\)"):
        build_unet("resnet18", init=f"file:{foreign}", decoder_channels=SMALL)
    ckpt = save_checkpoint(tmp_path / "m.pt", encoder_state=state, encoder_name="resnet18", in_channels=1,
                           decoder_state={k: v.clone().fill_(float("inf")) if v.is_floating_point() else v
                                          for k, v in unet.decoder.state_dict().items()},
                           lineage_stage={"method": "hssl"})
    with pytest.raises(DataError, match="m.pt: .* decoder tensors hold NaN or infinite values"):
        build_unet("resnet18", init=str(ckpt), decoder_channels=SMALL, load_decoder=True)
    build_unet("resnet18", init=str(ckpt), decoder_channels=SMALL)  # the encoder alone is fine


def test_a_medssl_checkpoint_of_another_encoder_is_one_line_through_file(tmp_path, unet):
    ckpt = _medssl_ckpt(tmp_path / "r18.pt", unet)
    with pytest.raises(DataError, match=r"holds a 'resnet18' encoder but the model was built with encoder='resnet34'"):
        build_unet("resnet34", init=f"file:{ckpt}", decoder_channels=SMALL)


# =============================================================================== command-line flags
@pytest.mark.parametrize("argv, message", [
    (["study", "run", "STUDY", "--workers", "0"], "workers=0: expected a whole number >= 1"),
    (["study", "run", "STUDY", "--max-jobs", "4"], "--max-jobs: only with --executor slurm"),
    (["study", "run", "STUDY", "--executor", "slurm", "--workers", "2"], "--workers: only with --executor local"),
    (["report", "MISSING"], "results folder does not exist"),
    (["report", "RUNS", "--target", "1.5"], "target=1.5"),
    (["report", "RUNS", "--target", "nan"], "target=nan"),
    (["data", "phantoms", "OUT", "--cases", "0"], "cases"),
    (["data", "phantoms", "OUT", "--cases", "2000000"], "cases"),
    (["data", "phantoms", "OUT", "--only", "cardiac", "cardiak"], "--only 'cardiak': unknown phantom"),
    (["data", "summary", "MISSING"], "missing: path does not exist"),
])
def test_bad_flags_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.setattr("medssl_utils.report.page.figure_png", lambda fig, **kw: b"\x89PNG stub")
    _good_run(tmp_path / "runs", 0)
    names = {"STUDY": make_study(tmp_path), "MISSING": tmp_path / "missing", "RUNS": tmp_path / "runs",
             "OUT": tmp_path / "out"}
    line = one_line_error(capsys, *[names.get(a, a) for a in argv])
    assert message in line
    assert not (tmp_path / "out").exists() and not (tmp_path / "res").exists()
    assert not (tmp_path / "runs" / "report").exists()
