"""Scale-out on Ray: many captures, or the chunks of one long capture, over a pool of workers.

:mod:`.runtime` starts a local Ray runtime that listens on loopback only (or joins an existing cluster);
:mod:`.pool` holds the actor pool (one model per worker), the batch runner and the chunk runner. Ray is an
optional dependency (``pip install 'da3-nerfstudio[cluster]'``); nothing here imports it at module load.
"""
