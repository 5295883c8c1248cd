"""jkt: knowledge transfer with Jacobian matching (Srinivas & Fleuret, ICML 2018)."""
__version__ = "0.1.0"
