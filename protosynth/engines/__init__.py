"""Where the heavy stages run: ``base`` (the ``Engine`` interface, the local engine, ``make_engine``),
``connect`` (the engine settings' checks and a Ray session) and ``ray`` (the Ray engine, imported only
by ``make_engine`` when asked for: Ray is an optional extra).

Kept empty on purpose: the Ray engine's modules import ``connect``, which runs this package's
``__init__`` first, and ``base`` imports the Ray engine, so anything imported here would close a loop."""
