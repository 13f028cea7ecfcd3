"""Ray Data batch matching on a real local cluster: equal to the single-process results, one actor killed mid-run."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from testutil import EXAMPLES

pytestmark = pytest.mark.integration  # a local Ray cluster: heavy, run by `pytest -m integration`

LOAD = 32  # small load size: the whole job stays quick on 2 cores


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _images(tmp_path) -> list[str]:
    a, b = Image.open(EXAMPLES / "img_a.png").convert("RGB"), Image.open(EXAMPLES / "img_b.png").convert("RGB")
    made = {"a.png": a, "b.png": b, "a_mirror.png": ImageOps.mirror(a), "b_crop.png": b.crop((40, 60, 400, 380)),
            "a_small.png": a.resize((150, 100))}
    paths = []
    for name, im in made.items():
        im.save(tmp_path / name)
        paths.append(str(tmp_path / name))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    return paths + [str(tmp_path / "broken.png")]


def _kill_one_match_actor(stop: threading.Event, killed: list) -> None:
    """SIGKILL the first pair-matching actor process of this test's cluster (as an OOM killer would)."""
    import psutil

    while not stop.is_set() and not killed:
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if "ray::" in cmd and "_Match" in cmd:
                os.kill(p.info["pid"], signal.SIGKILL)
                killed.append(p.info["pid"])
                return
        time.sleep(0.2)


def test_ray_job_equals_single_process_and_survives_an_actor_kill(ray_cluster, tmp_path, vits8_weights_file,
                                                                  extractor, capsys):
    """`dinofeat match --pairs CSV --out R.parquet --ray` on a local cluster, one matching actor SIGKILLed."""
    import pyarrow.parquet as pq

    import dinofeat
    from dinofeat.cli import main
    from dinofeat.pipeline.results import result_schema

    names = [os.path.basename(p) for p in _images(tmp_path)]
    pairs = [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))][::2]
    (tmp_path / "pairs.csv").write_text("image1,image2\n" + "".join(f"{a},{b}\n" for a, b in pairs))
    out = tmp_path / "results.parquet"
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_one_match_actor, args=(stop, killed), daemon=True)
    killer.start()
    try:
        code = main(["match", "--pairs", str(tmp_path / "pairs.csv"), "--out", str(out), "--ray", "--ray-workers",
                     "1", "--batch-size", "2", "--weights", str(vits8_weights_file), "--load-size", str(LOAD), "-q"])
    finally:
        stop.set()
        killer.join()
    assert killed, "no matching actor was seen to kill"
    table = pq.read_table(out)
    assert table.schema.equals(result_schema())  # the single-machine batch CLI's columns
    rows = table.to_pylist()
    assert [(r["image1"], r["image2"]) for r in rows] == pairs  # every pair once, in input order, names as given
    bad = [r for r in rows if "broken.png" in (r["image1"], r["image2"])]
    assert code == 1 and f"{len(pairs) - len(bad)} succeeded, {len(bad)} failed" in capsys.readouterr().out
    assert bad and all("broken.png" in r["error"] and r["points1"] is None for r in bad)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each actor runs (cpus_per_worker=1)
    try:
        for r in rows:
            if r in bad:
                continue
            assert r["error"] is None
            ref = dinofeat.find_correspondences(tmp_path / r["image1"], tmp_path / r["image2"], load_size=LOAD,
                                                extractor=extractor)
            assert r["points1"] == [list(p) for p in ref.points1] and r["points2"] == [list(p) for p in ref.points2]
            assert r["num_best_buddies"] == int(ref.bbs_mask.sum())
            np.testing.assert_allclose(r["similarities"], ref.sim_1.numpy()[ref.indices1], rtol=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_bad_arguments_are_clear(tmp_path):
    from dinofeat.distributed import match_pairs
    from dinofeat.errors import InputError

    with pytest.raises(InputError, match="out="):
        match_pairs([("a.png", "b.png")], tmp_path / "x.csv")
    with pytest.raises(InputError, match="each item"):
        match_pairs([("a.png",)], tmp_path / "x.parquet")
    with pytest.raises(InputError, match="gpus_per_worker"):
        match_pairs([("a.png", "b.png")], tmp_path / "x.parquet", gpus_per_worker=2)
    with pytest.raises(InputError, match="unknown option"):
        match_pairs([("a.png", "b.png")], tmp_path / "x.parquet", load=3)

