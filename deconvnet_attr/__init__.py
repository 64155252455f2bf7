"""deconvnet-attr: the Zeiler & Fergus (2013) toolkit as a Captum plugin."""

from .ablation import LayerAblation as LayerAblation
from .deconv import Deconvolution as Deconvolution
from .deconv import DeconvProjection as DeconvProjection
from .deconv import NeuronDeconvolution as NeuronDeconvolution
from .geometry import receptive_field as receptive_field
from .geometry import receptive_field_table as receptive_field_table
from .mining import TopActivations as TopActivations
from .mining import project_top_activations as project_top_activations
from .mining import top_activations as top_activations

__version__ = "0.1.0"
