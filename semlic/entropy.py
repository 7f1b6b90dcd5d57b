"""Entropy-coding helpers that several methods share (CompressAI's rANS coder).

The core's side of learned entropy coding, as CompressAI's ``latent_codecs`` are shared by its
models: the compressed-domain hyperprior (semlic.methods.latent_seg) and DSSLIC-RD's range-coded
compact layer (semlic.methods.dsslic_rd) both reach CompressAI through :func:`compressai_models`
and hand every stored string to its decoder through :func:`bounded_string`.
"""

from __future__ import annotations

from .errors import LayerError, MissingExtraError


def compressai_models():
    """``compressai.models``, or a clear error saying how to install it."""
    try:
        import compressai.models as models
    except ImportError as exc:
        raise MissingExtraError(
            f"the learned codec needs CompressAI ({exc}): `make install` installs it, or "
            "`pip install --no-deps compressai==1.2.8 einops torch-geometric`") from exc
    return models


def bounded_string(string: bytes, symbols: int) -> bytes:
    """A rANS string made safe to hand to CompressAI's decoder, which reads 32-bit words from it with
    no bounds check (a damaged string made it read past the end and crash the process: found by
    fuzzing, tests/test_fuzz.py). A string longer than ``symbols`` could need is refused; the rest is
    padded with zeros, enough for every word the decoder can read: past the real bytes it reads
    zeros, on which each symbol (and each escape of its bypass loop) stops after a bounded read."""
    if len(string) > 64 * symbols + 64:
        raise LayerError(f"entropy-coded string of {len(string)} bytes for {symbols} symbols: damaged")
    return bytes(string) + bytes(16 * len(string) + 8 * symbols + 64)
