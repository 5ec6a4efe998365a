"""Readers and writers for the files the project exchanges with other tools.

PLY point clouds and Gaussian splats (:mod:`.ply`), COLMAP sparse models (:mod:`.colmap`) and
nerfstudio ``transforms.json`` datasets (:mod:`.transforms`). Every writer goes through
:func:`.atomic.atomic_write`, so an interrupted or failing write never destroys existing output.
"""
