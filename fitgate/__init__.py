"""fitgate: fine-tune BERT-family text classifiers, refuse the bad ones, serve the good ones."""

__version__ = "0.1.0"

__all__ = ["__version__"]
