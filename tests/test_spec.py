"""Job specs: one schema, overrides, errors that name the field."""
from __future__ import annotations

from pathlib import Path

import pytest

from fastemb.cli import main
from fastemb.spec import SpecError, TrainJob, load_spec, parse_spec

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def test_shipped_job_spec_is_valid_and_overrides_apply():
    spec = load_spec(JOBS / "contrastive.yaml", ["train.lr=3e-5", "loss.temperature=0.02", "name=x"])
    assert isinstance(spec, TrainJob)
    assert spec.train.lr == 3e-5 and spec.loss.temperature == 0.02 and spec.name == "x"
    assert spec.train.num_workers == 2 and spec.train.zero_stage == 2


@pytest.mark.parametrize("override, field, words", [
    ("loss.temperature=0", "loss.temperature", "greater than 0"),
    ("loss.temperature=-1", "loss.temperature", "greater than 0"),
    ("train.zero_stage=4", "train.zero_stage", "0, 1, 2 or 3"),
    ("train.precision=fp8", "train.precision", "fp32"),
    ("train.foo=1", "train.foo", "allowed keys here"),
    ("model.max_length=0", "model.max_length", "greater than 0"),
    ("train.precision=fp16", "train", "needs a GPU"),
    ("train.cache_mini_batch=64", "train.cache_mini_batch", "larger than the batch it caches"),
    ("loss.matryoshka_dims=[128,64]", "loss.matryoshka_dims", "expected increasing dimensions"),
    ("loss.matryoshka_dims=[0,64]", "loss.matryoshka_dims", "expected increasing dimensions > 0"),
    ("loss.matryoshka_weights=[1,2]", "loss.matryoshka_weights", "one weight per loss.matryoshka_dims entry"),
])
def test_bad_values_name_the_field(override, field, words):
    with pytest.raises(SpecError) as err:
        load_spec(JOBS / "contrastive.yaml", [override])
    assert field in str(err.value) and words in str(err.value)


def test_unknown_job_and_missing_file_and_bad_override():
    with pytest.raises(SpecError, match="unknown job"):
        parse_spec({"job": "nope"})
    with pytest.raises(SpecError, match="not found"):
        load_spec("does/not/exist.yaml")
    with pytest.raises(SpecError, match="key=value"):
        parse_spec({}, ["train.lr"])


def test_cli_reports_spec_errors_without_traceback(capsys):
    rc = main(["train", str(JOBS / "contrastive.yaml"), "loss.temperature=-0.5"])
    err = capsys.readouterr().err
    assert rc == 2 and "loss.temperature" in err and "Traceback" not in err


def test_matryoshka_dims_wider_than_the_model_name_the_field():
    """The model's width is only known from the model: checked before training (fastemb train) and searching."""
    from fastemb.train.tasks import check_matryoshka_width

    check_matryoshka_width(load_spec(JOBS / "contrastive.yaml", ["loss.matryoshka_dims=[64,128,384]"]))
    with pytest.raises(SpecError, match=r"loss\.matryoshka_dims: 512 is larger than the model's width 384"):
        check_matryoshka_width(load_spec(JOBS / "contrastive.yaml", ["loss.matryoshka_dims=[64,512]"]))
    multi = parse_spec({"tasks": [{"name": "a", "data": "wordnet"},
                                  {"name": "b", "data": "wordnet", "loss": {"matryoshka_dims": [64, 400]}}]})
    with pytest.raises(SpecError, match=r"tasks\.1\.loss\.matryoshka_dims: 400"):
        check_matryoshka_width(multi)
