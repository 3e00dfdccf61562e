"""dd: dataset distillation toolkit.

One package for expert-trajectory buffers, interchangeable synthesizers (MTT, FTD, DATM, DataDAM, DM)
and one cross-architecture evaluation protocol.
"""
__version__ = "0.1.0"


def evaluate(*args, **kwargs):
    """Shortcut for :func:`dd.eval.evaluate`."""
    from dd.eval import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def distill(*args, **kwargs):
    """Shortcut for :func:`dd.methods.distill`."""
    from dd.methods import distill as _distill

    return _distill(*args, **kwargs)
