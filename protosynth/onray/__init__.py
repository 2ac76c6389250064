"""The Ray engine's stages (``engine.py``): every module here imports ``ray`` at the top, so only code
that runs under ``engine="ray"`` imports them, once ``engine.ray_session`` has opened a session."""
