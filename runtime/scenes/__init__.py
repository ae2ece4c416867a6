"""Scenes: what the user pointed at and how a chip of it is read.

Discovery (paths, folders, manifests, STAC Items) into :class:`~.inputs.SceneFiles`; file headers and
band matching; STAC; which product and which Clay v1.5 sensor a scene is (``products``, ``sensing``);
sensing dates; units and offsets; the validated scene (grid, read modes, invalid
pixels); the chip grid; the chip reader; footprints. Imports only the shared contract at the top of
:mod:`clay.runtime`, never engines, outputs, serving or the pipeline.
"""
