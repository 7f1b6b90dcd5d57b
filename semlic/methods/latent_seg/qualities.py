"""The hyperprior's qualities: CompressAI's zoo of bmshj2018-hyperprior (1..8), its lambdas, the padding.

Apart from the networks (:mod:`.hyperprior`), so that reading a quality or a file's header needs
neither torch nor CompressAI.
"""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError

#: CompressAI's training lambdas of bmshj2018-hyperprior by quality.
LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.0130, 5: 0.0250, 6: 0.0483, 7: 0.0932, 8: 0.1800}
MULTIPLE = 64                  # g_a (x16) then h_a (x4): inputs padded to a multiple of 64


def check_quality(quality: Any) -> int:
    try:
        value = int(quality)
    except (TypeError, ValueError):
        raise ConfigError(f"hyperprior: a quality is an integer 1..8, got {quality!r}") from None
    if value not in LAMBDAS or value != quality:
        raise ConfigError(f"hyperprior: a quality is an integer 1..8 (CompressAI's zoo), got {quality!r}")
    return value
