"""tlrepro: reproducible re-runs of published transfer-learning studies on cancer images.

Subpackages, each importing only the ones before it: core (params, paths, safe writes, errors) <- data
(download, index, labels, splits, leakage, tf.data, stain) <- modeling (backbones, heads, frozen cache,
training, saved models, prediction) and results (metrics, paper comparison, plots) <- studies (the row
runner, the grid, multi-level transfer), reports (papermill runner, index page) and serve (REST API).
"""

__version__ = "0.2.0"
