"""nnU-Net, the coarse step: finding the trainers, running a trained model in memory, training through its commands.

:mod:`.env` (``nnUNet_extTrainer`` pointed at ``nnunet_plugins``; imported by ``import autosam``, so it and this
``__init__`` import nothing heavy: no torch, no nnunetv2, no other autosam module), :mod:`.inference` (a trained
model folder predicting one case in memory; imports the engine and below), :mod:`.folds` (a model's
cross-validation and its maps, linked into one folder), :mod:`.planes` (a 2d model along each axis of a volume),
:mod:`.train` (plan, preprocess, train and predict through nnU-Net's console scripts), and for the trainers and the
prediction hook in ``nnunet_plugins`` :mod:`.refinement` (SAM refinement of nnU-Net's outputs) and
:mod:`.validation` (the final validation's tuning);
these three may import the models that train. Import the submodules themselves: nothing is re-exported here.
"""
