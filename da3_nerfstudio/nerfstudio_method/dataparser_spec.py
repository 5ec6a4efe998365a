"""Registration of the ``da3-data`` dataparser (entry point ``nerfstudio.dataparser_configs``).

Kept apart from the method config: nerfstudio imports this module while its own dataparser registry
is still initialising, so it must not reach ``method_configs`` or the datamanagers (import cycle).
"""

from __future__ import annotations

from nerfstudio.plugins.registry_dataparser import DataParserSpecification

from da3_nerfstudio.nerfstudio_method.dataparser import DA3DataParserConfig

da3_dataparser = DataParserSpecification(
    config=DA3DataParserConfig(),
    description="Folder written by da3-process-data: images, DA3 depth, sparse_pc.ply, splat_init.ply",
)
