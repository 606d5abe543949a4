"""Property-based tests: random recipes, options and tensors give a result or one of our errors."""

from __future__ import annotations

import contextlib
import math
import re

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from torch import nn

from qsgt_plugin import SaliencyGuidedTraining, convert
from qsgt_plugin.recipe import Recipe, RecipeError, load_recipe

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

SECTIONS = list(Recipe.model_fields)
KEYS = sorted(
    {
        key
        for field in Recipe.model_fields.values()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        for key in field.annotation.model_fields
    }
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**6),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["pact", "mnist", "cifar10", "cosine", "auto", "cuda"]),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
sections = st.dictionaries(st.sampled_from([*KEYS, "typo", "lrr"]), values, max_size=5)
documents = st.dictionaries(
    st.sampled_from([*SECTIONS, "trian", "extra"]), st.one_of(sections, values), max_size=5
)


@SETTINGS
@given(documents)
def test_random_recipe_documents_validate_or_raise_recipe_error(tmp_path, document):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(document))
    try:
        recipe = load_recipe(path)
    except RecipeError as exc:
        if not document:  # nothing to train: refused as a whole
            assert "is empty (or only comments)" in str(exc)
            return
        # Every problem is listed on its own line, under a key path the document has.
        head, *problems = str(exc).splitlines()
        assert head == f"invalid recipe {path}:"
        assert problems
        for problem in problems:
            assert problem.startswith("  - ") and ": " in problem, problem
            keys = tuple(k if k.isprintable() else repr(k) for k in document)
            assert problem[4:].startswith(keys), problem  # a key of the document
    else:
        assert isinstance(recipe, Recipe)


@SETTINGS
@given(st.text(max_size=200))
def test_random_text_is_a_recipe_or_a_recipe_error(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with contextlib.suppress(RecipeError):  # anything else fails the test
        load_recipe(path)


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


bits = st.one_of(
    st.integers(-3, 12), st.none(), st.floats(1, 9), st.text(max_size=2), st.booleans()
)


# convert()'s own messages: a bad bit width, an unknown method, a bad override, a failed dry run
CONVERT_ERRORS = (
    r"(bits|weight_bits|act_bits|first_last_bits|overrides\[.*\]\[.*\]) must be an integer 2\.\.8"
    r"|unknown quantization method '.*'; known: pact, pact_lsq"
    r"|overrides\[.*\] has unknown key '.*'; allowed:"
    r"|override pattern\(s\) \[.*\] match no Conv/Linear/ReLU layer"
    r"|the dry forward pass that finds layer call sites failed"
)


@SETTINGS
@given(
    bits=bits,
    weight_bits=st.one_of(st.none(), bits),
    first_last=st.one_of(st.none(), bits),
    method=st.sampled_from(["pact", "pact_lsq", "lsq", "", "PACT"]),
    overrides=st.one_of(
        st.none(),
        st.dictionaries(
            st.sampled_from(["0", "2", "5", "*", "layer9", "[0-9]"]),
            st.one_of(
                st.none(),
                st.dictionaries(
                    st.sampled_from(["weight_bits", "act_bits", "x"]), bits, max_size=2
                ),
            ),
            max_size=2,
        ),
    ),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 9), st.integers(1, 9)),
)
def test_convert_gives_a_model_or_a_value_error(
    bits, weight_bits, first_last, method, overrides, shape
):
    try:
        qmodel = convert(
            tiny_cnn(),
            bits=bits,
            weight_bits=weight_bits,
            first_last_bits=first_last,
            method=method,
            overrides=overrides,
            example_inputs=torch.randn(shape),
        )
    except ValueError as exc:
        assert re.match(CONVERT_ERRORS, str(exc)), str(exc)
    else:
        with torch.no_grad():
            assert qmodel(torch.randn(2, 3, 6, 6)).shape == (2, 3)


# SGT's own messages: the batch, its dtype, the labels
SGT_ERRORS = (
    r"SGT needs a non-empty batch of images \(N, C, H, W\)"
    r"|images must be torch\.float32, got"
    r"|labels must be (integers shaped|class indices in 0\.\.2, got)"
)


@SETTINGS
@given(
    n=st.integers(0, 4),
    hw=st.tuples(st.integers(1, 8), st.integers(1, 8)),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.int64, torch.float16]),
    nan=st.booleans(),
    labels=st.sampled_from(["ok", "negative", "too_big", "float", "short"]),
    fill=st.sampled_from(["uniform", "mean", "constant"]),
    fraction=st.floats(0, 1),
    fused=st.booleans(),
)
def test_sgt_loss_gives_a_loss_or_one_of_our_errors(
    n, hw, dtype, nan, labels, fill, fraction, fused
):
    torch.manual_seed(0)
    model = tiny_cnn().train()
    x = (torch.randn(n, 3, *hw) * 3).to(dtype)
    if nan and n and x.is_floating_point():
        x[0, 0, 0, 0] = math.nan
    y = {
        "ok": torch.randint(0, 3, (n,)),
        "negative": torch.full((n,), -1),
        "too_big": torch.full((n,), 7),
        "float": torch.zeros(n),
        "short": torch.zeros(max(n - 1, 0), dtype=torch.long),
    }[labels]
    sgt = SaliencyGuidedTraining(model, mask_fraction=fraction, fill=fill, fused=fused)
    try:
        loss = sgt.loss(x, y, nn.CrossEntropyLoss())
    except (ValueError, TypeError) as exc:
        if not re.match(SGT_ERRORS, str(exc)):
            # not ours: then the model's own training forward refuses the batch the same way
            with pytest.raises(type(exc), match=re.escape(str(exc))):
                model(x)
        return
    assert loss.dim() == 0
    if not nan:
        assert torch.isfinite(loss)
    loss.backward()


@pytest.mark.parametrize("bad", [torch.randn(3, 28, 28), [1, 2, 3], torch.randn(0, 3, 4, 4)])
def test_sgt_names_the_expected_batch_shape(bad):
    sgt = SaliencyGuidedTraining(tiny_cnn())
    with pytest.raises(ValueError, match=r"non-empty batch of images \(N, C, H, W\)"):
        sgt.loss(bad, torch.zeros(3, dtype=torch.long), nn.CrossEntropyLoss())
