"""The live window (pyqtgraph). The only package that imports Qt."""
