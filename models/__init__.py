"""Video flow models on flowkern (installed as flowkern.models). Models land here issue by issue."""
