"""nnU-Net trainers that nnU-Net finds through the ``nnUNet_extTrainer`` environment variable."""
