"""hfq's op contract: schemas and fakes in `ops`, pure-torch defaults in `reference`.

Native kernels register per device on the same op names; the dispatcher picks them, and the reference stays
the fallback and the oracle. Importing this package registers everything once.
"""

from . import ops, reference  # noqa: F401  (registration side effects)
