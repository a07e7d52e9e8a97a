"""tlrepro: reproducible re-runs of published transfer-learning studies on cancer images."""

__version__ = "0.1.0"
