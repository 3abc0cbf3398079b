"""Bad input to the parsers, at random: study specs, recipes, ``--set`` overrides, step-policy strings.

hypothesis mutates valid inputs (the committed converged spec, a tiny spec, the recipe schema) into
malformed ones: a key dropped, a value of the wrong type (huge or NaN numbers, None, lists, nested
mappings, empty or unicode strings, strings with ``:`` ``,`` ``=`` ``/`` or a line break), unknown
keys, bad policy strings, repeated arms, a baseline or peer that is no arm, grids of mixed values, a
top level that is no mapping, broken YAML, binary garbage. Every input parses, or is refused with a
:class:`~tscnet.errors.UserError` of one non-empty line; any other exception is a parser bug.
Through the CLI: exit status 0 or 2, stderr at most one line (``tscnet CMD: error: ...``), no
traceback, and neither a dry run nor a refused ``tscnet train`` writes anything.

The examples are derandomized and no database is kept: every machine runs the same inputs. Inputs
that broke a parser once are kept as ``@example``\\ s (see the fixes in the git log).
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from tscnet.cli import build_parser, main
from tscnet.commands import train as train_command
from tscnet.errors import UserError
from tscnet.stepping import parse_policy, policy_names
from tscnet.study import load_spec, plan_cells
from tscnet.study.results import check_configs
from tscnet.study.spec import REPORT_KEYS, STUDY_DIR, TOP_KEYS
from tscnet.train.config import DEFAULTS, load_config, set_value, validate_config

LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # where str.splitlines() splits


def fuzz(examples: int):
    """hypothesis settings: ``examples`` inputs, the same on every run (no database, no deadline)."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


REFUSED = object()


def parses_or_refused(call: Callable[[], Any]) -> Any:
    """``call()``, or :data:`REFUSED` when it raised a UserError of one non-empty line; any other exception escapes."""
    try:
        return call()
    except UserError as error:
        message = str(error)
        assert message.strip(), f"{type(error).__name__} with an empty message"
        assert not any(c in message for c in LINE_BREAKS), f"not one line: {message!r}"
        return REFUSED


# ---------------------------------------------------------------------------------------------
# Strategies: awkward scalars and structures, config keys, overrides, policy strings, specs


AWKWARD = list(":,=/. -_'\"{}[]#&*!|>%@`\\\t") + list(LINE_BREAKS) + ["\x00", "é", "Δ", "中", "\U0001f600"]
texts = st.text(st.one_of(st.sampled_from(AWKWARD), st.characters(codec="utf-8")), max_size=10)
WORDS = ["", " ", "none", "tsc", "mlp", "fixed:0.5", "fixed:0", "fixed:-1", "fixed:nan", "depth:0.5", "scalar:0",
         "channel:depth:0.5", "tsc:hidden=64,dt_max=2", "tsc:dt_init=cait", "layerscale", "profile:x",
         "profile-of:tsc", "fixed-of:tsc", "profile-of:", "fixed-of:none", "fixed0.5", "profile-of-tsc",
         "cifar_resnet8", "cifar_resnet20", "tv:resnet18", "optim.lr=0.1", "optim.lr", "model.norm=none",
         "fashion_mnist_grid", "[1,", "{a: b}", "!!python/object:os.system", "1e-3", "0x10", ".inf", ".nan", "~",
         "yes", "2:00:00", "a/b/../c", "/", "..", "x" * 300]
numbers = st.one_of(st.integers(-3, 100), st.sampled_from([2**63, 2**64, -2**64, 10**30, 10**400]),
                    st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts, st.sampled_from(WORDS))
keys = st.one_of(texts, st.sampled_from(WORDS), st.integers(-3, 3), st.none(), st.booleans(), st.floats())
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(keys, inner, max_size=3)), max_leaves=6)

SECTIONS = list(DEFAULTS)
SCHEMA_KEYS = [f"{section}.{key}" for section, names in DEFAULTS.items() for key in names]
KEY_NAMES = [key.split(".")[1] for key in SCHEMA_KEYS]
config_keys = st.one_of(st.sampled_from(SCHEMA_KEYS), st.sampled_from(SECTIONS),
                        st.lists(st.one_of(texts, st.sampled_from(SECTIONS + KEY_NAMES)), max_size=4).map(".".join))


def flow(value: Any) -> str:
    """``value`` as one line of YAML (what a user types after ``=``)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("\n...\n").strip()


OVERRIDE_VALUES = ["", "[1,", "{a: b}", "{model: x}", "!!python/object:os.system", "!!binary AAAA", "&a [*a]",
                   "[[[[[[", "1" * 5000, "9" * 400, "1e999", "-0", "null", "true", ".nan", "'unterminated", "a\nb",
                   "x" * 3000, "- a\n- b", "{a: {b: {c: d}}}", "[1, [2, [3]]]", "2020-01-01", "!!set {a, b}",
                   "? [a]\n: b", "[" * 5000, "{\"a\\nb\": 1}"]
override_values = st.one_of(st.sampled_from(OVERRIDE_VALUES), texts, values.map(flow))
overrides = st.one_of(st.builds("{}={}".format, config_keys, override_values),
                      st.builds("{}{}".format, config_keys, override_values), texts)

POLICY_OPTIONS = ["value", "init", "power", "path", "hidden", "dt_max", "dt_min", "dt_init", "summary", "feedback"]
POLICY_VALUES = ["64", "2", "0", "-1", "nan", "inf", "1e400", "depth:0.5", "cait", "l2_sn", "explicit", "0x1f",
                 "1_000", "9" * 5000, ""]
policy_args = st.lists(st.one_of(st.builds("{}={}".format, st.one_of(st.sampled_from(POLICY_OPTIONS), texts),
                                           st.one_of(st.sampled_from(POLICY_VALUES), texts)),
                                 texts, st.sampled_from(["0.5", "depth:x", " "])), max_size=3).map(",".join)
policy_strings = st.one_of(
    st.builds("{}{}{}".format,
              st.one_of(st.sampled_from(policy_names() + ["profile-of", "fixed-of", "Tsc", ""]), texts),
              st.sampled_from([":", "", "::", ": "]), policy_args),
    texts, st.sampled_from(WORDS))

CONVERGED = yaml.safe_load((STUDY_DIR / "converged.yaml").read_text())
TINY = {"name": "tiny", "recipe": "fashion_mnist_grid", "set": ["data.train_subset=64", "data.test_subset=64"],
        "models": ["cifar_resnet8"], "seeds": [0],
        "policies": ["none", "fixed:0.5", {"name": "fixup", "steps": "none", "set": ["model.init=fixup"]}, "tsc",
                     "profile-of:tsc"],
        "grid": {"optim.lr": [0.05, 0.1]}, "baseline": "none", "peers": ["none", "fixed:0.5"]}
EXECUTOR_KEYS = ["kind", "workers", "threads", "time", "partition", "nodes", "gpus_per_node", "cpus_per_task"]


def _labels(spec: dict) -> list:
    policies = spec.get("policies") if isinstance(spec.get("policies"), list) else []
    return [p.get("name") if isinstance(p, dict) else p for p in policies] or ["none"]


def grids(keys_from=config_keys):
    return st.one_of(st.dictionaries(keys_from, st.one_of(st.lists(values, max_size=3), values), max_size=3), values)


arm_mappings = st.builds(lambda fixed, extra: {**fixed, **extra},
                         st.fixed_dictionaries({}, optional={
                             "name": st.one_of(texts, st.sampled_from(WORDS)),
                             "steps": st.one_of(policy_strings, values),
                             "set": st.one_of(st.lists(overrides, max_size=2), values)}),
                         st.dictionaries(keys, values, max_size=1))


def drop_key(draw, spec):
    del spec[draw(st.sampled_from(sorted(spec, key=repr)))]


def retype_key(draw, spec):
    spec[draw(st.sampled_from(TOP_KEYS))] = draw(values)


def unknown_key(draw, spec):
    near_misses = ["policy", "seed", "Models", "grids", "per-model", "arms"]
    spec[draw(st.one_of(keys, st.sampled_from(near_misses)))] = draw(values)


def mutate_element(draw, spec):
    lists = sorted((k for k, v in spec.items() if isinstance(v, list) and v), key=repr)
    if lists:
        key = draw(st.sampled_from(lists))
        spec[key][draw(st.integers(0, len(spec[key]) - 1))] = draw(st.one_of(values, policy_strings))


def add_arm(draw, spec):
    if isinstance(spec.get("policies"), list):
        arm = draw(st.one_of(policy_strings, arm_mappings, st.sampled_from(spec["policies"] or ["none"])))
        spec["policies"].insert(draw(st.integers(0, len(spec["policies"]))), copy.deepcopy(arm))


def baseline_and_peers(draw, spec):
    names = st.one_of(st.sampled_from(_labels(spec)), texts, st.sampled_from(WORDS))
    if draw(st.booleans()):
        spec["baseline"] = draw(st.one_of(names, values))
    else:
        spec["peers"] = draw(st.one_of(st.lists(names, max_size=3), values))


def new_grid(draw, spec):
    models = spec.get("models") if isinstance(spec.get("models"), list) and spec["models"] else ["cifar_resnet8"]
    grid = draw(grids())
    if draw(st.booleans()):
        spec["grid"] = grid
    else:
        model = draw(st.one_of(st.sampled_from(models), keys))
        entry = draw(st.one_of(st.fixed_dictionaries({}, optional={"seeds": st.one_of(st.lists(numbers, max_size=3),
                                                                                         values),
                                                                    "grid": st.just(grid)}), values))
        spec["per_model"] = {model: entry} if draw(st.booleans()) else draw(values)


def new_set(draw, spec):
    spec["set"] = draw(st.one_of(st.lists(overrides, max_size=3), overrides, values))


def executor_and_report(draw, spec):
    key = draw(st.sampled_from(["executor", "slurm", "report"]))
    spec[key] = draw(st.one_of(st.dictionaries(st.one_of(st.sampled_from(EXECUTOR_KEYS + list(REPORT_KEYS)), keys),
                                               st.one_of(values, st.sampled_from(["local", "slurm"])), max_size=3),
                               values))


MUTATIONS = [drop_key, retype_key, unknown_key, mutate_element, add_arm, baseline_and_peers, new_grid, new_set,
             executor_and_report]


@st.composite
def specs(draw, bases=(CONVERGED, TINY), most: int = 3) -> Any:
    """A valid spec with 1..``most`` mutations; now and then no mapping at all."""
    spec = copy.deepcopy(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, most))):
        if spec:
            draw(st.sampled_from(MUTATIONS))(draw, spec)
    if draw(st.integers(0, 19)) == 0:
        return draw(st.one_of(values, st.just([spec])))
    return spec


YAML_BITS = ["\t", ": ", "- ", "[", "{", "&a ", "*a", "!!python/object ", "%YAML 1.1\n", "---\n", "...\n", "\x00",
             "\\", "'", '"', "? ", "|\n", "@", "\ufeff", "\nseeds: [" + "1" * 5000 + "]\n", "\nkey: [*b]\n"]


@st.composite
def documents(draw, structures) -> bytes:
    """A file's bytes: a structure's YAML, often damaged (cut, spliced, re-encoded), or garbage."""
    text = yaml.safe_dump(draw(structures), sort_keys=False, allow_unicode=draw(st.booleans()))
    how = draw(st.sampled_from(["yaml"] * 6 + ["cut", "splice", "garbage", "text", "deep", "utf-16", "latin-1"]))
    if how == "cut":
        text = text[:draw(st.integers(0, len(text)))]
    elif how == "splice":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.one_of(st.sampled_from(YAML_BITS), texts)) + text[at:]
    elif how == "garbage":
        return draw(st.binary(max_size=200))
    elif how == "text":
        return draw(texts).encode("utf-8", "surrogatepass")
    elif how == "deep":
        depth = draw(st.sampled_from([50, 3000, 100000]))
        text = draw(st.sampled_from(["[" * depth + "]" * depth, "{a: " * depth + "}" * depth, "- " * depth + "x"]))
    elif how in ("utf-16", "latin-1"):
        return text.encode(how, "replace")
    return text.encode("utf-8", "surrogatepass")


def spec_file(**keys: Any) -> bytes:
    """A YAML spec: a tiny valid one with ``keys`` replaced (``None`` drops a key)."""
    spec = {"name": "tiny", "recipe": "fashion_mnist_grid", "models": ["cifar_resnet8"], "policies": ["none"],
            **keys}
    return yaml.safe_dump({k: v for k, v in spec.items() if v is not None}).encode()


@contextlib.contextmanager
def inside(folder: Path):
    """Run in ``folder`` (a study's runs start in the working directory, outside the checkout)."""
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def cli(argv: list[str]) -> tuple[int, str]:
    """``(exit status, stderr)`` of ``tscnet ARGV`` run in this process (argparse's exits included)."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
    return code, err.getvalue()


def assert_one_line_or_none(command: str, code: int, err: str) -> None:
    assert "Traceback" not in err, err
    assert code in (0, 2), (code, err)
    lines = err.splitlines()
    if code == 2:
        assert len(lines) == 1 and err.endswith("\n") and lines[0].startswith(f"tscnet {command}: error: "), err
    else:
        assert not lines, err


def files_under(folder: Path) -> dict[str, bytes]:
    found = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = Path(root) / name
            found[str(path.relative_to(folder))] = path.read_bytes() if path.is_file() else b"<dir>"
    return found


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("parsers")


# ---------------------------------------------------------------------------------------------
# Study specs


@fuzz(200)
@given(document=documents(specs()))
# Found: an AttributeError, TypeErrors, a UnicodeDecodeError, a RecursionError, a ValueError, an OSError,
# and messages broken over lines by a line break in a key or value.
@example(document=spec_file(per_model=[1]))
@example(document=spec_file(grid={"optim.lr": [{"a": 1}]}))
@example(document=spec_file(grid={"a\nb": [1]}))
@example(document=spec_file(**{"a\u2028b": 1}))
@example(document=spec_file(per_model={"a\nb": {}}))
@example(document=spec_file(report={"a\rb": 1}))
@example(document=spec_file(policies=["none", "profile-of:ts\nc"]))
@example(document=spec_file(recipe="x" * 300))
@example(document=spec_file().replace(b"policies:", b"grid: {optim.lr: &a [1, *a]}\npolicies:"))
@example(document=b"\x80")
@example(document=b"[" * 100000)
@example(document=spec_file().replace(b"policies:", b"seeds: [" + b"1" * 5000 + b"]\npolicies:"))
def test_malformed_study_specs_parse_or_fail_in_one_line(folder, document):
    path = folder / "spec.yaml"
    path.write_bytes(document)
    spec = parses_or_refused(lambda: load_spec(path))
    if spec is not REFUSED:  # what a dry run checks next: the plan and every cell's recipe
        parses_or_refused(lambda: check_configs(spec, plan_cells(spec)))


@fuzz(20)
@given(document=documents(specs(bases=(TINY,), most=1)))
@example(document=spec_file(executor={"workers": "abc"}))  # found: a ValueError
@example(document=spec_file(executor={"workers": 0}))  # found: a ZeroDivisionError
@example(document=spec_file(policies=["none", "profile:/" + "a" * 300]))  # found: an OSError (name too long)
@example(document=spec_file(grid={"train.device": ["x" * 300]}))  # found: an OSError (name too long)
def test_study_dry_run_of_a_malformed_spec_is_one_line_and_writes_nothing(document):
    # With data.download=true a dry run downloads missing data (study.results.check_cell_data): not a parser's doing
    assume(b"download" not in document)
    with tempfile.TemporaryDirectory() as tmp, inside(Path(tmp)):
        path = Path(tmp) / "spec.yaml"
        path.write_bytes(document)
        for model in TINY["models"]:  # a study that ran before: a folder name too long is an error, not "no such file"
            (Path(tmp) / "results" / model / "none").mkdir(parents=True)
            (Path(tmp) / "runs" / model / "none").mkdir(parents=True)
        before = files_under(Path(tmp))
        code, err = cli(["study", str(path), "--dry-run", "--results", "results", "--runs", "runs"])
        assert_one_line_or_none("study", code, err)
        assert files_under(Path(tmp)) == before


# ---------------------------------------------------------------------------------------------
# Recipes, --set overrides, grid values


sections = st.dictionaries(st.one_of(st.sampled_from(KEY_NAMES), keys), values, max_size=4)
recipes = st.one_of(st.dictionaries(st.one_of(st.sampled_from(SECTIONS), keys), st.one_of(sections, values),
                                    max_size=4), values)


@fuzz(200)
@given(document=st.one_of(st.none(), documents(recipes)), items=st.lists(overrides, max_size=3))
# Found: an OverflowError, ValueErrors, TypeErrors, a RecursionError and a message over two lines.
@example(document=None, items=["optim.lr=1" + "0" * 400])
@example(document=None, items=["optim.lr=" + "1" * 5000])
@example(document=None, items=["model.name=" + "[" * 5000])
@example(document=None, items=["sched.name=[1]"])
@example(document=None, items=['model.name={"a\\nb": 1}'])
@example(document=b"1: 2\n", items=[])
@example(document=b"model: {3: 2}\n", items=[])
@example(document=b"\xff\xfe", items=[])
def test_malformed_recipes_and_overrides_parse_or_fail_in_one_line(folder, document, items):
    path = None
    if document is not None:
        path = folder / "recipe.yaml"
        path.write_bytes(document)
    parses_or_refused(lambda: load_config(path, items))


@fuzz(150)
@given(key=st.sampled_from(SCHEMA_KEYS), value=values)
def test_any_value_of_a_schema_key_is_set_and_validated_or_refused_in_one_line(key, value):
    """What a spec's grid does with each of its values (``set_value``, then ``validate_config``)."""
    config = load_config(None)
    if parses_or_refused(lambda: set_value(config, key, value)) is not REFUSED:
        parses_or_refused(lambda: validate_config(config))


def _rejected(argv: list[str]) -> bool:
    """Whether ``tscnet train ARGV``'s config is refused before anything runs."""
    return parses_or_refused(lambda: train_command.build_config(build_parser().parse_args(argv))) is REFUSED


@fuzz(12)
@given(item=overrides)
@example(item="optim.lr=1" + "0" * 400)  # found: an OverflowError
def test_train_with_a_refused_override_is_one_line_and_writes_nothing(item):
    with tempfile.TemporaryDirectory() as tmp, inside(Path(tmp)):
        argv = ["train", "--model", "cifar_resnet8", "--no-progress", f"--set={item}", "--epochs", "1",
                "--train-subset", "8", "--test-subset", "8", "--out", "run"]
        assume(_rejected(argv))  # an accepted one would train
        code, err = cli(argv)
        assert code == 2, err
        assert_one_line_or_none("train", code, err)
        assert not os.listdir(tmp)


# ---------------------------------------------------------------------------------------------
# Step-policy strings


@fuzz(300)
@given(text=policy_strings)
@example(text="tsc:a\nb=1")  # found: a message over two lines
def test_policy_strings_parse_or_fail_in_one_line(text):
    spec = parses_or_refused(lambda: parse_policy(text))
    if spec is not REFUSED:  # what a parsed policy prints (a study's arm, a run's model card) reads back the same
        assert str(parse_policy(str(spec))) == str(spec)


def test_a_policy_mapping_with_an_option_name_that_is_no_string_is_refused_in_one_line():
    # found: a TypeError (sorting and joining the unknown option names)
    assert parses_or_refused(lambda: parse_policy({"name": "tsc", 1: 2, "hiden": 3})) is REFUSED


def test_a_depth_step_too_large_for_a_float_is_refused_in_one_line():
    # found: an OverflowError building the model (tscnet train --steps depth:-1e308)
    from tscnet.models import create_model

    assert parses_or_refused(lambda: create_model("cifar_resnet8", steps="depth:-1e308", num_classes=10,
                                                   in_chans=1)) is REFUSED


def test_a_path_too_long_for_the_file_system_is_refused_in_one_line():
    """A data folder or an output folder whose name is longer than a file name may be (ENAMETOOLONG)."""
    with tempfile.TemporaryDirectory() as tmp, inside(Path(tmp)):
        Path("spec.yaml").write_bytes(spec_file(set=["data.data_dir=" + "a" * 300]))
        code, err = cli(["study", "spec.yaml", "--dry-run", "--results", "results", "--runs", "runs"])
        assert_one_line_or_none("study", code, err)
        assert code == 2 and "cannot be a folder here (File name too long)" in err
        code, err = cli(["train", "--model", "cifar_resnet8", "--epochs", "1", "--out", "b" * 300])
        assert_one_line_or_none("train", code, err)
        assert code == 2 and "a path is longer than the file system allows" in err and not Path("b" * 10).exists()
