"""deconvnet-attr: the Zeiler & Fergus (2013) toolkit as a Captum plugin."""

from .ablation import LayerAblation as LayerAblation

__version__ = "0.1.0"
