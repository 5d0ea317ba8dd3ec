"""MSKdeXLib: the MRML side of MSKdeX, without Qt.

Everything here runs with the PyPI ``slicer-core`` wheel (real MRML nodes, no application),
so the bridge between Slicer nodes and the backend :mod:`MSKdeXTraining` is tested outside
Slicer. Conventions: the backend works in LPS millimetres with numpy arrays ``[k, j, i]``;
Slicer nodes are RAS. The RAS <-> LPS flip lives only in :mod:`MSKdeXLib.coordinates`.
"""
