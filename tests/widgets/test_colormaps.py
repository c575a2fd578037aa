"""Our heatmaps colour values with widgets/colormaps.inc: it must hold matplotlib's own tables
(the pinned version), so that a cell has the colour matplotlib would give it."""
import os
import re
import sys

import numpy as np

from conftest import require

HERE = os.path.dirname(os.path.abspath(__file__))
WIDGETS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "widgets")


def test_tables_equal_matplotlib():
    matplotlib = require("matplotlib")
    text = open(os.path.join(WIDGETS, "colormaps.inc")).read()
    tables = {name: np.array([[int(v) for v in t] for t in re.findall(r"\{(\d+), (\d+), (\d+)\}", body)])
              for name, body in re.findall(r"k_(\w+)\[\d+\]\[3\] = \{(.*?)\n\};", text, re.S)}
    assert set(tables) == {"viridis", "blues", "spectral", "tab10"}
    for name, mpl in (("viridis", "viridis"), ("blues", "Blues"), ("spectral", "Spectral"), ("tab10", "tab10")):
        cmap = matplotlib.colormaps[mpl]
        n = cmap.N if name == "tab10" else 256
        want = np.round(np.array([cmap(i)[:3] for i in range(n)]) * 255).astype(int)
        assert np.array_equal(tables[name], want), name
    # and the index rule colormaps.cpp uses is matplotlib's: floor(t * N), clipped
    cmap = matplotlib.colormaps["viridis"]
    for t in (0.0, 0.2, 0.49999, 0.5, 0.99, 1.0, 1.5, -0.1):
        i = min(255, max(0, int(np.floor(t * 256))))
        assert np.allclose(cmap(t)[:3], cmap(i)[:3])
    sys.modules.pop("matplotlib.pyplot", None)
