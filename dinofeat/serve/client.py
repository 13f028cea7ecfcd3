"""`Client`: match two images through a served `dinofeat_pair`, over tritonclient HTTP or gRPC."""

from __future__ import annotations

from ..errors import BackendUnavailableError, InputError
from . import wire
from .repository import PAIR, read_options, settings_of


class Client:
    """A Triton client for a repository made by `dinofeat serve triton-repo`.

    `match(image1, image2)` resizes both images to the repository's (H, W) and normalises them exactly as
    `Extractor.preprocess(image, (H, W))`, sends one request, and returns `Correspondences` equal to
    `find_correspondences(image1, image2, load_size=(H, W), ...)` with the repository's settings.

    Example:
        >>> client = dinofeat.serve.Client("localhost:8000")           # or protocol="grpc", "localhost:8001"
        >>> c = client.match("a.png", "b.png"); c.points1, c.points2
    """

    def __init__(self, url: str = "localhost:8000", *, protocol: str = "http", model: str = PAIR,
                 timeout: float = 120.0):
        if protocol not in ("http", "grpc"):
            raise InputError(f"protocol={protocol!r}: choose 'http' or 'grpc'")
        try:
            if protocol == "http":
                import tritonclient.http as tc

                self._client = tc.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
            else:
                import tritonclient.grpc as tc

                self._client = tc.InferenceServerClient(url)
        except ImportError as e:
            raise BackendUnavailableError(f"Client needs tritonclient[{protocol}] ({e}); "
                                          "pip install 'dinofeat[serve]'") from None
        self._tc, self.protocol, self.model, self.timeout = tc, protocol, model, timeout
        self._options = None

    @property
    def options(self) -> dict:
        """The repository's options (model, stride, height, width, num_pairs, thresh, ...), read once."""
        if self._options is None:
            if self.protocol == "http":
                config = self._client.get_model_config(self.model)
            else:
                config = self._client.get_model_config(self.model, as_json=True)["config"]
            self._options = read_options(config.get("parameters", {}))
        return self._options

    def settings(self):
        """The served (ExtractorConfig, MatchConfig): `find_correspondences(a, b, extractor=Extractor.from_config(
        ec), layer=mc.layer, ..., load_size=ec.load_size)` gives what `match(a, b)` returns."""
        return settings_of(self.options)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.options["height"]), int(self.options["width"])

    def preprocess(self, image, name: str = "image"):
        """Image -> ((1, 3, H, W) float32 numpy at the repository's size, resized PIL image)."""
        from ..engine.preprocess import preprocess
        from ..model.zoo import get_model_spec

        spec = get_model_spec(self.options["model"])
        batch, pil = preprocess(image, self.size, spec.mean, spec.std, name=name)
        return batch.numpy(), pil

    def infer(self, batch1, batch2) -> dict:
        """Raw call: two (1, 3, H, W) float32 arrays -> {output name: array without the batch axis}."""
        inputs = []
        for name, arr in (("image1", batch1), ("image2", batch2)):
            inp = self._tc.InferInput(name, list(arr.shape), "FP32")
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        names = [f[0] for f in wire.FIELDS] + list(wire.SALIENCY)
        outputs = [self._tc.InferRequestedOutput(n) for n in names]
        try:
            result = self._client.infer(self.model, inputs, outputs=outputs)
        except Exception as e:  # tritonclient raises InferenceServerException (and transport errors)
            raise BackendUnavailableError(f"Triton request to {self.model!r} failed: {e}") from None
        return {n: result.as_numpy(n)[0] for n in names}

    def match(self, image1, image2):
        """`Correspondences` of two images (path, PIL image or HxWx3 uint8 array), as `find_correspondences`."""
        batch1, pil1 = self.preprocess(image1, "image1")
        batch2, pil2 = self.preprocess(image2, "image2")
        arrays = self.infer(batch1, batch2)
        return wire.decode(arrays, pil1, pil2, tuple(self.options["num_patches"]))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Client"]
