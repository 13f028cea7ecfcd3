"""The ROS 2 node's parameters (declared, typed and validated without rclpy) -> the streaming API's configs.

Every setting of the node is a parameter (`ros2 param list /dinofeat`, `--ros-args -p name:=value`); `PARAMETERS`
is the table the node declares (type and description) and `node_settings` turns the values into
`ExtractorConfig`, `MatchConfig` and `NodeSettings`, raising one `InputError` per bad value ("parameter X: ...").
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import (
    BACKEND_NAMES,
    FACET_NAMES,
    MATCH_PRECISIONS,
    MODEL_PRECISIONS,
    ExtractorConfig,
    MatchConfig,
)
from ..errors import InputError

_E, _M = ExtractorConfig(), MatchConfig()  # the defaults are the configs' (declared once, in dinofeat.config)


@dataclass(frozen=True)
class Param:
    name: str
    type: type  # bool | int | float | str (ROS PARAMETER_BOOL / INTEGER / DOUBLE / STRING)
    default: object
    help: str


PARAMETERS = (
    # model (ExtractorConfig)
    Param("model", str, _E.model, "zoo name (`dinofeat weights list`)"),
    Param("stride", int, 0, "patch-embedding stride dividing the patch size; 0: half the patch (4 for dino_vits8, "
                            "7 for dinov2_vits14)"),
    Param("weights", str, "", "checkpoint file; empty: the cached official file"),
    Param("backend", str, _E.backend, " | ".join(BACKEND_NAMES)),
    Param("device", str, _E.device, "auto | cpu | cuda[:N]"),
    Param("precision", str, _E.precision, "ViT precision: " + " | ".join(MODEL_PRECISIONS)),
    Param("load_size", int, _E.load_size, "shorter image side after resizing"),
    # matching (MatchConfig)
    Param("layer", int, _M.layer, "block whose facet is the descriptor"),
    Param("facet", str, _M.facet, " | ".join(FACET_NAMES)),
    Param("bin", bool, _M.bin, "log-bin the descriptors before matching"),
    Param("thresh", float, _M.thresh, "saliency threshold of the foreground"),
    Param("num_pairs", int, _M.num_pairs, "pairs published per frame (k-means clusters)"),
    Param("match_precision", str, _M.match_precision, "Best-Buddies GEMM precision: " + " | ".join(MATCH_PRECISIONS)),
    # the node
    Param("reference", str, "first", "first | every:N | an image file: what each frame is matched to"),
    Param("image_topic", str, "image", "sensor_msgs/Image input"),
    Param("camera_info_topic", str, "", "sensor_msgs/CameraInfo input; empty: none. Republished with each cloud"),
    Param("output_topic", str, "correspondences", "sensor_msgs/PointCloud2 output (u0 v0 u1 v1 score)"),
    Param("debug_image", bool, False, "also publish the matches drawn (rgb8) on ~/debug_image"),
)
BY_NAME = {p.name: p for p in PARAMETERS}


@dataclass(frozen=True)
class NodeSettings:
    """The node's own settings (the rest go to `ExtractorConfig` / `MatchConfig`)."""

    reference: object  # `replay.ReferencePolicy`
    image_topic: str
    camera_info_topic: str
    output_topic: str
    debug_image: bool


def check_value(name: str, value):
    """`value` as the parameter's type (an int is accepted for a float parameter); `InputError` otherwise."""
    if name not in BY_NAME:
        raise InputError(f"parameter {name!r} is unknown; the node's parameters: {', '.join(BY_NAME)}")
    p = BY_NAME[name]
    if p.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not p.type:
        raise InputError(f"parameter {name}: expected a {p.type.__name__} ({p.help}), got {value!r}")
    return value


def node_settings(values: dict) -> tuple:
    """(ExtractorConfig, MatchConfig, NodeSettings) from {name: value} (missing names take their defaults).

    Raises `InputError` naming the parameter for a wrong type, an unknown name or a value the configs refuse.
    """
    from .replay import parse_reference

    v = {p.name: p.default for p in PARAMETERS}
    v.update({k: check_value(k, x) for k, x in values.items()})
    for topic in ("image_topic", "output_topic"):
        if not v[topic]:
            raise InputError(f"parameter {topic}: expected a topic name, got an empty string")
    try:
        ec = ExtractorConfig(model=v["model"], stride=v["stride"] or "auto", weights=v["weights"] or None,
                             backend=v["backend"], device=v["device"], precision=v["precision"],
                             load_size=v["load_size"])
        mc = MatchConfig(layer=v["layer"], facet=v["facet"], bin=v["bin"], thresh=v["thresh"],
                         num_pairs=v["num_pairs"], match_precision=v["match_precision"])
        reference = parse_reference(v["reference"])
    except InputError as e:
        raise InputError(f"parameter {_named(str(e))}") from None
    node = NodeSettings(reference=reference, image_topic=v["image_topic"], camera_info_topic=v["camera_info_topic"],
                        output_topic=v["output_topic"], debug_image=v["debug_image"])
    return ec, mc, node


def _named(message: str) -> str:
    """The configs' and --reference's messages in parameter words (`load_size=0: ...` -> `load_size: 0: ...`)."""
    message = message.replace("--reference ", "reference: ")
    head, sep, rest = message.partition("=")
    return f"{head}: {rest}" if sep and head.isidentifier() else message
