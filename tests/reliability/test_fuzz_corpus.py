"""Crashes found by the fuzzer (`benchmarks/fuzz.py`, atheris) in the checkpoint and image loaders, kept as a
corpus: each input must give a `DinofeatError` naming the file, never the exception that escaped before the fix."""

from __future__ import annotations

import base64

import pytest

from dinofeat.engine.preprocess import load_image
from dinofeat.errors import InputError, WeightsError
from dinofeat.model.weights import load_weights

CHECKPOINT_CRASHES = [
    # BadZipFile escaped from zipfile.is_zipfile (a ZIP64 end record naming several disks)
    pytest.param(".bin", (
        "UEsDBAAACAgBAAAAAAACAAAAcQZYAQAAADBxB1gDAAAAY3B1cQhLBHRxCVFLAEsEhXEKYEsBhXELiWNjb2xsZWN0aW9ucwpPcmRl"
        "cmVkRGljdApxDClScQ10cQ5ScQ9zcy5QSwcIYax/LccAAADHAAAAUEsDBAAACAgAAAAAAAAAAAAAAAAAAAAAAAAXADQAYXJjaGl2"
        "ZS8uZgAAAAAAAAAAAAAHAAAAAAAAAAcAAAAAAAAAzwEAAAAAAAA4BAAAAAAAAFBLBgcAAAAABwYAAAkAAAD/////UEsFBgAAAAAH"
        "AAcAzwEAADgEAAAAAA=="
    ), id="BadZipFile-887a2cae234e"),
    # AssertionError escaped from torch/serialization.py:1922
    pytest.param(".pth", (
        "gAKKCmz8nEb5IGqoUBkugAJN6QMugAJ9cQAoWBAAAABwcm90b2NvbF92ZXJzaW9ucQFN6QNYDQAAAGxpdHRsZV9lbmRpYW5xAohY"
        "CgAAAHR5cGVfc2l6ZXNxA31xBChYBQAAAHNob3J0cQVLAlgDAAAAaW50cQZLBFgEAAAAbG9uZ3EHSwR1dS6AAn1xAChYCQAAAGNs"
        "c190b2tlbnEBY3RvcmNoLl91dGlscwpfcmVidWlsZF90ZW5zb3JfdjIKcQIoKFgHAAAAc3RvcmFnZXEDY3RvcmNoCkZsb2F0U3Rv"
        "cmFnZQpxBFgOAAAAOTQ0OTM2MTY1Nzc2NDhxBVgDAAAAY3B1cQZLBE50cQdRSwBLAUsBSwSHcQhLBEsESwGHcQmJY2NvbGxlY3Rp"
        "b25zCk9yZGVyZWREaWN0CnEKKVJxC3RxDFJxDVgYAAAAYmxvY2tzLjAuYXR0bi5xa3Yud2VpZ2h0cQ5oAigoaANoBFgOAAAAOTQ0"
        "OTM2MTY0ODQzNjhxD2gGSzBOdHEQUUsASwxLBIZxEUsESwGGcRKJaAopUnETdHEUUnEVWBIAAAByb3BlX2VtYmVkLnBlcmlvZHNx"
        "FmgCKChoA2gEWA4AAAA5NDQ5MzYxNjQ1NDQ4MHEXaAZLAk50cRhRSwBLAoVxGUsBhXEaiWgKKVJxG3RxHFJxHXUugAJdcQAoWA4A"
        "AAA5NDQ5MzYxNjQ1NDQ4MHEBWA4AAAA5NDQ5MzYxNjQ4NDM2OHECWA4AAAA5NDQ5MzYxNjU2Nzc0OHEDZS4CAAAAAAAAAAAAgD8A"
        "AKs/MAAAAAAAAAAAAIA/AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/"
        "AACAPwAAgD8AAIA/AACAPwAAgD+AAAA/AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/AACA"
        "PwAAgD8AAIA/AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/AACAPwAAgD8EAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        "AAA="
    ), id="AssertionError-ad69a99e25c1"),
    # IndexError escaped from torch/_weights_only_unpickler.py:568
    pytest.param(".pth", (
        "gAKKCmz8nEb5IGqoUBkugAJN6QMudG9rZW5xAWN0b3JjaC5fdXRpbHMKX3JlYnVpbGRfdGVuc29yX3YyCnECKChYBwAAAHN0b3Jh"
        "Z2VxA2N0b3JjaApGbG9hdFN0b3JhZ2UKcQRYDgAAADk0NDkzNjE2NTc3NjQ4cQVYAwAAAGNwdXEGSwROdHEHUUsASwFLAUsEh3EI"
        "SwRLBEsBh3EJiWNjb2xsZWN0aW9ucwpPcmRlcmVkRGljdApxCilScQt0cQxScQ1YGAAAAGJsb2Nrcy4wLmF0dG4ucWt2LndlaWdo"
        "dHEOaAIoKGgDaARYDgAAADk0NDkzNjE2NIeHh4eHh4eHh4eHh4eHh4c4NDM2OHEPaAZLME50cRBRSwBLDEsEhnERSwRLAYZxEolo"
        "CilScRN0cRRScRVYEgAAAHJvcGVfZW1iZWQucGVyaW9kc3EWaAIoKGgDaARYDgAAADk0NDkzNjE2NDU0NDgwcRdoBlgOAAAAOTQ0"
        "OTM2MTY0h4eHh4eHh4eHh4eHh4eHhzg0MzY4cQ9oBkswTnRxEFFLAEsMSwSGcRFLBEsBhnESiWgKKVJxE3RxFFJxFVgSAAAAcm9w"
        "ZV9lbWJlZC5wZXJpb2RzcRZoAigoaANoBFgOAAAAOTQ0OTM2MTY0NTQ0ODBxF2gGSwJOdHEYUUsASwKFcRlLAYVxGoloCilScRt0"
        "cRxScR11LoACXXEAKFgOAAAAOTQ0OTM2MTY0NTQ0ODBxAVgOAAAAOTQ0OTM2MTY0ODQzNjhxAlgOAAAAOTQ0OTM2MTY1Njc3NDhx"
        "A2UuAgAAAAAAAAAAAIA/AACrPzAAAAAAAAAAAACAPwAAgD8AAIA/AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/"
        "AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/gAAAPwAAgD8AAIA/AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/AACA"
        "PwAAgD8AAIA/AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/BAAAAAAA"
        "AAAAAAAAAAAAAAAAAAAAAAAA"
    ), id="IndexError-eebe261bc01f"),
]

IMAGE_CRASHES = [
    # DecompressionBombError escaped from PIL/Image.py:3590
    pytest.param(".gif", (
        "R0lGODdhDQAJAIYAAJkzAP8zAABmAMxmADOZAMyZADPMAGbMAMzMAP/MAJn/ADMAM2YAM8wzMwBmMzNmMwCZM2aZM5mZM8yZMwDM"
        "MzPMM2bMM5nMMzP/M2b/MwAAZjMAZjMzZmYzZpkzZswzZmZmZjOZZpmZZsyZZv+ZZgDMZmbMZpnMZszMZv/MZjMAmWYAmZkAmQAz"
        "mWYzmZkzmcwzmZlmmcxmmTOZmZmZmcyZmf////////////////////////////////////////////////////////+ZmczMmZn/"
        "mZkAzMwAzDMzzGYzzJkzzMwzzABmzGZmzJlmzACZzDOZzGaZzMyZzGbMzMzMzDP/zJn/zGYA/zMz/5kz/8wz/zNm/5mZ/zPM/2bM"
        "///M/wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAD3ACwAAAAADaysrAAJ"
        "AAAIhgCJHIGAIgEUGAQqUFhgIUKDEFGegIjwhMeNIi1S5MiwwciNEQekGLGAY8UPBEde+AhgYcmHHDFU7GjyocGKBwFMCIARgMWR"
        "CDOcIBEhAIYAAJkzAP8zAABmAMxmADOZQkaEEhIWnJAAxAYDJw40GImgI0aNHEwAeAjSw0ISDg4uKAjhIUZAADs="
    ), id="DecompressionBombError-8ea41fd5a66e"),
]


def _write(tmp_path, suffix: str, b64) -> str:
    path = tmp_path / f"fuzzed{suffix}"
    path.write_bytes(base64.b64decode("".join(b64)))
    return str(path)


@pytest.mark.parametrize("suffix, b64", CHECKPOINT_CRASHES)
def test_fuzzed_checkpoint_is_a_weights_error(tmp_path, suffix, b64):
    path = _write(tmp_path, suffix, b64)
    with pytest.raises(WeightsError, match=r"fuzzed\.(pth|bin).*(is not a PyTorch checkpoint|could not be read)"):
        load_weights("dino_vits8", path, progress=False)


@pytest.mark.parametrize("suffix, b64", IMAGE_CRASHES)
def test_fuzzed_image_is_an_input_error(tmp_path, suffix, b64):
    path = _write(tmp_path, suffix, b64)
    with pytest.raises(InputError, match=r"image: .*decompression-bomb.*MAX_IMAGE_PIXELS"):
        load_image(path)
