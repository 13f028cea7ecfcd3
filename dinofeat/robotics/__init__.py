"""Robotics layer: ROS 2 and bags around the streaming API.

Owns: the ROS 2 node (node.py over node_core.py, parameters in params.py, PointCloud2 in pointcloud.py), reading
bags (bag.py) and their images (images.py), `dinofeat replay` (replay.py, outputs.py: Parquet / MCAP) their commands
(`dinofeat replay` / `dinofeat ros2 run`) are `dinofeat.cli.robotics`.
May import: every layer below it (stream, apps, pipeline, correspondences, engine, export, model, kernels, base);
today stream, pipeline, engine, config, errors, limits and viz. Not serve or distributed (siblings).
No exports here: import the modules (rclpy, rosbags and mcap are optional extras, imported when used).
"""
