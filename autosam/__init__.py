"""autosam: automatic prompting of SAM inside nnU-Net workflows."""

__version__ = "0.1.0"

# nnU-Net's commands find the trainers in nnunet_plugins through nnUNet_extTrainer; set it for this process and
# its children (cheap: no torch or nnU-Net import). A plain shell: eval "$(autosam nnunet-env)".
from .nnunet.env import ensure_ext_trainer_env as _ensure_ext_trainer_env  # noqa: E402

try:
    _ensure_ext_trainer_env()
except ImportError:  # nnunet_plugins not installed beside autosam: nothing to point nnU-Net at
    pass
