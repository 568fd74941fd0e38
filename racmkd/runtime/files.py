"""A user's input files as the arrays a predictor takes: `racmkd predict --image/--audio/--input`
reads them through these, and so can a program around `racmkd.load`. No torch: an edge install
has these too.

    model = racmkd.load("runs/latest", tier="low")
    samples, rate = read_wav_file(Path("one.wav"))
    model.predict(image=read_image_file(Path("digit.png")), audio=samples, sample_rate=rate)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


def read_array_file(path: Path) -> np.ndarray:
    """One numeric array from an .npy file (an .npz archive, text or pickled objects are not one)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, MemoryError) as err:  # click would turn an EOFError into a bare "Aborted!"; a header may claim any shape
        # (numpy takes a file without its header for a pickle, and advises loading it unsafely: wrong advice for a damaged file)
        why = "no .npy header: damaged, or not saved with np.save" if "allow_pickle" in str(err) else f"{type(err).__name__}: {err}"
        raise ValueError(f"{path}: not a readable .npy array ({why})") from None
    if not isinstance(loaded, np.ndarray):
        loaded.close()
        raise ValueError(f"{path}: an .npz archive; pass one array saved with np.save (.npy)")
    if loaded.dtype.kind not in "iuf":
        raise ValueError(f"{path}: {loaded.dtype} values; pass an array of numbers")
    return loaded


def read_image_file(path: Path) -> np.ndarray:
    """An image file as 8-bit grey pixels (a PNG, JPEG, ... in any 8-bit mode; colour made grey, and
    a one-colour image drawn by its opacity read as that opacity), or an .npy array as saved."""
    if path.suffix == ".npy":
        return read_array_file(path)
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # (a header of 90-180 Mpx: a warning, then minutes of decoding)
            with Image.open(path) as picture:
                if picture.mode.startswith("I") or picture.mode == "F":  # 16/32-bit or float pixels: "L" would clip them to 255
                    raise ValueError(f"{path}: {picture.mode} pixels; pass an 8-bit image (grey or colour), or a .npy array of floats in [0, 1]")
                if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:  # (a palette PNG's transparent index too)
                    rgba = picture.convert("RGBA")
                    if all(low == high for low, high in rgba.getextrema()[:3]):
                        # One colour of ink whose opacity draws the digit (a drawing canvas's export): "L" dropped the
                        # opacity and left a constant image, the digit passed over as a dead input. Opacity is ink: light on dark.
                        return np.asarray(rgba.getchannel("A"))
                return np.asarray(picture.convert("L"))
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as err:  # (a bomb's header: a traceback)
        raise ValueError(f"{path}: not a readable image ({err})") from None


def read_wav_file(path: Path) -> tuple[np.ndarray, int]:
    """A user's recording as mono float samples: any PCM width or float, channels averaged (the
    predictor itself takes int16 or float mono)."""
    from racmkd.data.fsdd import read_wav

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    rate, samples = read_wav(path.read_bytes(), path, "Pass a PCM or float WAV recording.")
    if samples.dtype == np.uint8:  # 8-bit PCM is unsigned, centred on 128
        samples = (samples.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(samples.dtype, np.integer):  # 16-, 24- (read as 32) and 32-bit PCM
        samples = samples.astype(np.float32) / float(-np.iinfo(samples.dtype).min)
    else:
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes infinite, which the predictor refuses by name
            samples = samples.astype(np.float32)
    return (samples.mean(axis=1) if samples.ndim == 2 else samples), rate
