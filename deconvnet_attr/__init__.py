"""deconvnet-attr: the Zeiler & Fergus (2013) toolkit as a Captum plugin."""

from .ablation import LayerAblation as LayerAblation
from .analysis.correspondence import correspondence as correspondence
from .analysis.correspondence import correspondence_table as correspondence_table
from .analysis.filters import filter_diagnostics as filter_diagnostics
from .analysis.invariance import invariance_curves as invariance_curves
from .clipping import feature_scale_clip as feature_scale_clip
from .deconv import Deconvolution as Deconvolution
from .deconv import DeconvProjection as DeconvProjection
from .deconv import NeuronDeconvolution as NeuronDeconvolution
from .fig6 import fig6_summary as fig6_summary
from .fig6 import load_fig6_models as load_fig6_models
from .geometry import receptive_field as receptive_field
from .geometry import receptive_field_table as receptive_field_table
from .guided import GuidedBackprop as GuidedBackprop
from .guided import GuidedGradCam as GuidedGradCam
from .guided import NeuronGuidedBackprop as NeuronGuidedBackprop
from .mining import TopActivations as TopActivations
from .mining import top_activations as top_activations
from .models import load_checkpoints as load_checkpoints
from .models import load_reference as load_reference
from .models import zfnet as zfnet
from .models import zfnet_fashion as zfnet_fashion
from .occlusion import Occlusion as Occlusion
from .occlusion import occlusion_maps as occlusion_maps
from .projection import project_top_activations as project_top_activations

__version__ = "0.2.0"
