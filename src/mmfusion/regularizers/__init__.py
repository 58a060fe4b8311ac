"""Loss plug-ins: MDM (mdm.py), synergy / C-network (synergy.py) and their shared estimators (estimators.py)."""
