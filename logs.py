"""Logging for every entry point: our progress lines at INFO, libraries quiet unless --verbose.

    configure_logging(verbose=False)
"""
from __future__ import annotations

import logging

# The project's loggers that speak at INFO without --verbose (data filtering, model loading, training).
OUR_LOGGERS = ("train", "data", "models")


def configure_logging(verbose: bool) -> None:
    """Our progress lines at INFO; libraries' banners, tips and progress bars only with --verbose."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.INFO)
    if verbose:
        return
    import warnings

    import datasets
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", module="lightning")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
