"""Losses as pure functions over tensors, with the equation each implements; nothing here loads a model or
Lightning. ``logps`` gathers per-sequence log-probs, ``preference`` holds the pairwise DPO family (DPO, IPO,
ORPO, SimPO, …), ``reward`` the Bradley–Terry loss and ``kto`` the unpaired KTO loss."""
