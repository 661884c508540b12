"""autosam: automatic prompting of SAM inside nnU-Net workflows.

Packages: :mod:`.sam` (the engine), :mod:`.runner` and :mod:`.pipelines` (folders of cases), :mod:`.nnunet`,
:mod:`.prompter`, :mod:`.adapt`, :mod:`.study`, :mod:`.report`, :mod:`.commands` (the verbs); the layers and what
each may import are in docs/architecture.md and enforced by ``tests/test_layers.py``. Importing this package is
cheap: it only points ``nnUNet_extTrainer`` at :mod:`nnunet_plugins`.
"""

__version__ = "0.1.0"

# nnU-Net's commands find the trainers in nnunet_plugins through nnUNet_extTrainer; set it for this process and
# its children (cheap: no torch or nnU-Net import). A plain shell: eval "$(autosam nnunet-env)".
from .nnunet.env import ensure_ext_trainer_env as _ensure_ext_trainer_env  # noqa: E402

try:
    _ensure_ext_trainer_env()
except ImportError:  # nnunet_plugins not installed beside autosam: nothing to point nnU-Net at
    pass
