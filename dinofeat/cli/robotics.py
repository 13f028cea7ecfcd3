"""`dinofeat replay` and `dinofeat ros2 run` (rows of `dinofeat.cli.OPTIONAL_COMMANDS`).

    dinofeat replay BAG --topic /camera/image_raw [--reference first|every:N|FILE] --out R.parquet|R.mcap
                    [--resume] [model and matching flags of `dinofeat match`]
    dinofeat ros2 run [--ros-args -p NAME:=VALUE ...]      (needs rclpy: the [ros2] extra's venv, docs/robotics.md)

Exit codes of replay: 0 every frame matched, 1 some frames failed (their `error` column says why; the count is
printed), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys

from ..config import MatchConfig
from ..errors import InputError
from .common import add_match_arguments, add_model_arguments, extractor_config, precheck


def add_replay_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bag", metavar="BAG", help="rosbag2 folder (metadata.yaml + mcap / sqlite3), .mcap, .db3 or "
                   "ROS 1 .bag")
    p.add_argument("--topic", required=True, help="sensor_msgs/Image or CompressedImage topic")
    p.add_argument("--reference", default="first", metavar="first|every:N|FILE",
                   help="what each frame is matched to (default first: the topic's first frame)")
    p.add_argument("--out", required=True, metavar="RESULTS.parquet|RESULTS.mcap",
                   help="Parquet (dinofeat match's schema + stamp_ns, frame_id) or MCAP (PointCloud2, Foxglove)")
    p.add_argument("--resume", action="store_true",
                   help="keep the successful results of an existing --out (by frame stamp), match the others")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    add_match_arguments(p)
    add_model_arguments(p)


def replay_main(args) -> int:
    from ..robotics.bag import check_bag_path
    from ..robotics.replay import parse_reference, replay
    from ..viz import check_output_path

    if not str(args.out).lower().endswith((".parquet", ".mcap")):
        raise InputError(f"--out {args.out!r}: expected a file ending in .parquet or .mcap")
    check_output_path(args.out, "--out")
    check_bag_path(args.bag)
    parse_reference(args.reference)
    precheck(args, args.layer)
    ec = extractor_config(args)
    mc = MatchConfig.from_args(args)

    def report(index, stamp, message):
        print(f"frame {index} (stamp {stamp}): {message}", file=sys.stderr)

    s = replay(args.bag, args.topic, args.out, reference=args.reference, extractor_config=ec, match_config=mc,
               resume=args.resume, progress=not args.quiet, on_error=report)
    print(f"{s.frames} frames on {args.topic}: {s.matched} matched, {s.kept} kept from before, {s.failed} failed; "
          f"written to {s.out}")
    return 1 if s.failed else 0


def add_ros2_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["run", "params"],
                   help="run: start the node; params: print its parameters (name, type, default, meaning)")
    p.add_argument("ros_args", nargs=argparse.REMAINDER, metavar="--ros-args ...",
                   help="ROS arguments, e.g. --ros-args -p weights:=/path/w.pth -r image:=/camera/image_raw")


def ros2_main(args) -> int:
    from ..robotics.params import PARAMETERS

    if args.action == "params":
        for p in PARAMETERS:
            print(f"{p.name:<18} {p.type.__name__:<6} default {p.default!r:<22} {p.help}")
        return 0
    from ..robotics.node import run_node

    return run_node(args.ros_args)
