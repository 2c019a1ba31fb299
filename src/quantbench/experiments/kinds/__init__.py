"""The built-in experiment kinds; importing this package registers them in :data:`~quantbench.experiments.layer.KINDS`.

Each module holds one kind: its frozen config (defaults there and nowhere else) and its handler.

Example:
    >>> from quantbench.experiments.layer import KINDS
    >>> KINDS.names()
    ['bench', 'debug', 'eval', 'lint', 'mixed', 'ptq', 'qat', 'recommend', 'run', 'split', 'train']
"""

from quantbench.experiments.kinds import (  # noqa: F401
    bench,
    debug,
    eval,
    lint,
    mixed,
    ptq,
    qat,
    recommend,
    run,
    split,
    train,
)
