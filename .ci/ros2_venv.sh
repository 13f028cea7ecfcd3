#!/usr/bin/env bash
# Build the ROS 2 venv the node test runs in (docs/robotics.md "ROS 2 node"), then (with --test) run that test.
#
#   bash .ci/ros2_venv.sh [--test]      DINOFEAT_ROS2_VENV (default .venv-ros2), MAIN_VENV (default: the active venv)
#
# rclpy comes from PyPI's ros-* wheels (CPython 3.11 only). They install a .pth that re-executes the interpreter
# with LD_LIBRARY_PATH set, so they live in their own venv, never in the main one. To avoid a second torch (and a
# second build of dinofeat._native), the ROS venv sees the main venv's packages after its own: a .pth line
# `site.addsitedir(<main site-packages>)`. A user without a main venv installs `pip install "dinofeat[ros2]"`
# into a Python 3.11 venv instead (torch and all).
set -euo pipefail
cd "$(dirname "$0")/.."

ROS_VENV="${DINOFEAT_ROS2_VENV:-$PWD/.venv-ros2}"
MAIN_PY="${MAIN_VENV:+$MAIN_VENV/bin/python}"
MAIN_PY="${MAIN_PY:-$(command -v python)}"
MAIN_SITE="$("$MAIN_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PY311="${PYTHON311:-$(command -v python3.11 || true)}"
if [ -z "$PY311" ]; then
  echo "ros2_venv: python3.11 not found (the ros-* wheels are built for CPython 3.11); set PYTHON311" >&2
  exit 1
fi
# The same numpy as the main venv: torch and dinofeat._native from the main venv run against it.
NUMPY="$("$MAIN_PY" -c 'import numpy; print(numpy.__version__)')"
start=$(date +%s)
rm -rf "$ROS_VENV"
"$PY311" -m venv "$ROS_VENV"
"$ROS_VENV/bin/python" -m pip install -q --upgrade pip
# Exactly the [ros2] extra of pyproject.toml (pinned: the versions this was tested with).
"$ROS_VENV/bin/python" -m pip install -q "ros-rclpy==9.1.2" "ros-sensor-msgs==5.5.1" "ros-std-msgs==5.5.1" \
  "ros-rmw-fastrtps-cpp==9.3.3" "numpy==$NUMPY"
ROS_SITE="$("$ROS_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "import site; site.addsitedir('$MAIN_SITE')" > "$ROS_SITE/zz_dinofeat_main_venv.pth"
# DDS traffic stays on this machine: shared memory only, discovery on localhost (never multicast on a NIC).
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST FASTDDS_BUILTIN_TRANSPORTS=SHM
"$ROS_VENV/bin/python" -c "import rclpy, sensor_msgs.msg, torch, dinofeat; print('ros2 venv: rclpy', rclpy.__file__, 'torch', torch.__version__)"
echo "== ROS 2 venv built in $(( $(date +%s) - start )) s: $ROS_VENV ($(du -sh "$ROS_VENV" | cut -f1))"

if [ "${1:-}" = "--test" ]; then
  export DINOFEAT_ROS2_PYTHON="$ROS_VENV/bin/python"
  "$MAIN_PY" -m pytest -m integration tests/robotics/test_ros2_node.py -q
fi
