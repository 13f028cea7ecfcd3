"""Settings declared once: the command line's model and matching flags are generated from `dinofeat.config`
(`add_arguments`), and equal, flag by flag, the table copied from the hand-written parser they replaced
(tests/data/cli_flags.json: names, destinations, defaults, choices, nargs, types, help with its default)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
from cli_table import flag_table
from testutil import EXAMPLES

from dinofeat.cli import build_parser
from dinofeat.cli.common import Parser
from dinofeat.config import (
    BACKEND_NAMES,
    FACET_NAMES,
    MATCH_PRECISIONS,
    MODEL_PRECISIONS,
    ExtractorConfig,
    MatchConfig,
    add_arguments,
    from_args,
)
from dinofeat.errors import InputError

TABLE = json.loads((Path(__file__).parent / "data" / "cli_flags.json").read_text())


@pytest.mark.parametrize("command", sorted(TABLE))
def test_generated_flags_equal_the_hand_written_ones(command):
    now = flag_table(build_parser())
    assert command in now, f"{command} is gone"
    before = {tuple(r["flags"]) or (r["dest"],): r for r in TABLE[command]}
    after = {tuple(r["flags"]) or (r["dest"],): r for r in now[command]}
    assert list(after) == list(before), "the options (or their order in --help) changed"
    for key, row in before.items():
        assert after[key] == row, f"{command} {key[0]}"


def test_no_command_was_added_or_lost():
    assert sorted(flag_table(build_parser())) == sorted(TABLE)


def test_every_cli_setting_of_the_configs_has_help_and_a_valid_default():
    for cls in (ExtractorConfig, MatchConfig):
        for f in dataclasses.fields(cls):
            cli = f.metadata.get("cli")
            assert cli and cli["help"], f"{cls.__name__}.{f.name}: no command-line help"
            if cli["choices"] is not None and f.default is not None:
                assert f.default in cli["choices"], f"{cls.__name__}.{f.name}"
        cls()  # the declared defaults pass the field checks


def test_lists_are_declared_once():
    from dinofeat.engine.backends import BACKENDS
    from dinofeat.engine.extractor import PRECISIONS
    from dinofeat.kernels.dispatch import PRECISIONS as GEMM
    from dinofeat.model.vit import POS_INTERP, ROPE_PERIODS
    from dinofeat.model.zoo import FACETS

    assert FACETS is FACET_NAMES and PRECISIONS is MODEL_PRECISIONS and GEMM is MATCH_PRECISIONS
    assert ("auto", *BACKENDS) == BACKEND_NAMES
    assert POS_INTERP == ExtractorConfig.__dataclass_fields__["pos_interp"].metadata["cli"]["choices"]
    assert ROPE_PERIODS == ("checkpoint", "recompute")


def _parse(argv, **kw):
    p = Parser(prog="t")
    add_arguments(p, MatchConfig, **kw)
    return p, p.parse_args(argv)


def test_a_switch_follows_its_default_and_from_args_reads_either_form():
    _, ns = _parse(["--no-bin", "--layer", "3", "--thresh", "0.2"])  # the match form: no_bin=True
    assert ns.no_bin is True and from_args(MatchConfig, ns) == MatchConfig(layer=3, bin=False, thresh=0.2)
    _, ns = _parse(["--no-bin"], dests={"bin": "bin"})  # the applications' form: bin=False
    assert ns.bin is False and MatchConfig.from_args(ns).bin is False
    _, ns = _parse([], only=("bin",), defaults={"bin": False})  # extract: --bin, off by default
    assert ns.bin is False and MatchConfig.from_args(ns).bin is False
    _, ns = _parse(["--bin"], only=("bin",), defaults={"bin": False})
    assert MatchConfig.from_args(ns, num_pairs=3) == MatchConfig(bin=True, num_pairs=3)


def test_variations_are_overrides_not_new_declarations():
    p, ns = _parse(["--layer", "1", "2"], only=("layer", "match_precision"), nargs={"layer": "+"},
                   choices={"match_precision": ("fp32",)}, help={"layer": "blocks"})
    assert ns.layer == [1, 2] and ns.match_precision == "fp32"
    assert p.parse_args([]).layer == [9]  # a scalar default becomes a list with nargs
    with pytest.raises(SystemExit):
        p.parse_args(["--match-precision", "fp16"])
    with pytest.raises(InputError, match="no command-line setting 'nope'"):
        add_arguments(argparse.ArgumentParser(), MatchConfig, only=("nope",))


def test_extractor_config_from_the_command_line():
    p = Parser(prog="t")
    add_arguments(p, ExtractorConfig)
    ns = p.parse_args(["--onnx", "a.onnx", "--onnx", "b.onnx", "--pos-interp", "size", "--load-size", "64"])
    assert ns.stride is None  # no --stride: the zoo default ("auto"), resolved by the command
    ec = ExtractorConfig.from_args(ns)
    assert ec == ExtractorConfig(stride="auto", onnx=("a.onnx", "b.onnx"), pos_interp="size", load_size=64)
    assert ExtractorConfig.from_args(p.parse_args([])).onnx == ()
    with pytest.raises(SystemExit):
        p.parse_args(["--precision", "fp8"])
    with pytest.raises(InputError, match="pos_interp='bilinear' is unknown"):
        ExtractorConfig(pos_interp="bilinear")


def test_extractor_from_config(vits8_weights_file):
    from dinofeat.engine.extractor import Extractor

    ec = ExtractorConfig(weights=str(vits8_weights_file), backend="torch", device="cpu", stride=8, load_size=32)
    ex = Extractor.from_config(ec)
    assert ex.stride == 8 and ex.model_name == "dino_vits8"
    with pytest.raises(InputError, match="only with backend='onnxruntime'"):
        Extractor.from_config(dataclasses.replace(ec, onnx=("g.onnx",)))
    with pytest.raises(InputError, match="expected dinofeat.config.ExtractorConfig"):
        Extractor.from_config({"model": "dino_vits8"})
    # The API validates through the same object: `Extractor(...)` keeps its settings, stride resolved.
    assert ex.config == dataclasses.replace(ec, load_size=224)
    auto = Extractor(weights=str(vits8_weights_file), backend="torch", device="cpu")
    assert auto.config.stride == 4 and auto.config.precision == "fp32"
    with pytest.raises(InputError, match="precision='fp64' is unknown; choose one of fp32, tf32, bf16, fp16"):
        Extractor(weights=str(vits8_weights_file), backend="torch", device="cpu", precision="fp64")


def test_ray_job_takes_the_settings_objects_and_the_flat_keywords():
    import pickle

    from dinofeat.distributed.ray_job import RayJobOptions

    o = RayJobOptions.from_kwargs(ExtractorConfig(load_size=64, weights="w.pth"), MatchConfig(num_pairs=3),
                                  thresh=0.2, batch_size=2)
    assert (o.load_size, o.weights, o.num_pairs, o.thresh, o.batch_size, o.stride) == (64, "w.pth", 3, 0.2, 2, 4)
    assert o.extractor.load_size == 64 and o.match == MatchConfig(num_pairs=3, thresh=0.2)
    assert pickle.loads(pickle.dumps(o)) == o  # shipped to the actors
    flat = RayJobOptions.from_kwargs(model="dino_vits8", layer=11, bin=False, cpus_per_worker=2.0)
    assert (flat.layer, flat.bin, flat.cpus_per_worker, flat.stride) == (11, False, 2.0, 4)
    assert RayJobOptions(extractor=ExtractorConfig(stride="auto")).stride == 4  # resolved for the pair stage
    with pytest.raises(InputError, match=r"unknown option\(s\) \['load'\]"):
        RayJobOptions.from_kwargs(load=3)
    with pytest.raises(InputError, match="facet='keys' is unknown"):
        RayJobOptions.from_kwargs(facet="keys")


def test_triton_repository_is_built_from_and_gives_back_the_settings_objects():
    from dinofeat.serve.repository import RepositoryOptions, settings_of

    ec = ExtractorConfig(weights="w.pth", precision="fp16", load_size=(64, 96))
    o = RepositoryOptions.from_configs(ec, MatchConfig(layer=[9, 11], bin=False, num_pairs=5), max_batch=16)
    assert o == RepositoryOptions(weights="w.pth", precision="fp16", height=64, width=96, layers=(9, 11), bin=False,
                                  num_pairs=5, max_batch=16)
    assert RepositoryOptions.from_configs() == RepositoryOptions()
    back_ec, back_mc = o.settings()
    assert (back_ec.load_size, back_ec.stride, back_ec.precision) == ((64, 96), 4, "fp16")
    assert back_mc == MatchConfig(layer=[9, 11], bin=False, num_pairs=5)
    assert settings_of({**vars(RepositoryOptions()), "layers": [9]})[1] == MatchConfig()
    with pytest.raises(InputError, match="precision='bf16': a repository's graph is fp32 or fp16"):
        RepositoryOptions.from_configs(ExtractorConfig(precision="bf16"))


def test_matcher_from_the_settings_objects(vits8_weights_file):
    from dinofeat.pipeline.matcher import Matcher

    ec = ExtractorConfig(weights=str(vits8_weights_file), backend="torch", device="cpu", load_size=32)
    m = Matcher.from_configs(ec, MatchConfig(num_pairs=3, bin=False, thresh=0.1))
    c = m.config
    assert (c.load_size, c.num_pairs, c.bin, c.thresh, c.stride, m.extractor.stride) == (32, 3, False, 0.1, 4, 4)
    assert len(m.match(EXAMPLES / "img_a.png", EXAMPLES / "img_b.png")) == 3
