"""mmfusion's Hydra plug-ins (Hydra accepts sweepers only from the ``hydra_plugins`` namespace package)."""
