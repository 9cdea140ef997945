"""Dataset preparation: BraTS-style layouts to MONAI datalists, case validation, synthetic phantoms."""
