"""Drop-in adapters: the module names, constructor arguments, call signatures, return tuples and state_dict layouts of
other flow libraries, running on flowkern's fused ops and reversible backprop.

    flowkern.compat.rosinality   rosinality/glow-pytorch's model.py (ActNorm, InvConv2d, InvConv2dLU, ZeroConv2d,
                                 AffineCoupling, Flow, Block, Glow): its checkpoints load with load_state_dict
    flowkern.compat.freia        FrEIA (coupling blocks and graph nodes)
    flowkern.compat.normflows    normflows (Glow blocks and flows)

Import the adapter you need (`from flowkern.compat.rosinality import Glow`). This package imports none of them, so an
adapter's optional dependency (FrEIA, normflows) is needed only when that adapter is imported.
"""
