"""The Ray engine (``engine.RayEngine``): its modules import ``ray`` at the top, so only
``engines.make_engine`` imports them, when the Ray engine is asked for. They import no stage: the
stages hand over their own functions and jobs as arguments."""
